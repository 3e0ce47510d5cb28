"""``convcalc verify``: every number of the calculator cross-checked against real torch layers.

Per layer: output shape (forward hooks), trainable and non-trainable parameters and
buffer elements (the module's own tensors), MACs (``FlopCounterMode``'s FLOPs / 2).
Receptive fields are measured, not recomputed: one output unit of a copy of the
network is back-propagated to the input and the pixels that receive gradient are
read off (see ``measure_receptive_field``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from convcalc.analysis import analyze
from convcalc.errors import ConvCalcError
from convcalc.layers import SPATIAL_NAMES
from convcalc.loader import build_network, load_spec, with_overrides
from convcalc.receptive_field import ReceptiveField
from convcalc.report import LayerRow, Report
from convcalc.spec import Network

__all__ = [
    "Check",
    "FieldMeasurement",
    "LayerCheck",
    "VerifyReport",
    "measure_receptive_field",
    "verify",
]


@dataclass(frozen=True)
class Check:
    """One number (or shape) from the calculator next to torch's."""

    what: str
    calculator: Any
    torch: Any

    @property
    def ok(self) -> bool:
        return bool(self.calculator == self.torch)

    def to_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "calculator": self.calculator,
            "torch": self.torch,
            "ok": self.ok,
        }


@dataclass(frozen=True)
class LayerCheck:
    """The checks of one report row."""

    path: str
    name: str | None
    type: str
    depth: int
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def check(self, what: str) -> Check | None:
        return next((c for c in self.checks if c.what == what), None)


@dataclass(frozen=True)
class VerifyReport:
    """Everything ``convcalc verify`` compared, and whether it all matched."""

    name: str
    device: str
    input_shape: tuple[int, ...]
    layers: tuple[LayerCheck, ...]
    totals: tuple[Check, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return all(layer.ok for layer in self.layers) and all(c.ok for c in self.totals)

    def first_difference(self) -> str | None:
        """The first mismatch, as a sentence."""
        for layer in self.layers:
            for check in layer.checks:
                if not check.ok:
                    label = layer.path if not layer.name else f"{layer.path} ({layer.name})"
                    return (
                        f"{label}, {layer.type}: {check.what} is {check.calculator} by the "
                        f"calculator but {check.torch} in torch"
                    )
        for check in self.totals:
            if not check.ok:
                return (
                    f"total {check.what} is {check.calculator} by the calculator but "
                    f"{check.torch} in torch"
                )
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "device": self.device,
            "input_shape": list(self.input_shape),
            "ok": self.ok,
            "first_difference": self.first_difference(),
            "layers": [
                {
                    "path": layer.path,
                    "name": layer.name,
                    "type": layer.type,
                    "ok": layer.ok,
                    "checks": [check.to_dict() for check in layer.checks],
                }
                for layer in self.layers
            ],
            "totals": [check.to_dict() for check in self.totals],
            "notes": list(self.notes),
        }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence torch's performance note about even kernels with padding='same'."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using padding='same' with even kernel")
        yield


def _device(torch: Any, name: str) -> Any:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConvCalcError("--device cuda: CUDA is not available on this machine")
    if name not in ("meta", "cpu", "cuda"):
        raise ConvCalcError(f"unknown device {name!r}; use meta, cpu or cuda")
    return torch.device(name)


