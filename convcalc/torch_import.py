"""Existing PyTorch models as specs (version 2): capture the forward with
``torch.export``, then write every operation as a named leaf layer, with ``from:``
wherever its input is not the previous layer's output.

``torch.export`` runs the model's Python on concrete shapes (on fake tensors: nothing is
computed, and a model built on the meta device imports without allocating its weights),
so ``list(x.chunk(2, 1))``, loops over submodules and checks of ``x.shape`` import as
written. A call of a ``torch.nn`` layer module (or one of ``convcalc.torch_modules``)
becomes one layer named by its attribute path, read from the module's attributes; any
other operation is mapped from the captured ATen call (``conv2d``, ``add``, ``cat``,
``chunk``, ``view``, ``permute``, ``mean``, …) and named after the module that made it.
What has no spec layer is refused in one sentence naming the operation and the line of
the model's code that calls it; nothing is returned half-made.

The imported spec is checked against the capture before it is returned: its parameter
count is the ``numel`` of the parameters the forward uses, and every output has the
shape torch gives it. Parameters of submodules the forward never calls (Inception-v3's
``AuxLogits`` in eval mode) are reported (``Imported.unused``, and an
``UnusedParametersWarning`` from ``from_torch``), never counted.
"""

from __future__ import annotations

import importlib
import inspect
import io
import logging
import re
import types
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convcalc.analysis import analyze
from convcalc.errors import ModelImportError
from convcalc.importing import count, first_line, plain, reshape_layer, snake
from convcalc.layers import LEAF_CLASSES, Leaf
from convcalc.loader import build_network
from convcalc.spec import LAYER_TYPES, Network
from convcalc.torch_bridge import INFERRED_FIELDS, SPEC_ONLY_FIELDS, import_torch

__all__ = ["Imported", "UnusedParametersWarning", "from_torch", "import_model", "load_factory"]

# ATen calls without arguments beyond the input that are a layer: relu, sigmoid, ...
_FUNCTIONAL_LAYERS = {
    name: kind for cls in LEAF_CLASSES for name, kind in cls.functional_names.items()
}

# Module attributes kept as lists even when their values are equal.
_LIST_FIELDS = {"unflattened_size", "order"}

# ATen activations with arguments: op name -> (layer type, argument names in the schema).
_ACTIVATIONS_WITH_ARGUMENTS = {
    "leaky_relu": ("leakyrelu", {"negative_slope": "negative_slope"}),
    "elu": ("elu", {"alpha": "alpha"}),
    "celu": ("celu", {"alpha": "alpha"}),
    "softplus": ("softplus", {"beta": "beta", "threshold": "threshold"}),
    "hardshrink": ("hardshrink", {"lambd": "lambd"}),
    "softshrink": ("softshrink", {"lambd": "lambd"}),
    "gelu": ("gelu", {"approximate": "approximate"}),
}

# Operations that hand their input on unchanged (in eval mode).
_ALIASES = {"contiguous", "clone", "detach", "alias", "lift_fresh_copy", "_to_copy", "to"}
# Operations that compute nothing the spec describes (checks the exporter inserts).
_CHECKS = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size"}

_UPSAMPLE_MODES = {
    "upsample_nearest1d": "nearest",
    "upsample_nearest2d": "nearest",
    "upsample_nearest3d": "nearest",
    "_upsample_nearest_exact1d": "nearest-exact",
    "_upsample_nearest_exact2d": "nearest-exact",
    "_upsample_nearest_exact3d": "nearest-exact",
    "upsample_linear1d": "linear",
    "upsample_bilinear2d": "bilinear",
    "upsample_bicubic2d": "bicubic",
    "upsample_trilinear3d": "trilinear",
}


class UnusedParametersWarning(UserWarning):
    """The model has parameters its forward never uses (left out of the spec)."""


@dataclass
class Imported:
    """An imported model: the spec, and what of the model it leaves out."""

    network: Network
    # submodule path -> parameters the forward never uses (the outermost such submodule)
    unused: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def unused_message(self) -> str:
        total = sum(self.unused.values())
        parts = ", ".join(
            f"{path or '(the model)'} ({count:,})" for path, count in self.unused.items()
        )
        return (
            f"{total:,} parameters of submodules the forward never calls are not in the spec: "
            f"{parts}"
        )


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


def make_on_meta(factory: Callable[[], Any]) -> Any:
    """``factory()`` with its tensors on the meta device (no memory for the weights);
    a factory that cannot build there (it loads weights, say) is called as it is."""
    torch = import_torch()
    try:
        with torch.device("meta"):
            return factory()
    except Exception:
        return factory()


