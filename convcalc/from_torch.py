"""Existing PyTorch models as specs: trace with ``torch.fx``, map modules and the usual
functional calls onto spec layers, and additions and concatenations of branches onto
``residual`` and ``concat`` blocks.

The traced graph must be series-parallel, as CNNs built from sequences, residual blocks
and concatenated branches are: every value used twice is a fork whose branches meet again
at one ``+`` or ``torch.cat``. Anything else is refused, naming the operation and where the
model's code calls it; nothing is returned half-made.
"""

from __future__ import annotations

import importlib
import math
import operator
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from convcalc.analysis import analyze
from convcalc.errors import ModelImportError
from convcalc.layers import LEAF_CLASSES, Leaf
from convcalc.loader import build_network
from convcalc.spec import LAYER_TYPES, Network
from convcalc.torch_bridge import INFERRED_FIELDS, SPEC_ONLY_FIELDS, import_torch

__all__ = ["from_torch", "load_factory"]

# Calls without arguments that are a layer: F.relu, torch.sigmoid, x.relu_(), ...
_FUNCTIONAL_LAYERS = {
    name: kind for cls in LEAF_CLASSES for name, kind in cls.functional_names.items()
}


# Module attributes kept as lists even when their values are equal.
_LIST_FIELDS = {"unflattened_size", "order"}

# Functional activations with arguments: call name -> (layer type, argument names).
_FUNCTIONAL_WITH_ARGUMENTS = {
    "softplus": ("softplus", ("beta", "threshold")),
    "hardtanh": ("hardtanh", ("min_val", "max_val")),
    "hardtanh_": ("hardtanh", ("min_val", "max_val")),
    "celu": ("celu", ("alpha",)),
    "celu_": ("celu", ("alpha",)),
    "hardshrink": ("hardshrink", ("lambd",)),
    "softshrink": ("softshrink", ("lambd",)),
}


