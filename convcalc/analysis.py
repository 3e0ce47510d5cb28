"""The calculator: walks a ``Network`` and produces a ``Report``, with pure arithmetic."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from convcalc.errors import ConvCalcError, ModelImportError, Problem, ShapeError
from convcalc.graph import Graph, Group, Node, Ref, lower
from convcalc.layers import LayerModel, LayerResult, SpatialMap, explained, explaining, format_shape
from convcalc.loader import MAX_INT, load_spec, with_overrides
from convcalc.merges import Merge
from convcalc.receptive_field import ReceptiveField
from convcalc.report import DTYPE_BYTES, LayerRow, Report, SpecWarning, Totals
from convcalc.spec import Network, Residual

if TYPE_CHECKING:
    from torch.nn import Module

__all__ = ["analyze"]

Shape = tuple[int, ...]


@dataclass(slots=True)
class _Value:
    """What a node gives: its output shapes (several for a split), the receptive field,
    the storage of each output, whether autograd tracks it, and its own numbers."""

    shapes: tuple[Shape, ...]
    field: ReceptiveField | None
    tensors: tuple[int, ...]  # which storage holds each output (views keep their input's)
    grad: bool  # autograd tracks it: some layer before it has trainable parameters
    params: int = 0
    trainable_params: int = 0
    buffers: int = 0
    macs: int = 0
    saved_bytes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0


class _Analyzer:
    """One fold over the graph's nodes in order; a block's row is made when its last
    node is done (so warnings come in the order the layers are met)."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.graph = lower(network)
        self.source = network.source
        self.itemsize = DTYPE_BYTES[network.dtype]
        self.input_spatial = tuple(network.input[1:])
        self.values: list[_Value] = []
        self.rows: dict[int, LayerRow] = {}  # id(node or group) -> its row
        self.warnings: list[SpecWarning] = []
        self.activation_bytes = 0
        self.largest: tuple[int, str | None] = (0, None)
        self.field_covers_input: str | None = None  # first layer seeing the whole input
        self.storage_bytes: list[int] = []  # per tensor storage
        self.saved: set[int] = set()  # storages autograd keeps for backward
        self.sums = [(0,) * 7]  # running totals after each node, for block rows

    # -- storage -------------------------------------------------------------------------

    def new_tensor(self, shape: Shape) -> int:
        self.storage_bytes.append(math.prod(shape) * self.itemsize)
        return len(self.storage_bytes) - 1

    def save(self, tensor: int) -> int:
        """Bytes newly kept for backward when a layer saves this storage."""
        if tensor in self.saved:
            return 0
        self.saved.add(tensor)
        return self.storage_bytes[tensor]

    # -- the fold ------------------------------------------------------------------------

    def value_of(self, ref: Ref, node: Node) -> tuple[Shape, ReceptiveField | None, int, bool]:
        """(shape, field, storage, grad) of one output that ``node`` reads."""
        value = self.values[ref.node]
        problem = output_problem(self.graph, ref, len(value.shapes))
        if problem:
            raise self.error(problem, node)
        return value.shapes[ref.index], value.field, value.tensors[ref.index], value.grad

    def node(self, node: Node) -> _Value:
        if node.is_input:
            shape = (self.network.batch_size, *self.network.input_shapes[node.path])
            spatial = len(shape) - 2
            field = ReceptiveField.of_input(spatial) if spatial else None
            return _Value((shape,), field, (self.new_tensor(shape),), grad=False)
        inputs = [self.value_of(ref, node) for ref in node.inputs]
        value = self.join(node, inputs) if node.join is not None else self.leaf(node, inputs)
        for shape in value.shapes:  # sizes past int64 would overflow the float totals
            if shape and max(shape) > MAX_INT:
                raise self.error(
                    f"the output {format_shape(shape)} has a size larger than any tensor can "
                    f"have (2**63 - 1)",
                    node,
                )
        return value

    def leaf(self, node: Node, inputs: list[tuple[Shape, Any, int, bool]]) -> _Value:
        layer = node.leaf
        shapes = [shape for shape, _, _, _ in inputs]
        try:
            result = node_result(node, shapes)
            trainable_params = layer.trainable_params(result) if node.trainable else 0
        except ShapeError as error:
            raise self.error(error.first.message, node) from None
        out_shapes = (result.output_shape, *result.extra_outputs)
        field = self.merged_field(node, inputs, result.output_shape)
        if field is not None:
            if isinstance(result.windows, tuple):
                field = field.through(result.windows) if result.windows else field
                parts = (field.size, field.stride, field.padding)
                if any(not -MAX_INT <= value <= MAX_INT for part in parts for value in part):
                    field = None  # wider than any input can be: it sees the whole input
            elif result.windows is SpatialMap.DENSE or len(result.output_shape) != len(shapes[0]):
                field = None
        param_grad = trainable_params > 0
        grad = any(g for _, _, _, g in inputs)
        saved_bytes = 0
        if isinstance(layer, Merge):
            saved_inputs, extra = layer.saved_operands(
                shapes, [g for _, _, _, g in inputs], self.itemsize
            )
            saved_bytes = sum(self.save(inputs[i][2]) for i in saved_inputs) + extra
            tensors: tuple[int, ...] = (self.new_tensor(result.output_shape),)
        else:
            in_shape, _, in_tensor, in_grad = inputs[0]
            saved = layer.saved(in_shape, result.output_shape, self.itemsize)
            if saved.shares_input:
                tensors = (in_tensor,) * len(out_shapes)
            else:
                tensors = tuple(self.new_tensor(shape) for shape in out_shapes)
            weight_grad = param_grad and "weight" not in layer.frozen
            if (weight_grad if saved.weight_grad_only else param_grad) or (
                in_grad and not saved.weight_grad_only
            ):
                if saved.tensor is not None:
                    saved_bytes += self.save(in_tensor if saved.tensor == "input" else tensors[0])
                saved_bytes += saved.extra_bytes
            if in_grad and saved.input_for_its_gradient:
                saved_bytes += self.save(in_tensor)
        read, written = (n * self.itemsize for n in layer.traffic(shapes, result))
        family = layer.family(shapes[0])
        value = _Value(
            out_shapes,
            field,
            tensors,
            grad or param_grad,
            params=result.params,
            trainable_params=trainable_params,
            buffers=result.buffers,
            macs=result.macs,
            saved_bytes=saved_bytes,
            bytes_read=read,
            bytes_written=written,
        )
        output_bytes = sum(math.prod(shape) for shape in out_shapes) * self.itemsize
        self.allocate(output_bytes, node.path)
        self.check_field(node.path, field)
        sources: tuple[str, ...] = ()
        if layer.from_ is not None:
            sources = tuple(self.source_path(ref) for ref in node.inputs)
        self.rows[id(node)] = LayerRow(
            path=node.path,
            name=layer.name,
            type=layer.type,
            depth=node.depth,
            input_shape=shapes[0],
            output_shape=result.output_shape,
            params=value.params,
            trainable_params=value.trainable_params,
            buffers=value.buffers,
            macs=value.macs,
            saved_bytes=saved_bytes,
            output_bytes=output_bytes,
            receptive_field=field,
            arguments=result.arguments,
            is_block=False,
            line=layer.line,
            input_shapes=tuple(shapes) if len(shapes) > 1 else (),
            output_shapes=out_shapes if len(out_shapes) > 1 else (),
            sources=sources,
            bytes_read=read,
            bytes_written=written,
            family=family,
            explanation=result.explanation + self.traffic_formula(shapes, result, read, written)
            if explaining()
            else (),
        )
        for message in result.warnings:
            self.warn(layer, node.path, message)
        if not node.in_shortcut:
            for message in result.coverage_warnings:
                self.warn(layer, node.path, message)
        return value

    def join(self, node: Node, inputs: list[tuple[Shape, Any, int, bool]]) -> _Value:
        """The ``+`` of a residual block or the ``cat`` of a concat block."""
        shapes = [shape for shape, _, _, _ in inputs]
        try:
            shape = node_result(node, shapes).output_shape
        except ShapeError as error:
            raise self.error(error.first.message, node) from None
        field = self.merged_field(node, inputs, shape)
        # the sum or the concatenation is a new tensor; backward of + and cat keeps none
        output_bytes = math.prod(shape) * self.itemsize
        self.allocate(output_bytes, node.path)
        grad = any(g for _, _, _, g in inputs)
        read = sum(math.prod(shape) for shape in shapes) * self.itemsize
        return _Value(
            (shape,),
            field,
            (self.new_tensor(shape),),
            grad,
            bytes_read=read,
            bytes_written=output_bytes,
        )

    def merged_field(
        self, node: Node, inputs: list[tuple[Shape, Any, int, bool]], output: Shape
    ) -> ReceptiveField | None:
        """The union of the inputs' fields, warning when their centres are not aligned.
        An input broadcast over the output's spatial size (a gate from global pooling)
        is global context and leaves the field alone."""
        if len(inputs) == 1:
            return inputs[0][1]  # type: ignore[no-any-return]
        spatial = [
            field
            for shape, field, _, _ in inputs
            if not (
                len(shape) == len(output)
                and all(n == 1 for n in shape[2:])
                and any(n > 1 for n in output[2:])
            )
        ] or [field for _, field, _, _ in inputs]
        if any(field is None for field in spatial):
            return None
        merged = spatial[0]
        layer = node.layer
        assert layer is not None
        for other in spatial[1:]:
            offsets = merged.centre_offsets(other)
            if any(offsets) or merged.stride != other.stride:
                names = ("L",) if len(offsets) == 1 else ("D", "H", "W")[-len(offsets) :]
                detail = (
                    ", ".join(f"{n}: {float(o):g} px" for n, o in zip(names, offsets) if o)
                    or "their strides differ"
                )
                self.warn(
                    layer,
                    node.path,
                    f"{getattr(layer, 'type', '')}: the receptive fields of its paths are not "
                    f"aligned "
                    f"(centres differ by {detail}); the union of the fields is reported",
                )
            merged = merged.union(other)
        return merged  # type: ignore[no-any-return]

    def close(self, group: Group) -> None:
        """The row of a block whose last node is done: its members' sums."""
        after, before = self.sums[group.last + 1], self.sums[group.first]
        params, trainable, buffers, macs, saved, read, written = (
            a - b for a, b in zip(after, before)
        )
        assert group.output is not None
        value = self.values[group.output.node]
        shape = value.shapes[group.output.index]
        entry = self.values[group.entry.node]
        layer = group.layer
        assert layer is not None
        self.check_field(group.path, value.field)
        self.rows[id(group)] = LayerRow(
            path=group.path,
            name=group.name,
            type=group.type,
            depth=group.depth,
            input_shape=entry.shapes[group.entry.index],
            output_shape=shape,
            params=params,
            trainable_params=trainable,
            buffers=buffers,
            macs=macs,
            saved_bytes=saved,
            output_bytes=math.prod(shape) * self.itemsize,
            receptive_field=value.field,
            is_block=True,
            line=layer.line,
            bytes_read=read,
            bytes_written=written,
        )

    def traffic_formula(
        self, shapes: Sequence[Shape], result: LayerResult, read: int, written: int
    ) -> tuple[str, ...]:
        """``--explain``'s lines for the bytes a layer moves and its arithmetic intensity."""
        if not read and not written:
            return ("bytes read: 0 (a view: it moves no data)",)
        terms = ["·".join(map(str, shape)) for shape in shapes]
        terms += [str(n) for n in (result.params, result.buffers) if n]
        lines = [f"bytes read: ({' + '.join(terms)})·{self.itemsize} = {read:,}"]
        if not written:
            lines.append("bytes written: 0 (in place, over its input)")
            return tuple(lines)
        outputs = (result.output_shape, *result.extra_outputs)
        total = " + ".join("·".join(map(str, shape)) for shape in outputs)
        line = f"bytes written: ({total})·{self.itemsize} = {written:,}"
        if result.macs:
            intensity = 2 * result.macs / (read + written)
            line += f" (intensity {2 * result.macs:,} FLOPs / {read + written:,} B"
            line += f" = {intensity:.2f} FLOP/B)"
        return (*lines, line)

    def source_path(self, ref: Ref) -> str:
        node = self.graph.nodes[ref.node]
        return f"{node.path}.{ref.index}" if len(self.values[ref.node].shapes) > 1 else node.path

    # -- rows, warnings, errors ----------------------------------------------------------

    def allocate(self, output_bytes: int, path: str) -> None:
        self.activation_bytes += output_bytes
        if output_bytes > self.largest[0]:
            self.largest = (output_bytes, path)

    def check_field(self, path: str, field: ReceptiveField | None) -> None:
        """Note the first layer whose field is larger than the input (information for
        the totals: every stock ImageNet network gets there, so it is no warning)."""
        if (
            self.field_covers_input is not None
            or field is None
            or len(field.size) != len(self.input_spatial)
        ):
            return
        if any(r > n for r, n in zip(field.size, self.input_spatial)):
            self.field_covers_input = path

    def warn(self, layer: LayerModel | None, path: str, message: str) -> None:
        name = layer.name if layer is not None else None
        line = layer.line if layer is not None else None
        self.warnings.append(SpecWarning(path, message, name, line))

    def error(self, message: str, node: Node) -> ShapeError:
        layer = node.layer
        line = layer.line if layer is not None else None
        name = layer.name if layer is not None else None
        return ShapeError(Problem(message, self.source, line, node.path, name))

    # -- the whole network ---------------------------------------------------------------

    def run(self) -> Report:
        network = self.network
        graph = self.graph
        for node in graph.nodes:
            value = self.node(node)
            self.values.append(value)
            last = self.sums[-1]
            self.sums.append(
                (
                    last[0] + value.params,
                    last[1] + value.trainable_params,
                    last[2] + value.buffers,
                    last[3] + value.macs,
                    last[4] + value.saved_bytes,
                    last[5] + value.bytes_read,
                    last[6] + value.bytes_written,
                )
            )
            for group in node.closes:
                if group.row:
                    self.close(group)
        for node in graph.unused:
            if node.is_input:
                self.warn(None, node.path, f"the input {node.path!r} is never used")
            else:
                self.warn(
                    node.layer,
                    node.path,
                    "its output is never used: no later layer takes it and it is not "
                    "among the outputs",
                )
        rows = tuple(self.rows[id(member)] for member in graph.rows())
        params, trainable, buffers, macs, saved, read, written = self.sums[-1]
        inputs = {name: self.values[ref.node].shapes[0] for name, ref in graph.inputs.items()}
        outputs = {
            label: self.value_of(ref, graph.nodes[ref.node]) for label, ref in graph.outputs.items()
        }
        input_shape = next(iter(inputs.values()))
        totals = Totals(
            params=params,
            trainable_params=trainable,
            buffers=buffers,
            macs=macs,
            param_bytes=params * self.itemsize,
            activation_bytes=self.activation_bytes,
            input_bytes=sum(math.prod(shape) for shape in inputs.values()) * self.itemsize,
            largest_activation_bytes=self.largest[0],
            largest_activation_path=self.largest[1],
            saved_bytes=saved,
            field_covers_input_path=self.field_covers_input,
            bytes_read=read,
            bytes_written=written,
            peak_inference_bytes=inference_peak(graph, self.values, self.itemsize),
        )
        return Report(
            name=network.name,
            input_shape=input_shape,
            dtype=network.dtype,
            rows=rows,
            totals=totals,
            warnings=tuple(self.warnings),
            source=network.source,
            network=network,
            input_shapes=inputs,
            outputs={label: value[0] for label, value in outputs.items()},
            explained=explaining(),
        )