def from_torch(
    module: Any,
    input_shape: Sequence[int] | Mapping[str, Sequence[int]],
    *,
    name: str | None = None,
    leaf_modules: Sequence[str | type] = (),
    training: bool = False,
) -> Network:
    """The spec of ``module`` for one sample of ``input_shape`` (channels first; a
    mapping of input names to shapes for a forward with several inputs), in eval mode
    unless ``training``.

    ``leaf_modules`` (qualified names or classes) are read as the ``torch.nn`` layer they
    derive from, their own ``forward`` never run. Parameters the forward does not use
    are left out with an ``UnusedParametersWarning``.
    """
    imported = import_model(
        module, input_shape, name=name, leaf_modules=leaf_modules, training=training
    )
    if imported.unused:
        warnings.warn(imported.unused_message, UnusedParametersWarning, stacklevel=2)
    return imported.network


def import_model(
    module: Any,
    input_shape: Sequence[int] | Mapping[str, Sequence[int]],
    *,
    name: str | None = None,
    leaf_modules: Sequence[str | type] = (),
    training: bool = False,
) -> Imported:
    """``from_torch``, with the parameters the spec leaves out reported."""
    if isinstance(input_shape, Mapping):
        shapes = {str(k): tuple(int(n) for n in v) for k, v in input_shape.items()}
    else:
        shapes = {"input": tuple(int(n) for n in input_shape)}
    return _Importer(module, shapes, name, leaf_modules, training).run()


@dataclass
class _Group:
    """The captured nodes of one call of a layer module."""

    key: str
    path: str
    module: Any
    kind: str
    nodes: list[Any]
    emitted: bool = False


