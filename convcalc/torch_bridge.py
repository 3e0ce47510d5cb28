"""Specs as real ``torch.nn`` modules. The only module that imports torch, and only
when one of its functions is called.

Spec type names are ``torch.nn`` class names and spec fields are constructor
arguments, so a leaf is built generically: the class by name, the fields as keyword
arguments, plus the sizes the calculator inferred (``in_channels`` …). Submodule
names are the report's paths: ``layers.5.body.0`` is ``model.layers[5].body[0]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

from convcalc.analysis import analyze
from convcalc.errors import ConvCalcError, Problem, ShapeError, TorchNotInstalledError
from convcalc.graph import Graph, Group, Node, Ref, lower
from convcalc.layers import Leaf
from convcalc.loader import load_spec, with_overrides
from convcalc.merges import Split
from convcalc.report import Report
from convcalc.spec import Network

__all__ = [
    "INFERRED_FIELDS",
    "SPEC_ONLY_FIELDS",
    "build_module",
    "import_torch",
    "torch_arguments",
    "torch_layer",
]

# Fields that are convcalc's own, not constructor arguments.
SPEC_ONLY_FIELDS = {"type", "name", "trainable", "frozen", "line", "from_"}

# Arguments the calculator infers from the incoming shape when a spec leaves them out.
INFERRED_FIELDS: dict[str, Callable[[tuple[int, ...]], Any]] = {
    "in_channels": lambda shape: shape[1],
    "num_features": lambda shape: shape[1],
    "num_channels": lambda shape: shape[1],
    "in_features": lambda shape: shape[-1],
    "normalized_shape": lambda shape: list(shape[1:]),
}


def import_torch() -> Any:
    """``torch``, or a clear error saying how to install it."""
    try:
        import torch
    except ImportError:
        raise TorchNotInstalledError(
            "this needs PyTorch, which is not installed: pip install 'convcalc[torch]'"
        ) from None
    return torch


def torch_arguments(layer: Leaf, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Constructor keyword arguments for ``layer`` receiving ``input_shape``.

    Only the fields the spec sets are passed (torch's defaults are the spec's), plus
    the inferred sizes.
    """
    fields = type(layer).model_fields
    given = layer.model_fields_set | {n for n, info in fields.items() if info.is_required()}
    arguments = {
        field: getattr(layer, field)
        for field in fields
        if field not in SPEC_ONLY_FIELDS and field in given
    }
    for field, infer in INFERRED_FIELDS.items():
        if field in fields and arguments.get(field) is None:
            arguments[field] = infer(input_shape)
    return arguments


def torch_layer(layer: Leaf, input_shape: tuple[int, ...]) -> Any:
    """The ``torch.nn`` module for one leaf layer."""
    torch = import_torch()
    if layer.custom_module:
        from convcalc import torch_modules

        cls = getattr(torch_modules, layer.torch_name)
    else:
        cls = getattr(torch.nn, layer.torch_name, None)
    if cls is None:
        raise ConvCalcError(
            f"torch {torch.__version__} has no torch.nn.{layer.torch_name}; upgrade torch"
        )
    module = cls(**torch_arguments(layer, input_shape))
    if not layer.trainable:
        module.requires_grad_(False)
    for name in layer.frozen:
        getattr(module, name).requires_grad_(False)
    return module