def inference_peak(graph: Graph, values: Sequence[_Value], itemsize: int) -> int:
    """The most bytes of activations alive at once in a forward pass without autograd, as
    eager PyTorch runs the module ``build_module`` makes.

    Every layer writes a new tensor but views and in-place layers (those that write
    nothing: ``LayerModel.traffic``), which keep their input's storage. A storage is
    freed after its last reader; but a block is a module, and a Python call holds its
    arguments, so what a block reads from outside lives until the block returns. The
    inputs (the caller's) and the outputs live throughout. Memory a layer uses only
    while it runs (workspaces) is not counted.
    """
    storage_bytes: list[int] = []
    made: list[int] = []  # the node that makes each storage
    storages: list[tuple[int, ...]] = []  # per node, the storage of each output
    for node, value in zip(graph.nodes, values):
        keeps_input = (
            node.join is None
            and node.layer is not None
            and not isinstance(node.layer, Merge)
            and not value.bytes_written  # a view or an in-place layer
        )
        if keeps_input:
            first = node.inputs[0]
            storages.append((storages[first.node][first.index],) * len(value.shapes))
            continue
        storages.append(tuple(range(len(storage_bytes), len(storage_bytes) + len(value.shapes))))
        storage_bytes += (math.prod(shape) * itemsize for shape in value.shapes)
        made += [node.index] * len(value.shapes)
    freed = list(made)  # the node after which each storage is freed

    def hold(ref: Ref, until: int) -> None:
        storage = storages[ref.node][ref.index]
        freed[storage] = max(freed[storage], until)

    for node in graph.nodes:
        for ref in node.inputs:
            hold(ref, node.index)
    for group in _groups(graph.root):
        if group.first <= group.last:
            hold(group.entry, group.last)
            for node in graph.nodes[group.first : group.last + 1]:
                for ref in node.inputs:
                    if ref.node < group.first:
                        hold(ref, group.last)
    end = len(graph.nodes)
    for ref in (*graph.inputs.values(), *graph.outputs.values()):
        hold(ref, end)
    change = [0] * (end + 2)
    for storage, size in enumerate(storage_bytes):
        change[made[storage]] += size
        change[freed[storage] + 1] -= size
    live = peak = 0
    for step in change:
        live += step
        peak = max(peak, live)
    return peak


