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
from typing import Any

from convcalc.analysis import analyze
from convcalc.errors import ConvCalcError
from convcalc.loader import build_network, load_spec, with_overrides
from convcalc.receptive_field import ReceptiveField
from convcalc.report import LayerRow, Report
from convcalc.spec import Network

__all__ = ["Check", "LayerCheck", "VerifyReport", "measure_receptive_field", "verify"]


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
    field_checks = {}
    # Without --all: the last spatial layer whose field can be measured, skipping adaptive
    # pooling, whose windows change when the input is enlarged for measuring.
    last_first = [row for row in reversed(spatial_rows) if not row.type.startswith("adaptive")]
    for row in spatial_rows if every_field else last_first:
        check, note = _field_check(network, report, row)
        if check is not None:
            field_checks[row.path] = check
            if not every_field:
                break
        elif every_field:
            notes.append(f"{row.path}: {note}")
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


def _field_check(network: Network, report: Report, row: LayerRow) -> tuple[Check | None, str]:
    field = row.receptive_field
    assert field is not None
    if _fractional(field):
        return None, "receptive field not measured: fractional strides (upsampling)"
    measured = measure_receptive_field(network, row.path)
    if measured is None:
        return None, "receptive field not measured: larger than any input tried"
    size, computed = measured
    if size != list(report.input_shape[2:]):
        # measured on a larger input: compare with the calculator at that size
        larger = _resized(network, size)
        field = analyze(larger).row(row.path).receptive_field
        assert field is not None
        if _fractional(field):
            return None, (
                "receptive field not measured: the input had to be enlarged and then "
                "adaptive pooling windows are uneven"
            )
    return Check("receptive field", field.to_dict(), computed.to_dict()), ""


def _fractional(field: ReceptiveField) -> bool:
    return any(
        getattr(v, "denominator", 1) != 1 for v in (*field.size, *field.stride, *field.padding)
    )


# -- measuring receptive fields ------------------------------------------------------------


def _identity_for_receptive_field() -> set[str]:
    """torch.nn class names of the layers a measurement replaces by an identity."""
    from convcalc.layers import LEAF_CLASSES

    return {
        name for cls in LEAF_CLASSES if cls.identity_for_receptive_field for name in cls.torch_names
    }


class _Stop(Exception):
    """Raised by a forward hook once the layer of interest has produced its output."""


def _narrow(network: Network) -> Network | None:
    """The same network with one channel everywhere: identical spatial arithmetic, tiny."""

    def shrink(value: Any) -> Any:
        if isinstance(value, list):
            return [shrink(item) for item in value]
        if not isinstance(value, dict):
            return value
        out = {key: shrink(item) for key, item in value.items()}
        if "out_channels" in out:
            out["out_channels"] = 1
            out["groups"] = 1
            out.pop("in_channels", None)
        for key in ("num_features", "num_channels", "normalized_shape"):
            out.pop(key, None)
        if out.get("type") == "groupnorm":
            out["num_groups"] = 1
        return out

    data = network.model_dump(exclude_unset=True, by_alias=True)
    data["layers"] = shrink(data["layers"])
    if network.inputs is not None:
        data.pop("input", None)
        data["inputs"] = {key: [1, *shape[1:]] for key, shape in network.inputs.items()}
    else:
        data["input"] = [1, *network.input[1:]]
    data["batch_size"] = 1
    try:
        narrowed = Network.model_validate(data)
        analyze(narrowed)
    except (ConvCalcError, ValueError):
        return None
    return narrowed


def _resized(network: Network, spatial: list[int], batch_size: int | None = None) -> Network:
    """The network on inputs of this spatial size (every input of the same rank)."""
    if network.inputs is None:
        return with_overrides(network, input=[network.input[0], *spatial], batch_size=batch_size)
    data = network.model_dump(exclude_unset=True, by_alias=True)
    data["inputs"] = {
        key: [shape[0], *spatial] if len(shape) == len(network.input) else shape
        for key, shape in network.inputs.items()
    }
    if batch_size is not None:
        data["batch_size"] = batch_size
    return build_network(data, network.source or "<spec>")