def verify(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Network,
    *,
    device: str = "meta",
    every_field: bool = False,
    input: Sequence[int] | None = None,
    batch_size: int | None = None,
) -> VerifyReport:
    """Build the spec in torch, run one forward pass and compare every number.

    ``every_field`` measures the receptive field of every spatial layer instead of
    only the last one.
    """
    from convcalc.torch_bridge import build_module, import_torch

    torch = import_torch()
    from torch.utils.flop_counter import FlopCounterMode

    network = load_spec(spec)
    if input is not None or batch_size is not None:
        network = with_overrides(network, input=input, batch_size=batch_size)
    report = analyze(network)
    target = _device(torch, device)
    with torch.device(target):
        module = build_module(network, report=report)  # analysed just above
    module.eval()

    shapes: dict[str, Any] = {}
    handles = []
    for row in report.rows:
        submodule = module.get_submodule(row.path)

        def record(_module: Any, _inputs: Any, output: Any, row: LayerRow = row) -> None:
            if row.output_shapes:  # a split: every piece
                shapes[row.path] = [list(piece.shape) for piece in output]
            else:  # a block that also hands values on returns its output first
                shapes[row.path] = list((output[0] if isinstance(output, tuple) else output).shape)

        handles.append(submodule.register_forward_hook(record))
    counter = FlopCounterMode(display=False)
    inputs = [torch.zeros(shape, device=target) for shape in report.input_shapes.values()]
    with counter, torch.no_grad(), _quiet():
        module(*inputs)
    for handle in handles:
        handle.remove()
    flops = counter.get_flop_counts()
    root = type(module).__name__

    layers = []
    for row in report.rows:
        submodule = module.get_submodule(row.path)
        params = sum(p.numel() for p in submodule.parameters())
        trainable = sum(p.numel() for p in submodule.parameters() if p.requires_grad)
        macs = sum(flops.get(f"{root}.{row.path}", {}).values()) // 2
        checks = [
            Check(
                "output shape",
                [list(piece) for piece in row.output_shapes] or list(row.output_shape),
                shapes.get(row.path, []),
            ),
            Check("trainable params", row.trainable_params, trainable),
            Check("non-trainable params", row.non_trainable_params, params - trainable),
            Check("buffers", row.buffers, sum(b.numel() for b in submodule.buffers())),
            Check("MACs", row.macs, macs),
        ]
        layers.append(LayerCheck(row.path, row.name, row.type, row.depth, tuple(checks)))

    totals = [
        Check("params", report.totals.params, sum(p.numel() for p in module.parameters())),
        Check(
            "trainable params",
            report.totals.trainable_params,
            sum(p.numel() for p in module.parameters() if p.requires_grad),
        ),
        Check("buffers", report.totals.buffers, sum(b.numel() for b in module.buffers())),
        Check("MACs", report.totals.macs, counter.get_total_flops() // 2),
    ]

    notes: list[str] = []
    # A 1×1 output (global pooling) sees the whole input: there is nothing to measure.
    spatial_rows = [
        row
        for row in report.rows
        if row.receptive_field is not None and max(row.output_shape[2:], default=1) > 1
    ]
    meter = _FieldMeter(network, report)
    if every_field:
        measurements = meter.measure(spatial_rows)
    else:
        # The last spatial layer whose field can be measured, skipping adaptive pooling,
        # whose windows change when the input is enlarged for measuring.
        measurements = meter.measure_last(
            [row for row in reversed(spatial_rows) if not row.type.startswith("adaptive")]
        )
    field_checks = {}
    for path, measurement in measurements.items():
        if measurement.field is not None and measurement.calculator is not None:
            field_checks[path] = Check(
                "receptive field", measurement.calculator.to_dict(), measurement.field.to_dict()
            )
        else:
            notes.append(f"{path}: receptive field not measured: {measurement.reason}")
    layers = [
        LayerCheck(
            layer.path,
            layer.name,
            layer.type,
            layer.depth,
            layer.checks + ((field_checks[layer.path],) if layer.path in field_checks else ()),
        )
        for layer in layers
    ]
    return VerifyReport(
        network.name, device, report.input_shape, tuple(layers), tuple(totals), tuple(notes)
    )


# -- measuring receptive fields ------------------------------------------------------------
#
# One output unit in the middle of a layer's output, and its neighbour along each
# dimension, are back-propagated through a copy of the network with few channels, constant
# positive weights, pointwise layers as identities and max pooling as average pooling; the
# input pixels that receive gradient give the field's size, stride and padding. The
# calculator's field only chooses the input size (the field must lie inside the input with
# a margin); what is reported is what torch's gradients show.
#
# The input grows by multiples of the network's total stride (the least common multiple
# of every layer's effective stride), so that every layer's arithmetic stays valid, and
# one dimension at a time: through windows that are products over the dimensions
# (convolutions, pooling, padding) the field along one dimension does not depend on the
# input's size along the others, so a 2071-pixel field is measured on a 2144×224 input,
# not on a 2144×2144 one.

_MAX_PIXELS = 1 << 22  # the largest input measured on
_MAX_MACS = 3 * 10**8  # the costliest copy measured: multiply-accumulates of its forward pass
_RETRIES = 2  # larger inputs tried when a measured field comes nearer the border than planned
_SUPPORT_EVERY = 8  # gradients are cut to their support (0 or 1) every this many layers

_APPROXIMATE = (
    "after a layer of fractional stride (upsampling, a transposed convolution, uneven "
    "adaptive pooling) the calculator's field is an approximation, not one unit's"
)


@dataclass(frozen=True)
class FieldMeasurement:
    """A receptive field measured by back-propagation (``field``) next to the calculator's
    on the same input (``calculator``), or the ``reason`` it was not measured.

    ``sizes`` gives, per spatial dimension, the input's spatial size that dimension was
    measured on; ``channels`` names the copy of the network measured (``"1 channel"``,
    ``"channels / 16"``, ``"full width"``).
    """

    path: str
    field: ReceptiveField | None = None
    calculator: ReceptiveField | None = None
    sizes: tuple[tuple[int, ...], ...] = ()
    channels: str = ""
    reason: str = ""


@dataclass(frozen=True)
class _Span:
    """Where the middle unit's field and its neighbour's lie along one input dimension."""

    middle: int  # the unit's index
    start: int
    end: int
    neighbour_start: int
    neighbour_end: int


def measure_receptive_field(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Network,
    path: str,
    *,
    max_pixels: int = _MAX_PIXELS,
    max_macs: int = _MAX_MACS,
) -> FieldMeasurement:
    """Measure the receptive field of the layer at ``path`` by back-propagation.

    A copy of the network with few channels (one everywhere where the spec allows, else
    every channel count divided by a common divisor), constant positive weights, no bias,
    pointwise layers (activations, normalisation, dropout) as identities and max pooling
    as average pooling is run on an input of ones; one output unit in the middle, and its
    neighbour along each dimension, are back-propagated, and the input pixels with non-zero
    gradient give the size, the effective stride and the effective padding. The input is
    enlarged (by multiples of the network's total stride, one dimension at a time) until
    the field lies inside it with a margin of that stride, up to ``max_pixels`` pixels and
    ``max_macs`` multiply-accumulates per forward pass; otherwise ``reason`` says why.
    """
    network = load_spec(spec)
    report = analyze(network)
    meter = _FieldMeter(network, report, max_pixels=max_pixels, max_macs=max_macs)
    row = report.row(path)  # a path or a layer's name
    return meter.measure([row])[row.path]


def _unit_dependent(values: Sequence[Any]) -> bool:
    """Whether a field went through a window of fractional stride (upsampling, a
    transposed convolution, uneven adaptive pooling): the calculator carries such fields
    as fractions, even where they come out whole."""
    return any(isinstance(value, Fraction) for value in values)


def _values(field: ReceptiveField, d: int | None = None) -> tuple[Any, ...]:
    """The field's size, stride and padding (along dimension ``d`` only, if given)."""
    if d is None:
        return (*field.size, *field.stride, *field.padding)
    return (field.size[d], field.stride[d], field.padding[d])


def _graph_marks(report: Report) -> tuple[set[str], set[str]]:
    """Two sets of row paths, found by following the graph.

    Approximate: rows whose field went through a window of fractional stride (upsampling,
    a transposed convolution, uneven adaptive pooling) on some path; the calculator's field
    there is an approximation, as the field differs from unit to unit. The layer of
    fractional stride carries its field as fractions, what comes after it not always (a
    union with an exact path can come out as plain integers).

    Fixed: rows whose output size does not depend on the input's (adaptive pooling and
    what reads only from it; a merge with one growing input grows).
    """
    from convcalc.graph import Group, lower

    assert report.network is not None
    graph = lower(report.network)
    rows = {row.path: row for row in report.rows}
    approximate: set[int] = set()
    fixed: set[int] = set()
    for node in graph.nodes:
        row = rows.get(node.path)
        field = row.receptive_field if row is not None else None
        if (field is not None and _unit_dependent(_values(field))) or any(
            ref.node in approximate for ref in node.inputs
        ):
            approximate.add(node.index)
        adaptive = row is not None and row.type.startswith("adaptive")
        if adaptive or (node.inputs and all(ref.node in fixed for ref in node.inputs)):
            fixed.add(node.index)
    marks: tuple[set[str], set[str]] = (set(), set())
    for nodes, paths in zip((approximate, fixed), marks):
        paths.update(graph.nodes[index].path for index in nodes)
        for item in graph.rows():
            if isinstance(item, Group) and item.output is not None and item.output.node in nodes:
                paths.add(item.path)
    return marks


def _total_stride(report: Report, dims: int, skipped: set[str]) -> tuple[int, ...]:
    """Per spatial dimension, the least common multiple of every layer's effective stride:
    growing the input by a multiple of it grows every layer's output by whole units
    (``skipped``: rows whose stride does not count)."""
    steps = [1] * dims
    for row in report.rows:
        field = row.receptive_field
        if field is None or len(field.stride) != dims or len(row.output_shape) != dims + 2:
            continue
        if row.path not in skipped:
            for d in range(dims):
                steps[d] = math.lcm(steps[d], int(field.stride[d]))
    return tuple(steps)


def _size_text(spatial: Sequence[int]) -> str:
    return "×".join(map(str, spatial))


def _pixels(count: int) -> str:
    return f"{count} pixel" if count == 1 else f"{count} pixels"


class _FieldMeter:
    """Measures receptive fields of one network: rows share its narrowed copy and, when
    they need the same input, one forward pass."""

    def __init__(
        self,
        network: Network,
        report: Report,
        *,
        max_pixels: int = _MAX_PIXELS,
        max_macs: int = _MAX_MACS,
    ) -> None:
        from convcalc.torch_bridge import import_torch

        self.torch = import_torch()
        self.network = network
        self.report = report
        self.spatial = tuple(network.input[1:])
        self.dims = len(self.spatial)
        self.axes = SPATIAL_NAMES.get(self.dims, tuple(f"dim {d}" for d in range(self.dims)))
        self.approximate, self.fixed = _graph_marks(report)
        # approximate rows' strides follow from those before them
        self.step = _total_stride(report, self.dims, self.approximate | self.fixed)
        self.splits = {row.path for row in report.rows if row.output_shapes}
        self.max_pixels = max_pixels
        self.max_macs = max_macs
        self._model: tuple[Network, str] | None = None
        self._analyses: dict[tuple[int, ...], tuple[Report, set[str]] | str] = {}

    def measure_last(
        self, rows: Sequence[LayerRow], attempts: int = 3
    ) -> dict[str, FieldMeasurement]:
        """The first of ``rows`` whose field can be measured, running at most ``attempts``
        of them in torch; and the first row's reason when it is not that one."""
        results: dict[str, FieldMeasurement] = {}
        for row in rows:
            reason = self._static_reason(row)
            if reason and results:
                continue  # only the first row's reason is told
            result = (
                FieldMeasurement(row.path, reason=reason)
                if reason
                else self.measure([row])[row.path]
            )
            attempts -= 0 if reason else 1
            if result.calculator is not None or not results:
                results[row.path] = result
            if result.calculator is not None or attempts == 0:
                break
        return results

    def measure(self, rows: Sequence[LayerRow]) -> dict[str, FieldMeasurement]:
        """Every row's field, or the reason it was not measured."""
        results: dict[str, FieldMeasurement] = {}
        plans: dict[str, list[int]] = {}  # path -> input size needed per dimension
        for row in rows:
            reason = self._static_reason(row)
            sizes: list[int] = []
            for d in range(self.dims):
                needed = reason or self._needed(row, d)
                if isinstance(needed, str):
                    reason = needed
                    break
                sizes.append(needed)
            if reason:
                results[row.path] = FieldMeasurement(row.path, reason=reason)
            else:
                plans[row.path] = sizes
        spans: dict[str, dict[int, tuple[tuple[int, ...], _Span]]] = {path: {} for path in plans}
        failed: dict[str, str] = {}
        tried: dict[tuple[str, int], tuple[int, ...]] = {}  # the largest input tried
        for _ in range(1 + _RETRIES):
            passes = self._passes(plans, spans, failed)
            for spatial, wanted in passes:
                for path, per_dim in self._pass(spatial, wanted).items():
                    for d, got in per_dim.items():
                        tried[path, d] = spatial
                        if isinstance(got, str):
                            failed.setdefault(path, got)
                        elif self._inside(got, spatial[d], d):
                            spans[path][d] = (spatial, got)
                        else:  # nearer the border than the calculator's field said
                            larger = self._larger(spatial[d], d)
                            if larger is None:
                                failed.setdefault(path, self._border(d, spatial))
                            plans[path][d] = larger or spatial[d]
            if not passes:
                break
        channels = self._model[1] if self._model is not None else ""
        by_path = {row.path: row for row in rows}
        for path in plans:
            if path not in failed and len(spans[path]) < self.dims:
                missing = next(d for d in range(self.dims) if d not in spans[path])
                failed[path] = self._border(missing, tried[path, missing])
            if path in failed:
                results[path] = FieldMeasurement(path, reason=failed[path], channels=channels)
            else:
                results[path] = self._result(by_path[path], spans[path], channels)
        return {row.path: results[row.path] for row in rows}

    # -- planning, with the calculator's field ----------------------------------------------

    def _static_reason(self, row: LayerRow) -> str:
        """Why the row's field is not measured, known before running anything, or ''."""
        field = row.receptive_field
        if field is None:
            return "no receptive field is tracked for it"
        if len(field.size) != self.dims or len(row.output_shape) != self.dims + 2:
            return "its output's spatial dimensions are not the input's"
        if row.path in self.approximate:
            return _APPROXIMATE
        return ""

    def _needed(self, row: LayerRow, d: int) -> int | str:
        """The smallest input size along ``d`` (the spec's, plus whole total strides) on
        which, by the calculator's field, the middle unit's field and its neighbour's lie
        inside the input with a margin of the total stride; or why there is none."""
        field = row.receptive_field
        assert field is not None
        size, stride, padding = (int(value) for value in _values(field, d))
        step, n, units = self.step[d], self.spatial[d], row.output_shape[2 + d]
        grows = row.path not in self.fixed
        axis = self.axes[d]
        while True:
            start = (units - 1) // 2 * stride - padding
            if units >= 4 and start >= step and start + size - 1 + stride <= n - 1 - step:
                return n
            if not grows:
                if units < 4:
                    return (
                        f"its output has {units} units along {axis} (the measurement needs "
                        f"4) and does not grow with the input (adaptive pooling before it)"
                    )
                return (
                    f"its field ({size} pixels along {axis}) comes within {_pixels(step)} (the "
                    f"total stride) of the input's border, and its output does not grow with "
                    f"the input (adaptive pooling before it)"
                )
            n += step
            units += step // stride
            if self._pixels(d, n) > self.max_pixels:
                return (
                    f"its field ({size} pixels along {axis}) needs an input of more than "
                    f"{self.max_pixels:,} pixels"
                )

    def _pixels(self, d: int, n: int) -> int:
        return math.prod(self._sized(d, n))

    def _sized(self, d: int, n: int) -> tuple[int, ...]:
        """The spec's input size with dimension ``d`` set to ``n``."""
        return tuple(n if i == d else size for i, size in enumerate(self.spatial))

    def _larger(self, n: int, d: int) -> int | None:
        """The next input size to try along ``d``: half as large again, in whole steps."""
        step = self.step[d]
        larger = n + max(1, -(-n // (2 * step))) * step
        return larger if self._pixels(d, larger) <= self.max_pixels else None

    def _inside(self, span: _Span, n: int, d: int) -> bool:
        margin = self.step[d]
        return span.start >= margin and span.neighbour_end <= n - 1 - margin

    def _border(self, d: int, spatial: tuple[int, ...]) -> str:
        return (
            f"its field comes within {_pixels(self.step[d])} (the total stride) of the input's "
            f"border along {self.axes[d]} on every input tried, up to {_size_text(spatial)}"
        )

    def _passes(
        self,
        plans: dict[str, list[int]],
        spans: dict[str, dict[int, tuple[tuple[int, ...], _Span]]],
        failed: dict[str, str],
    ) -> list[tuple[tuple[int, ...], dict[str, set[int]]]]:
        """The forward passes still needed: one on the spec's input size for every
        dimension that fits there, and per enlarged dimension one per size, rows that need
        no more than a third less sharing the larger input."""
        passes: dict[tuple[int, ...], dict[str, set[int]]] = {}
        enlarged: dict[int, list[tuple[int, str]]] = {}
        for path, sizes in plans.items():
            if path in failed:
                continue
            for d, n in enumerate(sizes):
                if d in spans[path]:
                    continue
                if n == self.spatial[d]:
                    passes.setdefault(self.spatial, {}).setdefault(path, set()).add(d)
                else:
                    enlarged.setdefault(d, []).append((n, path))
        for d, wanted in enlarged.items():
            wanted.sort(reverse=True)
            while wanted:
                group = passes.setdefault(self._sized(d, wanted[0][0]), {})
                n = wanted[0][0]
                while wanted and 3 * wanted[0][0] >= 2 * n:
                    group.setdefault(wanted.pop(0)[1], set()).add(d)
        return list(passes.items())

    def _result(
        self, row: LayerRow, spans: dict[int, tuple[tuple[int, ...], _Span]], channels: str
    ) -> FieldMeasurement:
        measured: list[tuple[int, int, int]] = []
        expected: list[tuple[Any, ...]] = []
        reason = ""
        for d in range(self.dims):
            spatial, span = spans[d]
            jump = span.neighbour_start - span.start
            measured.append((span.end - span.start + 1, jump, span.middle * jump - span.start))
            field = self._calculator_field(row.path, spatial)
            if isinstance(field, str):
                reason = reason or field
            elif row.path in self._analysis(spatial)[1]:
                reason = reason or (
                    f"on the {_size_text(spatial)} input it was measured on (enlarged to hold "
                    f"the field), adaptive pooling windows are uneven and the calculator's "
                    f"field is an approximation, not one unit's"
                )
            else:
                expected.append(_values(field, d))
        field = ReceptiveField(*(tuple(m[i] for m in measured) for i in range(3)))
        calculator = (
            None if reason else ReceptiveField(*(tuple(e[i] for e in expected) for i in range(3)))
        )
        sizes = tuple(spans[d][0] for d in range(self.dims))
        return FieldMeasurement(row.path, field, calculator, sizes, channels, reason)

    def _analysis(self, spatial: tuple[int, ...]) -> tuple[Report, set[str]]:
        """The (full-width) network's analysis on this input, and its approximate rows."""
        if spatial == self.spatial:
            return self.report, self.approximate
        analysis = self._analyses[spatial]
        assert not isinstance(analysis, str)
        return analysis

    def _calculator_field(self, path: str, spatial: tuple[int, ...]) -> ReceptiveField | str:
        """The calculator's field of ``path`` for the (full-width) network on this input."""
        if spatial not in self._analyses and spatial != self.spatial:
            try:
                report = analyze(_resized(self.network, list(spatial)))
                self._analyses[spatial] = (report, _graph_marks(report)[0])
            except ConvCalcError as error:
                self._analyses[spatial] = (
                    f"the enlarged input {_size_text(spatial)} is refused: {error}"
                )
        analysis = self._analyses.get(spatial)
        if isinstance(analysis, str):
            return analysis
        field = self._analysis(spatial)[0].row(path).receptive_field
        if field is None:
            return f"on the {_size_text(spatial)} input no receptive field is tracked for it"
        return field

    # -- measuring, in torch ---------------------------------------------------------------

    def _narrowed(self) -> tuple[Network, str]:
        if self._model is None:
            self._model = _narrow(self.network)
        return self._model

    def _pass(
        self, spatial: tuple[int, ...], wanted: dict[str, set[int]]
    ) -> dict[str, dict[int, _Span | str]]:
        """One forward pass on an input of this spatial size, and the backward passes that
        measure the ``wanted`` dimensions of each row's field."""
        torch = self.torch
        from convcalc.torch_bridge import build_module

        def every(reason: str) -> dict[str, dict[int, _Span | str]]:
            return {path: dict.fromkeys(dims, reason) for path, dims in wanted.items()}

        model, channels = self._narrowed()
        try:
            sized = _resized(model, list(spatial), batch_size=1)
            analysis = analyze(sized)
        except ConvCalcError as error:
            return every(f"the input {_size_text(spatial)} is refused: {error}")
        if analysis.totals.macs > self.max_macs:
            return every(
                f"on the {_size_text(spatial)} input it needs, the copy measured ({channels}) "
                f"takes {analysis.totals.macs:,} multiply-accumulates, more than the "
                f"{self.max_macs:,} allowed"
            )
        module = build_module(sized, report=analysis).double()
        with torch.no_grad():
            if _prepare(torch, module) is None:
                return every("dilated max pooling has no average-pooling stand-in to measure")
        leaves = [m for m in module.modules() if next(m.children(), None) is None]
        handles = [m.register_forward_hook(_keep_support) for m in leaves[::_SUPPORT_EVERY]]
        captured: dict[str, Any] = {}

        def capture(path: str) -> Any:
            def hook(_module: Any, _inputs: Any, output: Any) -> None:
                if path in self.splits:  # every piece: a split's field is its input's
                    captured[path] = torch.cat(output, dim=1)
                else:  # a block that also hands values on returns its output first
                    captured[path] = output[0] if isinstance(output, tuple) else output
                if len(captured) == len(wanted):
                    raise _Stop

            return hook

        handles += [module.get_submodule(p).register_forward_hook(capture(p)) for p in wanted]
        shapes = list(sized.input_shapes.values())
        x = torch.ones((1, *shapes[0]), dtype=torch.float64, requires_grad=True)
        # with several inputs, the field is measured on the first; the others are constants
        others = [torch.ones((1, *shape), dtype=torch.float64) for shape in shapes[1:]]
        try:
            with _quiet():
                module(x, *others)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        footprints: dict[tuple[int, tuple[int, ...]], list[tuple[int, int]]] = {}

        def footprint(output: Any, unit: tuple[int, ...]) -> list[tuple[int, int]]:
            """Per dimension, the first and last input pixel the unit sees (-1 for none)."""
            key = (id(output), unit)  # layers measured as identities share their input
            if key not in footprints:
                # all channels: a concat's channels come from different paths
                (grad,) = torch.autograd.grad(
                    output[(0, slice(None), *unit)].sum(), x, retain_graph=True
                )
                support = grad[0].ne(0).any(dim=0)
                footprints[key] = []
                for d in range(self.dims):
                    others = tuple(i for i in range(self.dims) if i != d)
                    line = support.any(dim=others) if others else support
                    hit = torch.nonzero(line).flatten().tolist()
                    footprints[key].append((hit[0], hit[-1]) if hit else (-1, -1))
            return footprints[key]

        out: dict[str, dict[int, _Span | str]] = {}
        for path, dims in wanted.items():
            output = captured[path]
            if not output.requires_grad:
                name = next(iter(self.network.input_shapes))
                out[path] = dict.fromkeys(dims, f"its output does not depend on the input {name!r}")
                continue
            if not torch.isfinite(output).all():
                out[path] = dict.fromkeys(dims, "its values overflow in the copy measured")
                continue
            units = tuple(output.shape[2:])
            middle = tuple((n - 1) // 2 for n in units)  # not the last unit: it may be cut
            out[path] = {}
            for d in dims:
                # the units measured must be interior: an edge unit's window can lie partly
                # on padding that earlier layers added, which no input pixel reaches
                if units[d] < 4:
                    out[path][d] = (
                        f"its output has {units[d]} units along {self.axes[d]} on the "
                        f"{_size_text(spatial)} input (the measurement needs 4)"
                    )
                    continue
                neighbour = tuple(i + 1 if j == d else i for j, i in enumerate(middle))
                (start, end), (next_start, next_end) = (
                    footprint(output, middle)[d],
                    footprint(output, neighbour)[d],
                )
                if start < 0 or next_start < 0:
                    out[path][d] = "no input pixel receives gradient from its middle unit"
                    continue
                out[path][d] = _Span(middle[d], start, end, next_start, next_end)
        return out


def _keep_support(_module: Any, _inputs: Any, output: Any) -> None:
    """A forward hook: the gradient flowing back into this output keeps only its support
    (0 or 1; every gradient is non-negative), so that no field's edge underflows however
    deep the network."""
    for piece in output if isinstance(output, tuple) else (output,):
        if getattr(piece, "requires_grad", False):
            piece.register_hook(_support)


def _support(grad: Any) -> Any:
    return None if grad is None else grad.sign()


class _Stop(Exception):
    """Raised by a forward hook once the layers of interest have produced their outputs."""


def _identity_for_receptive_field() -> set[str]:
    """torch.nn class names of the layers a measurement replaces by an identity."""
    from convcalc.layers import LEAF_CLASSES

    return {
        name for cls in LEAF_CLASSES if cls.identity_for_receptive_field for name in cls.torch_names
    }


# Layer fields holding a channel count that the narrowed copy re-infers from its input.
_INFERRED = ("in_channels", "num_features", "num_channels")
# ... or that it scales when they apply to the last dimension (channels last), else re-infers.
_GIVEN = ("in_features", "normalized_shape")


def _narrow(network: Network) -> tuple[Network, str]:
    """A copy of the network with as few channels as its spec allows: one channel
    everywhere when every split, shuffle and channels-last layer still fits, else every
    channel count divided by the largest common divisor that keeps them consistent (splits
    of fixed sizes), else the network itself. Spatial arithmetic is identical."""
    data = network.model_dump(exclude_unset=True, by_alias=True)
    counts: list[int] = []
    given = _channel_counts(data["layers"], counts)
    common = math.gcd(*counts) if counts else 1
    divisors = [d for d in range(common, 1, -1) if common % d == 0][:6]
    for divisor in [None, *divisors]:
        for scale_given in (True, False) if given else (True,):
            candidate = _with_channels(network, data, divisor, scale_given)
            if candidate is not None:
                return candidate, "1 channel" if divisor is None else f"channels / {divisor}"
    return with_overrides(network, batch_size=1), "full width"


def _channel_counts(value: Any, counts: list[int]) -> bool:
    """Collect the channel counts a spec writes (convolutions' outputs, split sizes);
    whether it gives any of the ``_GIVEN`` fields."""
    if isinstance(value, list):
        return any([_channel_counts(item, counts) for item in value])
    if not isinstance(value, dict):
        return False
    if isinstance(value.get("out_channels"), int):
        counts.append(value["out_channels"])
    sections = value.get("split_size_or_sections")
    if str(value.get("type", "")).lower() == "split" and sections is not None:
        counts.extend(sections if isinstance(sections, list) else [sections])
    given = any(key in value for key in _GIVEN)
    for key, item in value.items():
        if key != "arguments":  # a block call's arguments: already in its layers
            given = _channel_counts(item, counts) or given
    return given


def _with_channels(
    network: Network, data: dict[str, Any], divisor: int | None, scale_given: bool
) -> Network | None:
    """The network with one channel everywhere (``divisor`` None) or every channel count
    divided by ``divisor``; None when the spec does not allow it."""

    def scale(count: int) -> int:
        if divisor is None or count % divisor:
            return 1
        return count // divisor

    def shrink(value: Any) -> Any:
        if isinstance(value, list):
            return [shrink(item) for item in value]
        if not isinstance(value, dict):
            return value
        out = {key: item if key == "arguments" else shrink(item) for key, item in value.items()}
        kind = str(out.get("type", "")).lower()
        if "out_channels" in out:
            out["out_channels"] = scale(out["out_channels"])
            out["groups"] = 1
        if isinstance(out.get("out_features"), int):
            out["out_features"] = scale(out["out_features"])
        for key in _INFERRED:
            out.pop(key, None)
        for key in _GIVEN:
            count = out.pop(key, None)
            count = count[0] if isinstance(count, list) and len(count) == 1 else count
            if scale_given and isinstance(count, int):
                out[key] = scale(count)
        if kind == "groupnorm":
            out["num_groups"] = 1
        if kind == "prelu":
            out["num_parameters"] = 1
        if kind == "split":
            sections = out["split_size_or_sections"]
            out["split_size_or_sections"] = (
                [scale(s) for s in sections] if isinstance(sections, list) else scale(sections)
            )
        return out

    copy = dict(data)
    copy["layers"] = shrink(data["layers"])
    if network.inputs is not None:
        copy.pop("input", None)
        copy["inputs"] = {
            key: [scale(shape[0]), *shape[1:]] for key, shape in network.inputs.items()
        }
    else:
        copy["input"] = [scale(network.input[0]), *network.input[1:]]
    copy["batch_size"] = 1
    try:
        narrowed = build_network(copy, network.source or "<spec>")
        analyze(narrowed)
    except (ConvCalcError, ValueError):
        return None
    return narrowed


def _resized(network: Network, spatial: list[int], batch_size: int | None = None) -> Network:
    """The network on inputs of this spatial size (every input of the first one's spatial
    size; the others keep theirs)."""
    if network.inputs is None:
        return with_overrides(network, input=[network.input[0], *spatial], batch_size=batch_size)
    data = network.model_dump(exclude_unset=True, by_alias=True)
    first = list(network.input[1:])
    data["inputs"] = {
        key: [shape[0], *spatial] if list(shape[1:]) == first else shape
        for key, shape in network.inputs.items()
    }
    if batch_size is not None:
        data["batch_size"] = batch_size
    return build_network(data, network.source or "<spec>")


def _prepare(torch: Any, module: Any, identities: set[str] | None = None) -> Any:
    nn = torch.nn
    identities = _identity_for_receptive_field() if identities is None else identities
    for name, child in list(module.named_children()):
        kind = type(child).__name__
        if kind in identities:
            setattr(module, name, nn.Identity())
        elif kind.startswith("MaxPool"):
            dims = int(kind[-2])
            pool = getattr(nn, f"AvgPool{dims}d")
            if child.dilation not in (1, (1,) * dims):
                return None
            setattr(
                module,
                name,
                pool(child.kernel_size, child.stride, child.padding, ceil_mode=child.ceil_mode),
            )
        elif kind.startswith("AdaptiveMaxPool"):
            setattr(module, name, getattr(nn, kind.replace("Max", "Avg"))(child.output_size))
        elif kind in ("Add", "Mul") and type(child).__module__ == "convcalc.torch_modules":
            # a gate broadcast over the whole map is global context: the calculator
            # reports the local field, so the measurement does not follow the gate
            child.forward = functools.partial(_local_merge, kind)
        elif _prepare(torch, child, identities) is None:
            return None
    for parameter in module.parameters(recurse=False):
        parameter.requires_grad_(False)
        if parameter.dim() > 1:
            parameter.fill_(1.0 / max(1, parameter[0].numel()))
        else:
            parameter.zero_()
    return module


def _local_merge(kind: str, *inputs: Any) -> Any:
    """``add`` or ``mul`` with every operand broadcast over the spatial dimensions (a
    gate from global pooling) replaced by a constant (0 or 1) the gradient does not
    follow; a sum is averaged and a product rescaled, so that values stay near 1."""

    def spread(x: Any) -> bool:
        return x.dim() > 2 and any(n > 1 for n in x.shape[2:])

    def neutral(x: Any) -> Any:
        return x.new_zeros(x.shape) if kind == "Add" else x.new_ones(x.shape)

    wide = any(spread(x) for x in inputs)
    operands = [
        neutral(x.detach()) if wide and x.dim() > 2 and not spread(x) else x for x in inputs
    ]
    out = operands[0]
    for x in operands[1:]:
        out = out + x if kind == "Add" else out * x
    if kind == "Add":
        return out / len(operands)
    peak = out.detach().abs().amax()
    return out / peak if peak > 0 else out


# -- rendering -------------------------------------------------------------------------------

_COLUMNS = ("output shape", "trainable params", "non-trainable params", "buffers", "MACs")


def render_verify(report: VerifyReport, output_format: str = "table") -> str:
    """The verification as a table with a pass/fail mark per check, or as JSON."""
    import json

    if output_format == "json":
        return json.dumps(report.to_dict(), indent=2) + "\n"
    from tabulate import tabulate

    rows = []
    for layer in report.layers:
        marks = []
        for what in (*_COLUMNS, "receptive field"):
            check = layer.check(what)
            marks.append("" if check is None else ("ok" if check.ok else "FAIL"))
        label = layer.path if not layer.name else f"{layer.path} ({layer.name})"
        indent = "│  " * max(0, layer.depth - 2) + ("└─ " if layer.depth > 1 else "")
        rows.append([indent + label, layer.type, *marks])
    headers = ["Layer", "Type", "Shape", "Trainable", "Frozen", "Buffers", "MACs", "RF"]
    table = tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)
    totals = [
        f"{check.what}: calculator {check.calculator:,}, torch {check.torch:,}  "
        f"{'ok' if check.ok else 'FAIL'}"
        for check in report.totals
    ]
    fields = [
        f"receptive field of {layer.path}: calculator {c.calculator}, measured {c.torch}  "
        f"{'ok' if c.ok else 'FAIL'}"
        for layer in report.layers
        if (c := layer.check("receptive field")) is not None
    ]
    shape = ", ".join(map(str, report.input_shape))
    lines = [
        f"{report.name}: verified against torch on {report.device}, input [{shape}]",
        table,
        "",
    ]
    lines += totals + fields + list(report.notes)
    checked = sum(len(layer.checks) for layer in report.layers) + len(report.totals)
    failed = sum(not c.ok for layer in report.layers for c in layer.checks)
    failed += sum(not c.ok for c in report.totals)
    lines.append(
        f"{checked - failed} passed, {failed} failed" if failed else f"all {checked} checks passed"
    )
    return "\n".join(lines) + "\n"
