"""The calculator: walks a ``Network`` and produces a ``Report``, with pure arithmetic."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from convcalc.errors import Problem, ShapeError
from convcalc.layers import LayerModel, Leaf, SpatialMap, format_shape
from convcalc.loader import load_spec, with_overrides
from convcalc.receptive_field import ReceptiveField
from convcalc.report import DTYPE_BYTES, LayerRow, Report, SpecWarning, Totals
from convcalc.spec import Block, Concat, LayerSpec, Network, Repeat, Residual, Sequential

__all__ = ["analyze"]

Shape = tuple[int, ...]


@dataclass
class _Flow:
    """What leaves a sequence of layers: the tensor (its shape, receptive field, storage
    and whether it needs a gradient), and the sums of the layers passed."""

    shape: Shape
    field: ReceptiveField | None
    tensor: int  # which storage holds it (views and in-place layers keep their input's)
    grad: bool  # autograd tracks it: some layer before it has trainable parameters
    params: int = 0
    trainable_params: int = 0
    buffers: int = 0
    macs: int = 0
    saved_bytes: int = 0

    def add(self, other: _Flow) -> None:
        self.params += other.params
        self.trainable_params += other.trainable_params
        self.buffers += other.buffers
        self.macs += other.macs
        self.saved_bytes += other.saved_bytes


class _Analyzer:
    def __init__(self, network: Network) -> None:
        self.network = network
        self.source = network.source
        self.itemsize = DTYPE_BYTES[network.dtype]
        self.input_spatial = tuple(network.input[1:])
        self.rows: list[LayerRow | None] = []
        self.warnings: list[SpecWarning] = []
        self.activation_bytes = 0
        self.largest: tuple[int, str | None] = (0, None)
        self.field_warned = False
        self.in_shortcut = 0  # > 0 while walking a residual's shortcut
        self.storage_bytes: list[int] = []  # per tensor storage
        self.saved: set[int] = set()  # storages autograd keeps for backward

    # -- walking -----------------------------------------------------------------------

    def sequence(
        self, layers: Sequence[LayerSpec], flow: _Flow, prefix: str, depth: int, trainable: bool
    ) -> _Flow:
        out = _Flow(flow.shape, flow.field, flow.tensor, flow.grad)
        for index, layer in enumerate(layers):
            step = self.layer(layer, out, f"{prefix}.{index}", depth, trainable)
            out.shape, out.field, out.tensor, out.grad = (
                step.shape,
                step.field,
                step.tensor,
                step.grad,
            )
            out.add(step)
        return out

    def new_tensor(self, shape: Shape) -> int:
        self.storage_bytes.append(math.prod(shape) * self.itemsize)
        return len(self.storage_bytes) - 1

    def save(self, tensor: int) -> int:
        """Bytes newly kept for backward when a layer saves this storage."""
        if tensor in self.saved:
            return 0
        self.saved.add(tensor)
        return self.storage_bytes[tensor]

    def layer(self, layer: LayerSpec, flow: _Flow, path: str, depth: int, trainable: bool) -> _Flow:
        trainable = trainable and layer.trainable
        if isinstance(layer, Leaf):
            return self.leaf(layer, flow, path, depth, trainable)
        slot = len(self.rows)
        self.rows.append(None)  # the block's row goes before its children
        out = self.block(layer, flow, path, depth, trainable)
        allocates = isinstance(layer, (Residual, Concat))  # the add / cat makes a new tensor
        self.rows[slot] = self.make_row(layer, path, depth, flow.shape, out, "", allocates, True)
        return out

    def leaf(self, layer: Leaf, flow: _Flow, path: str, depth: int, trainable: bool) -> _Flow:
        try:
            result = layer.infer(flow.shape)
        except ShapeError as error:
            raise self.error(error.first.message, layer, path) from None
        field = flow.field
        if field is not None:
            if isinstance(result.windows, tuple):
                field = field.through(result.windows) if result.windows else field
            elif result.windows is SpatialMap.DENSE or len(result.output_shape) != len(flow.shape):
                field = None
        saved = layer.saved(flow.shape, result.output_shape, self.itemsize)
        tensor = flow.tensor if saved.shares_input else self.new_tensor(result.output_shape)
        param_grad = trainable and result.params > 0
        saved_bytes = 0
        if param_grad or (flow.grad and not saved.weight_grad_only):
            if saved.tensor is not None:
                saved_bytes += self.save(flow.tensor if saved.tensor == "input" else tensor)
            saved_bytes += saved.extra_bytes
        if flow.grad and saved.input_for_its_gradient:
            saved_bytes += self.save(flow.tensor)
        out = _Flow(
            result.output_shape,
            field,
            tensor,
            flow.grad or param_grad,
            params=result.params,
            trainable_params=result.params if trainable else 0,
            buffers=result.buffers,
            macs=result.macs,
            saved_bytes=saved_bytes,
        )
        self.rows.append(
            self.make_row(
                layer, path, depth, flow.shape, out, result.arguments, True, False,
                explanation=result.explanation,
            )
        )  # fmt: skip
        for message in result.warnings:
            self.warn(layer, path, message)
        if not self.in_shortcut:
            for message in result.coverage_warnings:
                self.warn(layer, path, message)
        return out

    def block(self, block: Block, flow: _Flow, path: str, depth: int, trainable: bool) -> _Flow:
        if isinstance(block, Sequential):
            return self.sequence(block.layers, flow, path, depth + 1, trainable)
        if isinstance(block, Repeat):
            if len(block.layers) == 1:
                return self.sequence(block.layers * block.times, flow, path, depth + 1, trainable)
            out = _Flow(flow.shape, flow.field, flow.tensor, flow.grad)
            for copy in range(block.times):
                copy_path = f"{path}.{copy}"
                slot = len(self.rows)
                self.rows.append(None)
                step = self.sequence(block.layers, out, copy_path, depth + 2, trainable)
                self.rows[slot] = self.make_row(
                    block, copy_path, depth + 1, out.shape, step, "", False, True, kind="sequential"
                )
                out.shape, out.field, out.tensor, out.grad = (
                    step.shape,
                    step.field,
                    step.tensor,
                    step.grad,
                )
                out.add(step)
            return out
        if isinstance(block, Residual):
            return self.residual(block, flow, path, depth, trainable)
        if isinstance(block, Concat):
            return self.concat(block, flow, path, depth, trainable)
        raise TypeError(f"unknown block {type(block).__name__}")

    def residual(
        self, block: Residual, flow: _Flow, path: str, depth: int, trainable: bool
    ) -> _Flow:
        body = self.sequence(block.layers, flow, f"{path}.body", depth + 1, trainable)
        self.in_shortcut += 1
        try:
            shortcut = self.sequence(block.shortcut, flow, f"{path}.shortcut", depth + 1, trainable)
        finally:
            self.in_shortcut -= 1
        problem = residual_problem(body.shape, shortcut.shape, bool(block.shortcut))
        if problem:
            raise self.error(problem, block, path)
        out = _Flow(
            body.shape,
            self.merge_fields(block, path, [body, shortcut]),
            self.new_tensor(body.shape),  # the sum; backward of + needs no tensor
            body.grad or shortcut.grad,
        )
        out.add(body)
        out.add(shortcut)
        return out

    def concat(self, block: Concat, flow: _Flow, path: str, depth: int, trainable: bool) -> _Flow:
        branches = [
            self.sequence(branch, flow, f"{path}.branches.{i}", depth + 1, trainable)
            for i, branch in enumerate(block.branches)
        ]
        shape = concat_shape([branch.shape for branch in branches])
        if isinstance(shape, str):
            raise self.error(shape, block, path)
        out = _Flow(
            shape,
            self.merge_fields(block, path, branches),
            self.new_tensor(shape),  # backward of cat needs only the sizes
            any(branch.grad for branch in branches),
        )
        for branch in branches:
            out.add(branch)
        return out

    def merge_fields(self, block: Block, path: str, flows: list[_Flow]) -> ReceptiveField | None:
        fields = [flow.field for flow in flows]
        if any(field is None for field in fields):
            return None
        merged = fields[0]
        assert merged is not None
        for other in fields[1:]:
            assert other is not None
            offsets = merged.centre_offsets(other)
            if any(offsets) or merged.stride != other.stride:
                names = ("L",) if len(offsets) == 1 else ("D", "H", "W")[-len(offsets) :]
                detail = (
                    ", ".join(f"{n}: {float(o):g} px" for n, o in zip(names, offsets) if o)
                    or "their strides differ"
                )
                self.warn(
                    block,
                    path,
                    f"{block.type}: the receptive fields of its paths are not aligned "
                    f"(centres differ by {detail}); the union of the fields is reported",
                )
            merged = merged.union(other)
        return merged

    # -- rows, warnings, errors ----------------------------------------------------------

    def make_row(
        self,
        layer: LayerModel,
        path: str,
        depth: int,
        input_shape: Shape,
        flow: _Flow,
        arguments: str,
        allocates: bool,
        is_block: bool,
        kind: str | None = None,
        explanation: tuple[str, ...] = (),
    ) -> LayerRow:
        output_bytes = math.prod(flow.shape) * self.itemsize
        if allocates:
            self.activation_bytes += output_bytes
            if output_bytes > self.largest[0]:
                self.largest = (output_bytes, path)
        self.check_field(layer, path, flow.field)
        return LayerRow(
            path=path,
            name=layer.name if kind is None else None,
            type=kind or layer.type,  # type: ignore[attr-defined]
            depth=depth,
            input_shape=input_shape,
            output_shape=flow.shape,
            params=flow.params,
            trainable_params=flow.trainable_params,
            buffers=flow.buffers,
            macs=flow.macs,
            saved_bytes=flow.saved_bytes,
            output_bytes=output_bytes,
            receptive_field=flow.field,
            arguments=arguments,
            is_block=is_block,
            line=layer.line,
            explanation=explanation,
        )

    def check_field(self, layer: LayerModel, path: str, field: ReceptiveField | None) -> None:
        if self.field_warned or field is None or len(field.size) != len(self.input_spatial):
            return
        if any(r > n for r, n in zip(field.size, self.input_spatial)):
            self.field_warned = True
            size = "×".join(f"{float(r):g}" for r in field.size)
            given = "×".join(map(str, self.input_spatial))
            self.warn(
                layer,
                path,
                f"the receptive field ({size}) is already larger than the {given} input: "
                f"from here on every unit sees the whole input and its zero padding",
            )

    def warn(self, layer: LayerModel, path: str, message: str) -> None:
        self.warnings.append(SpecWarning(path, message, layer.name, layer.line))

    def error(self, message: str, layer: LayerModel, path: str) -> ShapeError:
        return ShapeError(Problem(message, self.source, layer.line, path, layer.name))

    # -- the whole network ---------------------------------------------------------------

    def run(self) -> Report:
        network = self.network
        input_shape = (network.batch_size, *network.input)
        spatial = len(network.input) - 1
        field = ReceptiveField.of_input(spatial) if spatial else None
        start = _Flow(input_shape, field, self.new_tensor(input_shape), grad=False)
        out = self.sequence(network.layers, start, "layers", 1, True)
        rows = tuple(row for row in self.rows if row is not None)
        totals = Totals(
            params=out.params,
            trainable_params=out.trainable_params,
            buffers=out.buffers,
            macs=out.macs,
            param_bytes=out.params * self.itemsize,
            activation_bytes=self.activation_bytes,
            input_bytes=math.prod(input_shape) * self.itemsize,
            largest_activation_bytes=self.largest[0],
            largest_activation_path=self.largest[1],
            saved_bytes=out.saved_bytes,
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
        )


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


def analyze(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Network,
    *,
    input: Sequence[int] | None = None,
    batch_size: int | None = None,
    dtype: str | None = None,
) -> Report:
    """Shapes, parameters, MACs, memory and receptive fields of every layer.

    ``spec`` is a path, YAML text, a dict or a loaded ``Network``; ``input`` (one
    sample, channels first), ``batch_size`` and ``dtype`` override the spec's.

    >>> report = analyze({"input": [1, 28, 28], "layers": [
    ...     {"type": "conv2d", "out_channels": 32, "kernel_size": 3, "padding": 1},
    ...     "relu", {"type": "maxpool2d", "kernel_size": 2}]})
    >>> report.output_shape, report.totals.params
    ((1, 32, 14, 14), 320)
    """
    network = load_spec(spec)
    if input is not None or batch_size is not None or dtype is not None:
        network = with_overrides(network, input=input, batch_size=batch_size, dtype=dtype)
    return _Analyzer(network).run()