def _groups(group: Group) -> Iterator[Group]:
    """Every group inside ``group`` (blocks and their chains: each is a module)."""
    for member in group.members:
        if isinstance(member, Group):
            yield member
            yield from _groups(member)


def node_result(node: Node, shapes: Sequence[Shape]) -> LayerResult:
    """What one node (a layer, or a block's join) does to its input shapes; a
    ``ShapeError`` when it cannot take them. ``sizes`` asks this too."""
    if node.join is not None:
        block = node.layer
        if isinstance(block, Residual):
            problem = residual_problem(shapes[0], shapes[1], bool(block.shortcut))
            if problem:
                raise ShapeError(problem)
            return LayerResult(output_shape=shapes[0])
        merged = concat_shape(shapes)
        if isinstance(merged, str):
            raise ShapeError(merged)
        return LayerResult(output_shape=merged)
    layer = node.leaf
    if layer.merges or len(shapes) != 1:
        return layer.infer_many(shapes, node.labels)
    return layer.infer(shapes[0])


def output_problem(graph: Graph, ref: Ref, count: int) -> str | None:
    """Why a layer cannot read this output of a node with ``count`` outputs, or None:
    a split's pieces are taken one at a time (``name.0``)."""
    if ref.index < count and (count == 1 or ref.picked):
        return None
    source = graph.nodes[ref.node]
    assert source.layer is not None
    written = source.layer.name or source.path
    pieces = f"{written}.0 to {written}.{count - 1}"
    if ref.index < count:
        return f"{source.label} has {count} outputs; take one of them: {pieces}"
    return f"{source.label} has {count} outputs ({pieces}); there is no {written}.{ref.index}"