def load_factory(reference: str) -> Callable[[], Any]:
    """``package.module:factory`` as a callable."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ModelImportError(f"{reference!r}: give the model as package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise ModelImportError(f"cannot import {module_name!r}: {error}") from None
    factory = getattr(module, attribute, None)
    if factory is None:
        raise ModelImportError(f"{module_name!r} has no {attribute!r}")
    if not callable(factory):
        raise ModelImportError(f"{reference} is not callable")
    return factory  # type: ignore[no-any-return]


def from_torch(
    module: Any,
    input_shape: Sequence[int],
    *,
    name: str | None = None,
    leaf_modules: Sequence[str | type] = (),
) -> Network:
    """The spec of ``module`` for one sample of ``input_shape`` (channels first).

    ``leaf_modules`` (qualified names or classes) are kept whole by the tracer, for
    modules whose own ``forward`` fx cannot trace.
    """
    return _Importer(module, tuple(input_shape), name, leaf_modules).run()


class _Importer:
    def __init__(
        self, module: Any, input_shape: tuple[int, ...], name: str | None, leaves: Sequence[Any]
    ) -> None:
        self.torch = import_torch()
        self.root = module
        self.input_shape = input_shape
        self.name = name or _snake(type(module).__name__)
        self.leaves = leaves
        self.emitted: set[Any] = set()
        self.spines: dict[Any, list[Any]] = {}
        self.modules_seen: dict[str, Any] = {}

    # -- tracing ---------------------------------------------------------------------

    def trace(self) -> Any:
        torch = self.torch
        fx = importlib.import_module("torch.fx")
        leaves = self.leaves

        class Tracer(fx.Tracer):  # type: ignore[misc,name-defined]
            def is_leaf_module(self, m: Any, qualname: str) -> bool:
                named = qualname in leaves or type(m).__name__ in leaves
                named = named or type(m).__module__ == "convcalc.torch_modules"  # our layers
                if named or any(isinstance(c, type) and isinstance(m, c) for c in leaves):
                    return True
                return bool(super().is_leaf_module(m, qualname))

        tracer = Tracer()
        tracer.record_stack_traces = True
        try:
            graph = tracer.trace(self.root)
        except Exception as error:
            raise ModelImportError(
                f"torch.fx cannot trace {type(self.root).__name__}: {_first_line(error)}; if "
                f"one submodule's forward is the cause (control flow on values, say), keep it "
                f"whole with --leaf NAME (from_torch(..., leaf_modules=[...]))"
            ) from None
        graph_module = fx.GraphModule(tracer.root, graph)
        shape_prop = importlib.import_module("torch.fx.passes.shape_prop")

        modes = {m: m.training for m in self.root.modules()}
        try:
            self.root.eval()  # batch norm takes one sample in eval mode
            with torch.no_grad():
                shape_prop.ShapeProp(graph_module).propagate(torch.zeros(1, *self.input_shape))
        except Exception as error:
            raise ModelImportError(
                f"{type(self.root).__name__} does not run on an input of shape "
                f"{[1, *self.input_shape]}: {_first_line(error)}"
            ) from None
        finally:
            for m, training in modes.items():
                m.training = training
        return graph_module

    # -- the graph as nested layer lists -----------------------------------------------

    def run(self) -> Network:
        self.graph_module = self.trace()
        nodes = list(self.graph_module.graph.nodes)
        inputs = [n for n in nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise ModelImportError(
                f"{type(self.root).__name__}.forward takes {len(inputs)} inputs; a spec has one"
            )
        output = next(n for n in nodes if n.op == "output")
        result = output.args[0]
        if not hasattr(result, "op") or not self._is_tensor(result):
            raise ModelImportError(
                f"{type(self.root).__name__}.forward returns {type(result).__name__}, not "
                f"one tensor"
            )
        self.input = inputs[0]
        layers = self.chain(result, self.input)
        spec = {"name": self.name, "input": list(self.input_shape), "layers": layers}
        if not layers:
            raise ModelImportError(f"{type(self.root).__name__} returns its input unchanged")
        network = build_network(spec, f"<{type(self.root).__name__}>")
        analyze(network)  # the shapes fit (a wrong mapping would show here)
        return network

    def chain(self, node: Any, stop: Any) -> list[Any]:
        """The layers that compute ``node`` from ``stop``, in order."""
        layers: list[Any] = []
        while node is not stop:
            if node.op == "placeholder":
                raise ModelImportError(
                    "the model's graph is not made of sequences, residual blocks and "
                    "concatenated branches (a value is used by two branches that do not "
                    "meet again at one + or torch.cat)"
                )
            if node in self.emitted:
                raise ModelImportError(
                    f"{self._where(node)}: the value of {node.name} is used by two branches "
                    f"that do not meet again at one + or torch.cat"
                )
            self.emitted.add(node)
            inputs = self._tensor_inputs(node)
            if len(inputs) > 1 or self._is_cat(node):
                fork = self.fork(node, inputs) if len(inputs) > 1 else inputs[0]
                layers.append(self.join(node, inputs, fork))
                node = fork
            else:
                layers.append(self.leaf(node))
                node = inputs[0]
        return layers[::-1]

    def spine(self, node: Any) -> list[Any]:
        """``node``, then what it was computed from, back to the input (joins jump to
        their fork)."""
        if node in self.spines:
            return self.spines[node]
        path = [node]
        current = node
        while current.op != "placeholder":
            inputs = self._tensor_inputs(current)
            if not inputs:
                raise ModelImportError(
                    f"{self._where(current)}: {current.name} has no tensor input"
                )
            current = inputs[0] if len(inputs) == 1 else self.fork(current, inputs)
            if current in self.spines:
                path += self.spines[current]
                break
            path.append(current)
        self.spines[node] = path
        return path

    def fork(self, join: Any, inputs: list[Any]) -> Any:
        later = [set(self.spine(i)) for i in inputs[1:]]
        for candidate in self.spine(inputs[0]):
            if all(candidate in s for s in later):
                return candidate
        raise ModelImportError(f"{self._where(join)}: the branches of {join.name} share no input")

    def join(self, node: Any, inputs: list[Any], fork: Any) -> dict[str, Any]:
        kind = self._join_kind(node)
        branches = [self.chain(i, fork) for i in inputs]
        block: dict[str, Any] = {}
        owner = self._owner(node)
        if owner:
            block["name"] = owner
        if kind == "residual":
            body, shortcut = branches
            if not body and shortcut:
                body, shortcut = shortcut, body
            return {"type": "residual", **block, "layers": body, "shortcut": shortcut}
        return {"type": "concat", **block, "branches": branches}

    def _is_cat(self, node: Any) -> bool:
        torch = self.torch
        return node.op == "call_function" and node.target in (torch.cat, torch.concat)

    def _join_kind(self, node: Any) -> str:
        torch = self.torch
        target = node.target
        adds = (operator.add, operator.iadd, torch.add)
        if (node.op == "call_function" and target in adds) or (
            node.op == "call_method" and target in ("add", "add_")
        ):
            if len(self._tensor_inputs(node)) != 2 or node.kwargs.get("alpha", 1) != 1:
                raise self.unsupported(node, "an addition of other than two tensors")
            return "residual"
        if node.op == "call_function" and target in (torch.cat, torch.concat):
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            rank = len(self._shape(node))
            if dim % rank != 1:
                raise self.unsupported(node, f"torch.cat along dimension {dim}, not the channels")
            return "concat"
        raise self.unsupported(node, "an operation on several tensors")

    # -- leaves ----------------------------------------------------------------------

    def leaf(self, node: Any) -> Any:
        if node.op == "call_module":
            return self.module_layer(node)
        if node.op in ("call_function", "call_method"):
            return self.function_layer(node)
        raise self.unsupported(node, f"a {node.op} node")

    def module_layer(self, node: Any) -> Any:
        module = self.graph_module.get_submodule(node.target)
        stateful = any(True for _ in module.parameters()) or any(True for _ in module.buffers())
        if node.target in self.modules_seen and stateful:
            raise ModelImportError(
                f"module {node.target} ({type(module).__name__}) is called twice; a spec "
                f"cannot share weights between layers"
            )
        self.modules_seen[node.target] = module
        # the torch.nn class it is (or derives from: a subclass kept whole with --leaf),
        # or one of convcalc's own for the families torch.nn lacks
        kind = next(
            (
                base.__name__.lower()
                for base in type(module).__mro__
                if base.__module__.startswith(("torch.nn", "convcalc.torch_modules"))
                and isinstance(LAYER_TYPES.get(base.__name__.lower()), type)
                and issubclass(LAYER_TYPES[base.__name__.lower()], Leaf)
            ),
            None,
        )
        if kind is None:
            raise ModelImportError(
                f"{self._where(node)}: module {node.target} is a {type(module).__name__}, "
                f"which has no spec layer type"
            )
        cls = LAYER_TYPES[kind]
        layer: dict[str, Any] = {"type": kind, "name": node.target}
        for field in cls.model_fields:
            # sizes convcalc infers from the incoming shape are left out
            if field in SPEC_ONLY_FIELDS or field in INFERRED_FIELDS or not hasattr(module, field):
                continue
            value = getattr(module, field)
            if field == "bias" and not isinstance(value, bool):
                value = value is not None  # the parameter, or None
            # sizes whose count matters stay lists: unflattened_size [2, 2] is not 2
            layer[field] = list(value) if field in _LIST_FIELDS else _plain(value)
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            layer["trainable"] = False
        return self._checked(layer, node)

    def function_layer(self, node: Any) -> Any:
        spec = self._functional(node)
        if spec is None:
            raise self.unsupported(node, "an operation convcalc has no layer for")
        return self._checked(spec, node)

    def _functional(self, node: Any) -> dict[str, Any] | None:
        target = node.target
        name = target if node.op == "call_method" else getattr(target, "__name__", str(target))
        args = list(node.args[1:])
        kwargs = dict(node.kwargs)
        kwargs.pop("inplace", None)
        if name in _FUNCTIONAL_LAYERS and not args:
            return {"type": _FUNCTIONAL_LAYERS[name]}
        if name == "leaky_relu":
            return {"type": "leakyrelu", **_bind(args, kwargs, ("negative_slope",))}
        if name == "elu":
            return {"type": "elu", **_bind(args, kwargs, ("alpha",))}
        if name in _FUNCTIONAL_WITH_ARGUMENTS:
            kind, names = _FUNCTIONAL_WITH_ARGUMENTS[name]
            return {"type": kind, **_bind(args, kwargs, names)}
        if name == "gelu":
            return {"type": "gelu", **_bind(args, kwargs, ("approximate",))}
        if name in ("softmax", "log_softmax"):
            bound = _bind(args, kwargs, ("dim",))
            return {"type": name.replace("_", ""), "dim": bound.get("dim")}
        if name == "dropout":
            return {"type": "dropout", **_bind(args, kwargs, ("p",), drop=("training", "train"))}
        if name == "flatten":
            bound = _bind(args, kwargs, ("start_dim", "end_dim"))
            return {"type": "flatten", "start_dim": bound.get("start_dim", 0), **bound}
        if name in ("view", "reshape"):
            return self._reshape_as_flatten(node)
        match = re.fullmatch(r"(adaptive_)?(max|avg)_pool([123])d", name)
        if match:
            adaptive, kind, dims = match.groups()
            if adaptive:
                bound = _bind(args, kwargs, ("output_size",), drop=("return_indices",))
                return {"type": f"adaptive{kind}pool{dims}d", **bound}
            names = (
                ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
                if kind == "max"
                else ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                      "divisor_override")
            )  # fmt: skip
            bound = _bind(args, kwargs, names, drop=("return_indices",))
            if bound.get("stride") in (None, [], ()):
                bound.pop("stride", None)
            return {"type": f"{kind}pool{dims}d", **bound}
        if name == "interpolate":
            names = ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor")
            bound = {
                k: v
                for k, v in _bind(args, kwargs, names, drop=("antialias",)).items()
                if v is not None
            }
            return {"type": "upsample", **bound}
        return None

    def _reshape_as_flatten(self, node: Any) -> dict[str, Any] | None:
        before = self._shape(self._tensor_inputs(node)[0])
        after = self._shape(node)
        merged = len(before) - len(after)
        if merged < 1:
            return None
        start = next((i for i, (a, b) in enumerate(zip(before, after)) if a != b), len(after) - 1)
        end = start + merged
        if (
            before[:start] == after[:start]
            and math.prod(before[start : end + 1]) == after[start]
            and before[end + 1 :] == after[start + 1 :]
        ):
            return {"type": "flatten", "start_dim": start, "end_dim": end - len(before)}
        return None

    def _checked(self, layer: dict[str, Any], node: Any) -> Any:
        """The layer as its model (the YAML dump leaves out fields at their default)."""
        try:
            return LAYER_TYPES[layer["type"]].model_validate(layer)
        except Exception as error:
            raise ModelImportError(
                f"{self._where(node)}: {node.name} maps to a {layer['type']} layer that "
                f"convcalc refuses: {_first_line(error)}"
            ) from None

    # -- helpers ---------------------------------------------------------------------

    def _tensor_inputs(self, node: Any) -> list[Any]:
        found: list[Any] = []

        def visit(value: Any) -> None:
            if hasattr(value, "op") and self._is_tensor(value):
                found.append(value)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    visit(item)

        for value in (*node.args, *node.kwargs.values()):
            visit(value)
        if node.op == "get_attr":
            raise self.unsupported(node, "a parameter or buffer used directly")
        return found

    def _is_tensor(self, node: Any) -> bool:
        return node.op == "placeholder" or "tensor_meta" in node.meta

    def _shape(self, node: Any) -> tuple[int, ...]:
        if node.op == "placeholder":
            return (1, *self.input_shape)
        return tuple(node.meta["tensor_meta"].shape)

    def _owner(self, node: Any) -> str:
        """The qualified name of the module whose forward made ``node``."""
        stack = node.meta.get("nn_module_stack") or {}
        names = [key if isinstance(key, str) else str(key) for key in stack]
        paths = [value[0] if isinstance(value, tuple) else value for value in stack.values()]
        owner = paths[-1] if paths else (names[-1] if names else "")
        return str(owner).removeprefix("L['self'].").replace("L['self']", "")

    def _where(self, node: Any) -> str:
        """``model.py:42`` where the model's code made ``node``, or the node's name."""
        trace = node.stack_trace or ""
        torch_dir = str(Path(self.torch.__file__).parent)
        frames = [
            (path, line)
            for path, line, _ in re.findall(r'File "([^"]+)", line (\d+), in (\w+)', trace)
            if not path.startswith(torch_dir)
        ]
        if frames:
            path, line = frames[-1]
            return f"{path}:{line}"
        return f"{type(self.root).__name__} ({node.name})"

    def unsupported(self, node: Any, what: str) -> ModelImportError:
        target = (
            node.target
            if isinstance(node.target, str)
            else getattr(node.target, "__name__", repr(node.target))
        )
        return ModelImportError(
            f"{self._where(node)}: {target} ({what}) cannot be expressed in a spec"
        )


def _bind(
    args: list[Any], kwargs: dict[str, Any], names: Sequence[str], drop: Sequence[str] = ()
) -> dict[str, Any]:
    """Positional and keyword arguments of a functional call, by name."""
    bound = dict(zip(names, args))
    bound.update((key, value) for key, value in kwargs.items() if key in names)
    return {key: _plain(value) for key, value in bound.items()}


def _plain(value: Any) -> Any:
    """Tuples as lists, a list of equal values as one value."""
    if isinstance(value, (tuple, list)):
        items = [_plain(v) for v in value]
        return items[0] if items and all(v == items[0] for v in items) else items
    return value


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