@cache
def _module_classes() -> dict[str, type]:
    """The container modules, defined once torch is imported."""
    torch = import_torch()
    nn = torch.nn

    class SpecNetwork(nn.Module):  # type: ignore[misc,name-defined]
        """A convcalc spec as a torch module: ``self.layers`` holds the layers in order.
        With several inputs, ``forward`` takes them in the spec's order; with several
        outputs it returns a tuple."""

        def __init__(self, layers: Any, name: str, outputs: int) -> None:
            super().__init__()
            self.layers = layers
            self.spec_name = name
            self.multiple_outputs = outputs > 1

        def forward(self, x: Any) -> Any:
            out = self.layers(x)
            return tuple(out) if self.multiple_outputs else out

    class SpecNetworkInputs(SpecNetwork):
        """A spec with several inputs: ``forward`` takes them in the spec's order."""

        def forward(self, *inputs: Any) -> Any:
            out = self.layers(*inputs)
            return tuple(out) if self.multiple_outputs else out

    class Block(nn.Module):  # type: ignore[misc,name-defined]
        """A block of the spec: runs its members (layers and inner blocks) in order.

        ``program`` lists, per member, its child's name and where its inputs come from:
        ``("in", i)`` the block's i-th input, ``("out", j, k)`` output k of member j
        (k is None for a member with one output). ``join`` adds (``+``) or
        concatenates (``cat``) the named values instead of calling a child. ``results``
        are what the block returns: its output, then anything a later layer outside it
        reads.
        """

        def __init__(
            self,
            children: list[tuple[str, Any]],
            program: list[tuple[str | None, str | None, tuple[Any, ...]]],
            results: tuple[Any, ...],
        ) -> None:
            super().__init__()
            for name, module in children:
                self.add_module(name, module)
            self.program = program
            self.results = results
            # Each value is dropped after its last reader, so that it is freed there
            # (as the analysis assumes); what the block returns is kept to the end.
            last: dict[tuple[int, Any], int] = {}
            for step, (_, _, sources) in enumerate(program):
                for source in sources:
                    if source[0] == "out":
                        last[source[1], source[2]] = step
            kept = {(s[1], s[2]) for s in results if s[0] == "out"}
            wanted = [*last, *(key for key in kept if key not in last)]
            self.stored = [
                tuple(piece for at, piece in wanted if at == step) for step in range(len(program))
            ]
            self.dropped = [
                tuple(key for key, at in last.items() if at == step and key not in kept)
                for step in range(len(program))
            ]

        def __getitem__(self, key: int | str) -> Any:
            return self._modules[str(key)]

        def __len__(self) -> int:
            return len(self._modules)

        def forward(self, *inputs: Any) -> Any:
            values: dict[tuple[int, Any], Any] = {}  # (step, piece or None) -> value

            def read(source: tuple[Any, ...]) -> Any:
                if source[0] == "in":
                    return inputs[source[1]]
                return values[source[1], source[2]]

            for step, (child, join, sources) in enumerate(self.program):
                arguments = [read(source) for source in sources]
                if join == "residual":
                    out = arguments[0] + arguments[1]
                elif join == "concat":
                    out = torch.cat(arguments, dim=1)
                else:
                    out = self.get_submodule(child)(*arguments)
                del arguments
                for piece in self.stored[step]:
                    values[step, piece] = out if piece is None else out[piece]
                del out
                for key in self.dropped[step]:
                    del values[key]
            if len(self.results) == 1:
                return read(self.results[0])
            return tuple(read(source) for source in self.results)

    return {"SpecNetwork": SpecNetwork, "SpecNetworkInputs": SpecNetworkInputs, "Block": Block}


def build_module(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Network,
    *,
    input: Sequence[int] | None = None,
    batch_size: int | None = None,
    report: Report | None = None,
) -> Any:
    """The spec as a ``torch.nn.Module`` whose submodule names are the report's paths.

    Build it under ``with torch.device("meta"):`` to allocate no memory. ``report`` is
    the spec's analysis when the caller already has it (it is not analysed again).
    """
    import_torch()
    network = load_spec(spec) if report is None or report.network is None else report.network
    if input is not None or batch_size is not None:
        network = with_overrides(network, input=input, batch_size=batch_size)
        report = None
    if report is None:
        report = analyze(network)  # validates the shapes and gives every layer's input
    classes = _module_classes()
    graph = lower(network)
    builder = _Builder(classes, report, graph)
    layers = builder.group(graph.root, tuple(graph.outputs.values()))
    network_class = classes["SpecNetwork" if len(graph.inputs) == 1 else "SpecNetworkInputs"]
    return network_class(layers, network.name, len(graph.outputs))