def residual_problem(body: Shape, shortcut: Shape, has_shortcut: bool) -> str | None:
    """Why a residual's two outputs cannot be added, or None."""
    if body == shortcut:
        return None
    which = "the shortcut's" if has_shortcut else "the identity shortcut's"
    return (
        f"residual: the body's output {format_shape(body)} and {which} output "
        f"{format_shape(shortcut)} must have the same shape"
    )


def concat_shape(shapes: Sequence[Shape]) -> Shape | str:
    """The shape of the branches concatenated along channels, or why they cannot be."""
    first = shapes[0]
    for i, shape in enumerate(shapes[1:], start=1):
        # every dimension but the channels (dimension 1) must agree
        if len(shape) < 2 or shape[:1] + shape[2:] != first[:1] + first[2:]:
            return (
                f"concat: branch 0 gives {format_shape(first)} but branch {i} gives "
                f"{format_shape(shape)}; all dimensions but the channels must agree"
            )
    return (first[0], sum(shape[1] for shape in shapes), *first[2:])


def _imported(model: object, input: Sequence[int] | None) -> Network:
    """The spec of a ``torch.nn.Module`` given to ``analyze`` (through ``from_torch``);
    any other object is refused naming its type. Only a module imports torch."""
    if not (
        callable(getattr(model, "named_modules", None))
        and callable(getattr(model, "forward", None))
    ):
        raise ConvCalcError(
            f"analyze() takes a spec (a path, YAML text, a dict or a Network) or a "
            f"torch.nn.Module, not {type(model).__name__}"
        )
    if input is None:
        raise ModelImportError(
            f"analyze() needs the input shape of the {type(model).__name__} module: "
            f"analyze(model, input=[3, 224, 224]) (one sample, channels first)"
        )
    from convcalc.torch_import import UnusedParametersWarning, import_model

    imported = import_model(model, input)
    if imported.unused:
        warnings.warn(imported.unused_message, UnusedParametersWarning, stacklevel=3)
    return imported.network