def measure_receptive_field(
    network: Network, path: str, *, max_pixels: int = 1 << 22
) -> tuple[list[int], ReceptiveField] | None:
    """Measure the receptive field of the layer at ``path`` by back-propagation.

    A copy of the network with one channel, constant positive weights, no bias,
    pointwise layers (activations, normalisation, dropout) as identities and max
    pooling as average pooling is run on an input of ones; one output unit in the
    middle, and its neighbours along each dimension, are back-propagated, and the
    input pixels with non-zero gradient give the size, the effective stride and the
    effective padding. When the middle unit's field reaches the input's border the
    input grows by half, up to ``max_pixels``, and a field is accepted once two input
    sizes give the same one. Returns the input size used and the field,
    or ``None`` when it could not be measured.
    """
    from convcalc.torch_bridge import build_module, import_torch

    torch = import_torch()
    candidate = _narrow(network) or network.model_copy()
    spatial = list(candidate.input[1:])
    previous: tuple[list[int], ReceptiveField] | None = None
    while math.prod(spatial) <= max_pixels:
        try:
            sized = _resized(candidate, spatial, batch_size=1)
            module = build_module(sized)  # analyses the spec: refuses sizes that do not fit
        except ConvCalcError:
            return None
        result = _measure_once(torch, module, sized, path)
        if result is not None:
            # Trust a field only when a 1.5× input gives the same one: a window cut
            # short at some layer's edge (ceil_mode) does not show at the input's border.
            if previous is not None and previous[1] == result:
                return previous
            previous = (spatial, result)
        spatial = [n + (n + 1) // 2 for n in spatial]
    return None


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
    gate from global pooling) detached from the gradient."""

    def spread(x: Any) -> bool:
        return x.dim() > 2 and any(n > 1 for n in x.shape[2:])

    wide = any(spread(x) for x in inputs)
    operands = [x.detach() if wide and x.dim() > 2 and not spread(x) else x for x in inputs]
    out = operands[0]
    for x in operands[1:]:
        out = out + x if kind == "Add" else out * x
    return out


def _measure_once(torch: Any, module: Any, network: Network, path: str) -> ReceptiveField | None:
    module = module.double()
    with torch.no_grad():
        if _prepare(torch, module) is None:
            return None
    captured: dict[str, Any] = {}

    def stop(_module: Any, _inputs: Any, output: Any) -> None:
        captured["output"] = output
        raise _Stop

    handle = module.get_submodule(path).register_forward_hook(stop)
    shape = (1, *network.input)
    x = torch.ones(shape, dtype=torch.float64, requires_grad=True)
    # with several inputs, the field is measured on the first; the others are constants
    others = [
        torch.ones((1, *sample), dtype=torch.float64)
        for sample in list(network.input_shapes.values())[1:]
    ]
    try:
        with _quiet():
            module(x, *others)
    except _Stop:
        pass
    finally:
        handle.remove()
    output = captured["output"]
    if isinstance(output, tuple):  # a split's first piece, or a block's own output
        output = output[0]
    if not output.requires_grad:  # it does not depend on the (first) input
        return None
    out_spatial = list(output.shape[2:])
    dims = len(out_spatial)
    middle = [(n - 1) // 2 for n in out_spatial]  # not the last unit: its window may be cut

    def footprint(unit: list[int]) -> list[tuple[int, int]]:
        x.grad = None
        # all channels: a concat's channels come from different paths
        output[(0, slice(None), *unit)].sum().backward(retain_graph=True)
        grad = x.grad[0].abs().sum(dim=0)
        spans = []
        for d in range(dims):
            other = tuple(i for i in range(dims) if i != d)
            line = grad.sum(dim=other) if other else grad
            hit = torch.nonzero(line > 0).flatten().tolist()
            if not hit:
                return []
            spans.append((hit[0], hit[-1]))
        return spans

    centre = footprint(middle)
    if not centre:
        return None
    sides = network.input[1:]
    if any(start == 0 or end == n - 1 for (start, end), n in zip(centre, sides)):
        return None  # touches the border: possibly clipped, try a larger input
    size, stride, padding = [], [], []
    for d in range(dims):
        if out_spatial[d] < 4:
            # the units measured must be interior: an edge unit's window can lie partly on
            # padding that earlier layers added, which no input pixel reaches
            return None
        neighbour = list(middle)
        neighbour[d] += 1 if middle[d] + 1 < out_spatial[d] else -1
        step = neighbour[d] - middle[d]
        spans = footprint(neighbour)
        if not spans:
            return None
        jump = (spans[d][0] - centre[d][0]) * step
        size.append(centre[d][1] - centre[d][0] + 1)
        stride.append(jump)
        padding.append(middle[d] * jump - centre[d][0])
    return ReceptiveField(tuple(size), tuple(stride), tuple(padding))


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