class _Importer:
    def __init__(
        self,
        module: Any,
        shapes: dict[str, tuple[int, ...]],
        name: str | None,
        leaves: Sequence[Any],
        training: bool,
    ) -> None:
        self.torch = import_torch()
        self.root = module
        self.shapes = shapes
        self.name = name or snake(type(module).__name__)
        self.leaves = leaves
        self.training = training
        self.layers: list[dict[str, Any]] = []
        self.values: dict[Any, str] = {}  # captured node -> the spec's name for its value
        self.params: dict[Any, tuple[str, Any]] = {}  # placeholder -> (qualified name, tensor)
        self.used_names: set[str] = set()
        self.modules_seen: dict[str, str] = {}  # module path -> the first call's key
        self.last_output: str | None = None  # what a layer without from: reads
        self.notes: list[str] = []
        self.whole: set[Any] = set()  # nodes whose getitem 0 is the layer (pool indices)

    # -- capture -------------------------------------------------------------------------

    def check_inputs(self) -> None:
        """As many input shapes as the forward has inputs (arguments without a default)."""
        try:
            parameters = list(inspect.signature(self.root.forward).parameters.values())
        except (TypeError, ValueError):  # no signature to read: let torch.export judge
            return
        positional = [
            p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        required = [p.name for p in positional if p.default is p.empty]
        required += [
            p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.default is p.empty
        ]
        variadic = any(p.kind is p.VAR_POSITIONAL for p in parameters)
        given = len(self.shapes)
        if given < len(required) or (given > len(positional) and not variadic):
            takes = required if given < len(required) else [p.name for p in positional]
            raise ModelImportError(
                f"{type(self.root).__name__}.forward takes {count(len(takes), 'input')} "
                f"({', '.join(takes) or 'none'}), but {count(given, 'input shape')} "
                f"{'was' if given == 1 else 'were'} given"
            )

    def capture(self) -> Any:
        torch = self.torch
        device = next(
            (t.device for t in (*self.root.parameters(), *self.root.buffers())),
            torch.device("cpu"),
        )
        example = tuple(torch.zeros(1, *shape, device=device) for shape in self.shapes.values())
        modes = {m: m.training for m in self.root.modules()}
        try:
            self.root.train(self.training)
            with self._leaves_whole(), self._identities_seen(), _quiet():
                return torch.export.export(self.root, example, strict=False)
        except ModelImportError:
            raise
        except Exception as error:
            hint = (
                "if one submodule's forward is the cause (control flow on values, say), keep "
                "it whole with --leaf NAME (from_torch(..., leaf_modules=[...]))"
            )
            if self.leaves:  # the base class's forward may not compute what the module does
                hint = "a --leaf module runs its torch.nn base class's forward, which may not fit"
            raise ModelImportError(
                f"torch.export cannot capture {type(self.root).__name__} on an input of shape "
                f"{[1, *next(iter(self.shapes.values()))]}: {first_line(error)}; {hint}"
            ) from None
        finally:
            for m, mode in modes.items():
                m.training = mode

    def _is_leaf(self, path: str, m: Any) -> bool:
        names = {path, type(m).__name__}
        return any(
            (isinstance(c, str) and c in names) or (isinstance(c, type) and isinstance(m, c))
            for c in self.leaves
        )

    @contextmanager
    def _identities_seen(self) -> Iterator[None]:
        """A layer module that hands its input on (dropout, stochastic depth, identity at
        inference) leaves an ``alias`` in the capture, so that it still is a layer."""
        torch = self.torch

        def hook(m: Any, inputs: Any, output: Any) -> Any:
            if any(output is i for i in inputs):
                return torch.ops.aten.alias.default(output)
            return None

        handles = [
            m.register_forward_hook(hook)
            for path, m in self.root.named_modules()
            if self._module_kind(path, m) is not None
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def _leaves_whole(self) -> Iterator[None]:
        """Modules named by ``leaf_modules`` run their ``torch.nn`` base class's forward."""
        swapped = []
        try:
            for path, m in self.root.named_modules():
                if not self._is_leaf(path, m):
                    continue
                base = _layer_base(m)
                if base is None:
                    raise ModelImportError(
                        f"--leaf {path or type(m).__name__}: {type(m).__name__} derives from "
                        f"no torch.nn class that is a spec layer"
                    )
                m.forward = types.MethodType(base.forward, m)
                swapped.append(m)
            yield
        finally:
            for m in swapped:
                del m.forward

    # -- the graph as a flat list of layers ------------------------------------------------

    def run(self) -> Imported:
        self.check_inputs()
        program = self.capture()
        graph = program.graph
        signature = program.graph_signature
        state = {**dict(self.root.named_parameters()), **dict(self.root.named_buffers())}
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        to_param = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
        constants = getattr(signature, "inputs_to_lifted_tensor_constants", {})
        user_inputs = [n for n in placeholders if n.name in signature.user_inputs]
        for n in placeholders:
            if n.name in to_param:
                self.params[n] = (to_param[n.name], state.get(to_param[n.name]))
            elif n.name in constants:
                self.params[n] = (constants[n.name], None)
        input_names = list(self.shapes)
        for node, input_name in zip(user_inputs, input_names):
            self.values[node] = input_name
            self.used_names.add(input_name)
        self.last_output = input_names[0]
        self.groups = self._groups(graph)
        self.channel_shuffles = self._channel_shuffles(graph)
        self.composites = self._composites(graph)
        for node in graph.nodes:
            if node.op == "call_function":
                self.node(node)
        output = next(n for n in graph.nodes if n.op == "output")
        results = [r for r in _flatten(output.args[0]) if hasattr(r, "op")]
        if not self.layers:
            raise ModelImportError(f"{type(self.root).__name__} returns its input unchanged")
        outputs = [self.ref(r, r) for r in results]
        spec: dict[str, Any] = {"version": 2, "name": self.name}
        if len(self.shapes) == 1:
            spec["input"] = list(next(iter(self.shapes.values())))
        else:
            spec["inputs"] = {k: list(v) for k, v in self.shapes.items()}
        spec["layers"] = self.layers
        if outputs != [self.layers[-1]["name"]]:
            spec["outputs"] = outputs
        try:
            network = build_network(spec, f"<{type(self.root).__name__}>")
            report = analyze(network)
        except Exception as error:  # a mapping convcalc disagrees with: say which
            raise ModelImportError(
                f"the spec imported from {type(self.root).__name__} does not analyse: "
                f"{first_line(error)}"
            ) from None
        self._check(report, results, signature, placeholders)
        return Imported(network, self._unused(placeholders), self.notes)

    def _check(
        self, report: Any, results: list[Any], signature: Any, placeholders: list[Any]
    ) -> None:
        """The spec's totals (all parameters, and those that train) and output shapes
        are torch's."""
        named = dict(self.root.named_parameters())
        used = [t for node, (q, t) in self.params.items() if node.users and q in named]
        for what, counted, expected in [
            ("parameters", report.totals.params, sum(int(t.numel()) for t in used)),
            (
                "trainable parameters",
                report.totals.trainable_params,
                sum(int(t.numel()) for t in used if t.requires_grad),
            ),
        ]:
            if counted != expected:
                raise ModelImportError(
                    f"the spec imported from {type(self.root).__name__} counts {counted:,} "
                    f"{what}, but its forward uses {expected:,}"
                )
        shapes = [tuple(r.meta["val"].shape) for r in results]
        got = [tuple(s) for s in (report.outputs.values() if report.outputs else [])]
        got = got or [tuple(report.output_shape)]
        if len(got) == len(shapes) and got != shapes:
            raise ModelImportError(
                f"the spec imported from {type(self.root).__name__} gives outputs {got}, "
                f"torch gives {shapes}"
            )

    def _unused(self, placeholders: list[Any]) -> dict[str, int]:
        used = {q for node, (q, _) in self.params.items() if node.users}
        named = dict(self.root.named_parameters())
        unused = {q for q in named if q not in used}
        out: dict[str, int] = {}
        for qualified in sorted(unused, key=lambda q: list(named).index(q)):
            parts = qualified.split(".")
            owner = ".".join(parts[:-1])
            # the outermost module all of whose parameters go unused
            for depth in range(len(parts)):
                prefix = ".".join(parts[:depth])
                inside = [q for q in named if q.startswith(prefix + ".")] if prefix else []
                if prefix and inside and all(q in unused for q in inside):
                    owner = prefix
                    break
            out[owner] = out.get(owner, 0) + int(named[qualified].numel())
        return out

    # -- grouping the nodes of layer modules -------------------------------------------

    def _groups(self, graph: Any) -> dict[Any, _Group]:
        """Node -> the call of a layer module it belongs to (the outermost one)."""
        by_key: dict[str, _Group] = {}
        found: dict[Any, _Group] = {}
        cache: dict[str, Any] = {}
        for node in graph.nodes:
            if node.op != "call_function":
                continue
            stack = node.meta.get("nn_module_stack") or {}
            for key, value in stack.items():
                path = value[0] if isinstance(value, tuple) else str(value)
                path = _clean_path(path)
                if path not in cache:
                    try:
                        cache[path] = self.root.get_submodule(path)
                    except AttributeError:
                        cache[path] = None
                m = cache[path]
                if m is None:
                    continue
                kind = self._module_kind(path, m)
                if kind is None:
                    continue
                if key not in by_key:
                    by_key[key] = _Group(key, path, m, kind, [])
                by_key[key].nodes.append(node)
                found[node] = by_key[key]
                break
        return found

    def _module_kind(self, path: str, m: Any) -> str | None:
        base = _layer_base(m)
        if base is None:
            return None
        if type(m).forward is not base.forward and not self._is_leaf(path, m):
            return None  # its own forward: read what it does, op by op
        return str(base.__name__).lower()

    # -- one captured node ---------------------------------------------------------------

    def node(self, node: Any) -> None:
        group = self.groups.get(node)
        if group is not None:
            if not group.emitted:
                self.module_layer(group)
            return
        name = _op_name(node)
        if name == "getitem":
            source, index = node.args
            if source in self.values:
                base = self.values[source]
                self.values[node] = base if source in self.whole else f"{base}.{index}"
                return
            raise self.unsupported(node, "an indexing convcalc cannot follow")
        if name in _CHECKS:
            return
        if node in self.composites:
            kind, members = self.composites[node]
            if node is members[-1]:
                inside = set(members)
                inputs = [i for m in members for i in self._tensor_inputs(m) if i not in inside]
                self.emit({"type": kind}, node, inputs[:1])
            return
        if node in self.channel_shuffles:
            groups, first = self.channel_shuffles[node]
            if groups:
                self.emit({"type": "channelshuffle", "groups": groups}, node, [first])
            else:  # a node inside the pattern: its value is never read elsewhere
                pass
            return
        if name in _ALIASES:
            inputs = self._tensor_inputs(node)
            if len(inputs) == 1:
                self.values[node] = self.ref(inputs[0], node)
                return
        layer, inputs = self.op_layer(node, name)
        if layer is None:
            self.values[node] = self.ref(inputs[0], node)
            return
        self.emit(layer, node, inputs)

    def emit(self, layer: dict[str, Any], node: Any, inputs: list[Any], name: str = "") -> str:
        refs = [self.ref(i, node) for i in inputs]
        name = self._unique(name or self._generated_name(node, layer["type"]))
        layer = {
            "type": layer["type"],
            "name": name,
            **{k: v for k, v in layer.items() if k != "type"},
        }
        if refs != [self.last_output]:
            layer["from"] = refs[0] if len(refs) == 1 else refs
        tensors = [  # (the ATen argument's name: weight, bias, ..., the parameter)
            (key, self.params[value][1])
            for key, value in _bind(node).items()
            if hasattr(value, "op") and value in self.params
        ]
        layer.update(self._trainability(tensors))
        self.layers.append(self._checked(layer, node))
        self.values[node] = name
        self.last_output = None if layer["type"] in ("split", "chunk") else name
        return name

    def _checked(self, layer: dict[str, Any], node: Any) -> dict[str, Any]:
        try:
            LAYER_TYPES[layer["type"]].model_validate(layer)
        except Exception as error:
            raise ModelImportError(
                f"{self._where(node)}: {_op_name(node)} maps to a {layer['type']} layer that "
                f"convcalc refuses: {first_line(error)}"
            ) from None
        return layer

    def _trainability(self, tensors: list[tuple[str, Any]]) -> dict[str, Any]:
        """``trainable: false`` when none of a layer's parameters (name, tensor) train,
        ``frozen: [names]`` when some do not."""
        params = [(n, t) for n, t in tensors if isinstance(t, self.torch.nn.Parameter)]
        frozen = [n for n, t in params if not t.requires_grad]
        if not frozen:
            return {}
        if len(frozen) == len(params):
            return {"trainable": False}
        return {"frozen": frozen}

    # -- layer modules ---------------------------------------------------------------------

    def module_layer(self, group: _Group) -> None:
        group.emitted = True
        module, path = group.module, group.path
        stateful = any(True for _ in module.parameters()) or any(True for _ in module.buffers())
        if path in self.modules_seen and stateful:
            raise ModelImportError(
                f"module {path} ({type(module).__name__}) is called twice; a spec cannot "
                f"share weights between layers"
            )
        self.modules_seen.setdefault(path, group.key)
        cls = LAYER_TYPES[group.kind]
        layer: dict[str, Any] = {"type": group.kind}
        for field_name in cls.model_fields:
            if (
                field_name in SPEC_ONLY_FIELDS
                or field_name in INFERRED_FIELDS
                or field_name in ("name", "trainable", "from_", "line")
                or not hasattr(module, field_name)
            ):
                continue
            value = getattr(module, field_name)
            if field_name == "bias" and not isinstance(value, bool):
                value = value is not None  # the parameter, or None
            if isinstance(value, self.torch.Tensor):
                continue
            layer[field_name] = list(value) if field_name in _LIST_FIELDS else plain(value)
        if group.kind == "linear" and len(_shape(group.nodes[0].args[0])) > 2:
            layer["in_features"] = int(module.in_features)  # on the last dimension only
        if group.kind == "layernorm":  # over its own last dimensions, not all of them
            layer["normalized_shape"] = plain(list(module.normalized_shape))
        members = set(group.nodes)
        inputs: list[Any] = []
        for node in group.nodes:
            for value in _flatten((*node.args, *node.kwargs.values())):
                if (
                    hasattr(value, "op")
                    and value not in members
                    and value not in self.params
                    and value not in inputs
                    and _is_tensor(value)
                ):
                    inputs.append(value)
        leaving = [
            n for n in group.nodes if any(u not in members for u in n.users) or _is_output(n)
        ]
        last = group.nodes[-1]
        if not inputs:
            raise self.unsupported(last, f"module {path} without a tensor input")
        name = self._unique(path or self.name)
        refs = [self.ref(i, last) for i in inputs]
        layer = {"type": layer.pop("type"), "name": name, **layer}
        if refs != [self.last_output]:
            layer["from"] = refs[0] if len(refs) == 1 else refs
        layer.update(self._trainability(list(module.named_parameters())))
        self.layers.append(self._checked(layer, last))
        multiple = group.kind in ("split", "chunk")
        self.last_output = None if multiple else name
        for node in group.nodes:
            self.values[node] = name
        if multiple:
            for node in group.nodes:
                if _op_name(node) == "getitem":
                    self.values[node] = f"{name}.{node.args[1]}"
        elif len({n for n in leaving if _is_tensor(n)}) > 1:
            raise self.unsupported(last, f"module {path} returning several tensors")

    # -- ATen operations -------------------------------------------------------------------

    def op_layer(self, node: Any, name: str) -> tuple[dict[str, Any] | None, list[Any]]:
        """The layer for one ATen call and the nodes it reads (None: hands its input on)."""
        args = _bind(node)
        x = args.get("self", args.get("input"))
        shape_in = _shape(x) if hasattr(x, "op") else ()
        shape_out = _shape(node) if _is_tensor(node) else ()
        rank = len(shape_in)
        base = name.rstrip("_") if name.endswith("_") and not name.startswith("_") else name

        def param(key: str) -> Any:
            value = args.get(key)
            if value is None:
                return None
            if value not in self.params:
                raise self.unsupported(node, f"a {key} that is computed, not a parameter")
            return value

        if base in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                    "conv_transpose3d"):  # fmt: skip
            weight = param("weight")
            w = _shape(weight)
            transposed = base.startswith("conv_transpose")
            groups = int(args.get("groups", 1))
            layer: dict[str, Any] = {
                "type": f"{'convtranspose' if transposed else 'conv'}{base[-2:]}",
                "out_channels": w[1] * groups if transposed else w[0],
                "kernel_size": plain(list(w[2:])),
                "stride": plain(args.get("stride", 1)),
                "padding": plain(args.get("padding", 0)),
                "dilation": plain(args.get("dilation", 1)),
                "groups": groups,
                "bias": args.get("bias") is not None,
            }
            if transposed:
                layer["output_padding"] = plain(args.get("output_padding", 0))
            if args.get("bias") is not None:
                param("bias")
            return layer, [x]
        if base == "linear":
            w = _shape(param("weight"))
            if args.get("bias") is not None:
                param("bias")
            return (
                {"type": "linear", "in_features": w[1], "out_features": w[0],
                 "bias": args.get("bias") is not None},
                [x],
            )  # fmt: skip
        if base in ("batch_norm", "instance_norm"):
            weight, mean = param("weight"), param("running_mean")
            param("bias"), param("running_var")
            kind = "batchnorm" if base == "batch_norm" else "instancenorm"
            layer = {
                "type": f"{kind}{max(rank - 2, 1)}d",
                "num_features": shape_in[1],
                "eps": float(args.get("eps", 1e-5)),
                "affine": weight is not None,
                "track_running_stats": mean is not None,
            }
            if args.get("momentum") is not None:
                layer["momentum"] = float(args["momentum"])
            return layer, [x]
        if base == "layer_norm":
            weight, bias = param("weight"), param("bias")
            return (
                {
                    "type": "layernorm",
                    "normalized_shape": plain(list(args["normalized_shape"])),
                    "eps": float(args.get("eps", 1e-5)),
                    "elementwise_affine": weight is not None,
                    "bias": bias is not None,
                },
                [x],
            )
        if base == "group_norm":
            weight = param("weight")
            param("bias")
            return (
                {
                    "type": "groupnorm",
                    "num_groups": int(args["num_groups"]),
                    "num_channels": shape_in[1],
                    "eps": float(args.get("eps", 1e-5)),
                    "affine": weight is not None,
                },
                [x],
            )
        if base == "prelu":
            return {"type": "prelu", "num_parameters": int(_shape(param("weight"))[0])}, [x]
        if base == "hardtanh":
            low, high = float(args.get("min_val", -1.0)), float(args.get("max_val", 1.0))
            if (low, high) == (0.0, 6.0):
                return {"type": "relu6"}, [x]
            return {"type": "hardtanh", "min_val": low, "max_val": high}, [x]
        if base in _ACTIVATIONS_WITH_ARGUMENTS:
            kind, names = _ACTIVATIONS_WITH_ARGUMENTS[base]
            fields = {f: plain(args[a]) for f, a in names.items() if a in args}
            return {"type": kind, **fields}, [x]
        if base in _FUNCTIONAL_LAYERS and len(self._tensor_inputs(node)) == 1:
            return {"type": _FUNCTIONAL_LAYERS[base]}, [x]
        if base in ("softmax", "_softmax", "log_softmax", "_log_softmax"):
            kind = "logsoftmax" if "log" in base else "softmax"
            return {"type": kind, "dim": int(args["dim"])}, [x]
        if base in ("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout"):
            return {"type": "dropout", "p": float(args.get("p", 0.5))}, [x]
        match = re.fullmatch(r"(adaptive_)?(max|avg)_pool([123])d(_with_indices)?", base)
        if match:
            adaptive, kind, d, indices = match.groups()
            if indices or (adaptive and kind == "max"):
                self.whole.add(node)
            if adaptive:
                return {
                    "type": f"adaptive{kind}pool{d}d",
                    "output_size": plain(list(args["output_size"])),
                }, [x]
            layer = {"type": f"{kind}pool{d}d", "kernel_size": plain(args["kernel_size"])}
            stride = args.get("stride")
            if stride not in (None, [], ()):
                layer["stride"] = plain(stride)
            for key in ("padding", "dilation", "ceil_mode", "count_include_pad",
                        "divisor_override"):  # fmt: skip
                if key in args and args[key] is not None:
                    layer[key] = plain(args[key])
            return layer, [x]
        if base == "mean" and "dim" in args and args["dim"] is not None:
            return {"type": "mean", "dim": plain(list(args["dim"])),
                    "keepdim": bool(args.get("keepdim", False))}, [x]  # fmt: skip
        if base in ("view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze",
                    "unsqueeze", "expand_as", "view_as", "reshape_as"):  # fmt: skip
            if base in ("expand_as",):
                raise self.unsupported(node, "an expansion")
            return self._reshape(node, shape_in, shape_out), [x]
        if base in ("permute", "transpose", "t", "swapaxes", "movedim"):
            order = list(range(rank))
            if base == "permute":
                order = [d % rank for d in args["dims"]]
            elif base == "t":
                order = order[::-1]
            elif base in ("transpose", "swapaxes"):
                a, b = (int(args.get(k, 0)) % rank for k in ("dim0", "dim1"))
                order[a], order[b] = order[b], order[a]
            else:
                raise self.unsupported(node, "a move of dimensions")
            if order == list(range(rank)):
                return None, [x]
            return {"type": "permute", "order": order}, [x]
        if base in ("add", "mul"):
            return self._elementwise(node, base, args)
        if base in ("cat", "concat", "concatenate"):
            tensors = list(args["tensors"])
            return {"type": "cat", "dim": int(args.get("dim", 0))}, tensors
        if base == "chunk":
            return {
                "type": "chunk",
                "chunks": int(args["chunks"]),
                "dim": int(args.get("dim", 0)),
            }, [x]
        if base in ("split", "split_with_sizes"):
            size = args.get(
                "split_size", args.get("split_sizes", args.get("split_size_or_sections"))
            )
            sections = list(size) if isinstance(size, (list, tuple)) else int(size or 0)
            layer = {"type": "split", "split_size_or_sections": sections}
            return {**layer, "dim": int(args.get("dim", 0))}, [x]
        if base in _UPSAMPLE_MODES:
            layer = {"type": "upsample", "mode": _UPSAMPLE_MODES[base]}
            size = args.get("output_size")
            scales = args.get("scale_factors", args.get("scales"))
            if size:
                layer["size"] = plain(list(size))
            elif scales:
                layer["scale_factor"] = plain([float(s) for s in scales])
            else:
                layer["size"] = plain(list(shape_out[2:]))
            if args.get("align_corners") is not None:
                layer["align_corners"] = bool(args["align_corners"])
            return layer, [x]
        if base in ("pad", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d",
                    "reflection_pad3d", "replication_pad1d", "replication_pad2d",
                    "replication_pad3d"):  # fmt: skip
            return self._pad(node, base, args, shape_in), [x]
        if base in ("pixel_shuffle", "pixel_unshuffle"):
            key = "upscale_factor" if base == "pixel_shuffle" else "downscale_factor"
            return {"type": base.replace("_", ""), key: int(args[key])}, [x]
        if base in ("channel_shuffle", "native_channel_shuffle"):
            return {"type": "channelshuffle", "groups": int(args["groups"])}, [x]
        raise self.unsupported(node, "an operation convcalc has no layer for")

    def _elementwise(
        self, node: Any, base: str, args: dict[str, Any]
    ) -> tuple[dict[str, Any], list[Any]]:
        operands = [args.get("self"), args.get("other")]
        if args.get("alpha", 1) != 1:
            raise self.unsupported(node, "an addition with alpha")
        if not all(hasattr(o, "op") for o in operands):
            what = "adds" if base == "add" else "multiplies by"
            raise self.unsupported(node, f"an operation that {what} a constant")
        params = [o for o in operands if o in self.params]
        if not params:
            return {"type": base}, operands
        if base == "mul" and len(params) == 1:
            weight = params[0]
            x = next(o for o in operands if o is not weight)
            w, shape = _shape(weight), _shape(x)
            channels = shape[1] if len(shape) > 1 else 0
            per_channel = (channels,) + (1,) * (len(shape) - 2)
            if w in (per_channel, (1, *per_channel)) and self._tensor_inputs(node) == operands:
                return {"type": "layerscale"}, [x]
            raise self.unsupported(
                node,
                f"a multiplication by the parameter {self.params[weight][0]} of shape "
                f"{list(w)}, not one scale per channel of {list(shape)}",
            )
        raise self.unsupported(node, f"a parameter ({self.params[params[0]][0]}) used directly")

    def _reshape(
        self, node: Any, before: tuple[int, ...], after: tuple[int, ...]
    ) -> dict[str, Any] | None:
        if before == after:
            return None
        layer = reshape_layer(before, after)
        if layer is None:
            raise self.unsupported(
                node,
                f"a reshape of {list(before)} to {list(after)} that is no flatten or unflatten",
            )
        return layer

    def _pad(
        self, node: Any, base: str, args: dict[str, Any], shape: tuple[int, ...]
    ) -> dict[str, Any]:
        pad = list(args.get("pad", args.get("padding", [])))
        mode = args.get("mode", "constant")
        if base.startswith("reflection"):
            mode = "reflect"
        elif base.startswith("replication"):
            mode = "replicate"
        d = len(pad) // 2
        kinds = {
            "reflect": "reflectionpad",
            "replicate": "replicationpad",
            "circular": "circularpad",
        }
        if mode == "constant":
            value = float(args.get("value") or 0.0)
            if value == 0.0:
                return {"type": f"zeropad{d}d", "padding": plain(pad)}
            return {"type": f"constantpad{d}d", "padding": plain(pad), "value": value}
        if mode in kinds:
            return {"type": f"{kinds[mode]}{d}d", "padding": plain(pad)}
        raise self.unsupported(node, f"padding in mode {mode!r}")

    # -- torch.nn.functional calls written in Python (softsign, tanhshrink) -------------

    def _composites(self, graph: Any) -> dict[Any, tuple[str, list[Any]]]:
        """Consecutive nodes made inside one call of a ``torch.nn.functional`` function
        that is a layer: node -> (layer type, the call's nodes)."""
        found: dict[Any, tuple[str, list[Any]]] = {}
        current: tuple[Any, ...] | None = None
        members: list[Any] = []

        def close() -> None:
            if current is not None and len(members) > 1:
                for member in members:
                    found[member] = (current[0], list(members))

        for node in graph.nodes:
            key = None
            torch_fn = node.meta.get("torch_fn")
            if node.op == "call_function" and node not in self.groups and torch_fn:
                function = str(torch_fn[1]).rpartition(".")[2]
                if function in _FUNCTIONAL_LAYERS:
                    key = (_FUNCTIONAL_LAYERS[function], str(torch_fn[0]))
            if key != current:
                close()
                current, members = key, []
            if key is not None:
                members.append(node)
        close()
        return found

    # -- ShuffleNet's channel shuffle ------------------------------------------------------

    def _channel_shuffles(self, graph: Any) -> dict[Any, tuple[int, Any]]:
        """view [N, g, C/g, H, W] -> transpose(1, 2) -> (contiguous) -> view [N, C, H, W]:
        the last node maps to a channelshuffle (groups g) of the first view's input; the
        nodes between are left out."""
        found: dict[Any, tuple[int, Any]] = {}
        for node in graph.nodes:
            if node.op != "call_function" or _op_name(node) not in ("view", "reshape"):
                continue
            source = node.args[0]
            if not hasattr(source, "op") or not _is_tensor(source):
                continue
            before, split = _shape(source), _shape(node)
            if len(before) < 3 or len(split) != len(before) + 1:
                continue
            if (
                split[:1] != before[:1]
                or split[1] * split[2] != before[1]
                or split[3:] != before[2:]
            ):
                continue
            chain = [node]
            current = node
            ok = True
            for expected in ("transpose", "contiguous", "view"):
                users = list(current.users)
                if len(users) != 1:
                    ok = False
                    break
                user = users[0]
                name = _op_name(user)
                if expected == "transpose" and not (
                    name == "transpose" and sorted(int(a) for a in user.args[1:3]) == [1, 2]
                ):
                    ok = False
                    break
                if expected == "contiguous" and name not in ("contiguous", "clone"):
                    expected = "view"
                if expected == "view" and name not in ("view", "reshape", "_unsafe_view"):
                    ok = False
                    break
                chain.append(user)
                current = user
                if expected == "view":
                    break
            if not ok or _shape(chain[-1]) != before:
                continue
            for inner in chain[:-1]:
                found[inner] = (0, source)
            found[chain[-1]] = (split[1], source)
        return found

    # -- helpers -----------------------------------------------------------------------------

    def ref(self, value: Any, user: Any) -> str:
        """The spec's name for a captured value."""
        if value in self.values:
            return self.values[value]
        if value in self.params:
            raise self.unsupported(user, f"a parameter ({self.params[value][0]}) used directly")
        raise self.unsupported(
            user, f"a value ({getattr(value, 'name', value)}) convcalc cannot follow"
        )

    def _tensor_inputs(self, node: Any) -> list[Any]:
        return [
            v
            for v in _flatten((*node.args, *node.kwargs.values()))
            if hasattr(v, "op") and _is_tensor(v)
        ]

    def _generated_name(self, node: Any, kind: str) -> str:
        owner = self._owner(node)
        op = _op_name(node).strip("_") or kind
        if op in ("view", "reshape", "_unsafe_view"):
            op = kind
        return f"{owner}.{op}" if owner else op

    def _unique(self, name: str) -> str:
        candidate, k = name, 1
        while candidate in self.used_names or candidate == "input":
            k += 1
            candidate = f"{name}_{k}"
        self.used_names.add(candidate)
        return candidate

    def _owner(self, node: Any) -> str:
        """The path of the innermost module whose forward made ``node``."""
        stack = node.meta.get("nn_module_stack") or {}
        paths = [v[0] if isinstance(v, tuple) else str(v) for v in stack.values()]
        return _clean_path(paths[-1]) if paths else ""

    def _where(self, node: Any) -> str:
        """``model.py:42`` where the model's code made ``node``, or the node's name."""
        trace = node.meta.get("stack_trace") or ""
        torch_dir = Path(self.torch.__file__).resolve().parent
        frames = []
        for path, line, _ in re.findall(r'File "([^"]+)", line (\d+), in (\S+)', trace):
            resolved = Path(path).resolve()
            if resolved == torch_dir or torch_dir in resolved.parents:
                continue  # frames inside torch (but not torchvision, beside it)
            frames.append((path, line))
        if frames:
            path, line = frames[-1]
            return f"{path}:{line}"
        owner = self._owner(node)
        return f"{type(self.root).__name__} ({owner or node.name})"

    def unsupported(self, node: Any, what: str) -> ModelImportError:
        return ModelImportError(
            f"{self._where(node)}: {_op_name(node)} ({what}) cannot be expressed in a spec"
        )


@contextmanager
def _quiet() -> Iterator[None]:
    """No warnings and no log lines (torch logs the graph it gives up on) while capturing."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        sink = io.StringIO()
        with warnings.catch_warnings(), redirect_stdout(sink), redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _layer_base(m: Any) -> Any:
    """The torch.nn (or convcalc.torch_modules) class ``m`` is or derives from that is a
    spec leaf layer type."""
    for base in type(m).__mro__:
        if not base.__module__.startswith(("torch.nn", "convcalc.torch_modules")):
            continue
        cls = LAYER_TYPES.get(base.__name__.lower())
        if isinstance(cls, type) and issubclass(cls, Leaf):
            return base
    return None


def _clean_path(path: str) -> str:
    return str(path).removeprefix("L['self'].").replace("L['self']", "")


def _op_name(node: Any) -> str:
    target = node.target
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        return str(getattr(packet, "__name__", target)).split(".")[-1]
    return str(getattr(target, "__name__", target))


def _bind(node: Any) -> dict[str, Any]:
    """An ATen call's arguments by name, defaults filled in."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return {}
    bound: dict[str, Any] = {}
    for i, argument in enumerate(schema.arguments):
        if i < len(node.args):
            bound[argument.name] = node.args[i]
        elif argument.name in node.kwargs:
            bound[argument.name] = node.kwargs[argument.name]
        elif argument.has_default_value():
            bound[argument.name] = argument.default_value
    return bound


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [item for v in value for item in _flatten(v)]
    if isinstance(value, dict):
        return [item for v in value.values() for item in _flatten(v)]
    return [value]


def _is_tensor(node: Any) -> bool:
    val = node.meta.get("val")
    return hasattr(val, "shape") and hasattr(val, "dtype")


def _is_output(node: Any) -> bool:
    return any(u.op == "output" for u in node.users)


def _shape(node: Any) -> tuple[int, ...]:
    return tuple(int(n) for n in node.meta["val"].shape)