class _Builder:
    """One ``Block`` module per group of the graph, each running its own members."""

    def __init__(self, classes: dict[str, type], report: Report, graph: Graph) -> None:
        self.classes = classes
        self.graph = graph
        self.network = graph.network
        self.rows = {row.path: row for row in report.rows}
        self.readers: dict[Ref, list[int]] = {}  # an output -> the nodes that read it
        self.read: dict[int, list[Ref]] = {}  # a node -> its outputs that are read
        self.network_outputs = {_key(ref) for ref in graph.outputs.values()}
        for key, reader in [
            (_key(ref), node.index) for node in graph.nodes for ref in node.inputs
        ] + [(key, len(graph.nodes)) for key in self.network_outputs]:
            if key not in self.readers:
                self.read.setdefault(key.node, []).append(key)
            self.readers.setdefault(key, []).append(reader)

    def group(self, group: Group, results: tuple[Ref, ...]) -> Any:
        """The module of one group, returning ``results`` (its output first)."""
        inputs = self.external_inputs(group, results)
        where: dict[Ref, tuple[Any, ...]] = {ref: ("in", i) for i, ref in enumerate(inputs)}
        children: dict[str, Any] = {}
        program: list[tuple[str | None, str | None, tuple[Any, ...]]] = []
        for member in group.members:
            step = len(program)
            if isinstance(member, Node):
                sources = tuple(where[_key(ref)] for ref in member.inputs)
                if member.join is not None:
                    program.append((None, member.join, sources))
                    where[Ref(member.index)] = ("out", step, None)
                    continue
                name = _segment(group.path, member.path)
                children[name] = self.leaf(member)
                program.append((name, None, sources))
                # a split returns a tuple (even of one piece): its pieces are read by index
                pieces = self.rows[member.path].output_shapes or (None,)
                split = isinstance(member.layer, Split)
                for index in range(len(pieces)):
                    where[Ref(member.index, index)] = ("out", step, index if split else None)
            else:
                inner = (member.output, *self.exports(member))
                assert member.output is not None
                name = _segment(group.path, member.path)
                sources = tuple(
                    where[ref]
                    for ref in self.external_inputs(member, inner)  # type: ignore[arg-type]
                )
                children[name] = self.group(member, inner)  # type: ignore[arg-type]
                program.append((name, None, sources))
                for k, ref in enumerate(inner):
                    assert ref is not None
                    where[_key(ref)] = ("out", step, k if len(inner) > 1 else None)
        module = self.classes["Block"](
            _containers(children), program, tuple(where[_key(ref)] for ref in results)
        )
        if group.layer is not None and not group.layer.trainable:
            module.requires_grad_(False)
        return module

    def leaf(self, node: Node) -> Any:
        layer = node.leaf
        try:
            return torch_layer(layer, self.rows[node.path].input_shape)
        except ConvCalcError as error:
            raise ShapeError(self.problem(str(error), node)) from None
        except (TypeError, ValueError, RuntimeError) as error:
            message = f"torch cannot build {layer.torch_name}: {error}"
            raise ShapeError(self.problem(message, node)) from None

    def external_inputs(self, group: Group, results: tuple[Ref, ...]) -> list[Ref]:
        """What a group reads from outside itself: its entry first, then in order."""
        if group is self.graph.root:
            return list(self.graph.inputs.values())
        inside = range(group.first, group.last + 1)
        found = [_key(group.entry)]
        reads = [
            ref for node in self.graph.nodes[group.first : group.last + 1] for ref in node.inputs
        ]
        for ref in (*reads, *results):
            key = _key(ref)
            if key.node not in inside and key not in found:
                found.append(key)
        return found

    def exports(self, group: Group) -> tuple[Ref, ...]:
        """Outputs made inside a group that something after it reads."""
        inside = range(group.first, group.last + 1)
        assert group.output is not None
        output = _key(group.output)
        found: list[Ref] = []
        for index in inside:
            for key in self.read.get(index, ()):
                if key != output and any(r > group.last for r in self.readers[key]):
                    found.append(key)
        return tuple(found)

    def problem(self, message: str, node: Node) -> Problem:
        layer = node.leaf
        return Problem(message, self.network.source, layer.line, node.path, layer.name)


def _key(ref: Ref) -> Ref:
    """The ref without how it was written (``name`` or ``name.0``)."""
    return Ref(ref.node, ref.index)


def _segment(parent: str, path: str) -> str:
    """``body`` for ``layers.5.body`` in ``layers.5``."""
    return path[len(parent) + 1 :]


def _containers(children: dict[str, Any]) -> list[tuple[str, Any]]:
    """Child modules by name; ``branches.0``, ``branches.1`` go into one ModuleList."""
    torch = import_torch()
    out: dict[str, Any] = {}
    for name, module in children.items():
        head, dot, _ = name.partition(".")
        if dot:
            out.setdefault(head, torch.nn.ModuleList()).append(module)
        else:
            out[name] = module
    return list(out.items())