def analyze(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Network | Module,
    *,
    input: Sequence[int] | None = None,
    batch_size: int | None = None,
    dtype: str | None = None,
    explain: bool = False,
) -> Report:
    """Shapes, parameters, MACs, memory and receptive fields of every layer.

    ``spec`` is a path, YAML text, a dict or a loaded ``Network``; ``input`` (one
    sample, channels first), ``batch_size`` and ``dtype`` override the spec's. With
    ``explain`` every row carries its formulas with the numbers (``shape --explain``).
    ``spec`` may also be a ``torch.nn.Module`` with its ``input`` shape (torchinfo's
    ``summary(model, input_size)``, without the batch): it is imported with
    ``from_torch``.

    >>> report = analyze({"input": [1, 28, 28], "layers": [
    ...     {"type": "conv2d", "out_channels": 32, "kernel_size": 3, "padding": 1},
    ...     "relu", {"type": "maxpool2d", "kernel_size": 2}]})
    >>> report.output_shape, report.totals.params
    ((1, 32, 14, 14), 320)
    """
    if not isinstance(spec, (str, os.PathLike, Mapping, Network)):
        spec, input = _imported(spec, input), None
    network = load_spec(spec)
    if input is not None or batch_size is not None or dtype is not None:
        network = with_overrides(network, input=input, batch_size=batch_size, dtype=dtype)
    if explain:
        with explained():
            return _Analyzer(network).run()
    return _Analyzer(network).run()
