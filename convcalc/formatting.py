"""Turning a ``Report`` into text: a table for people, CSV and JSON for programs."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from fractions import Fraction
from typing import TYPE_CHECKING

from convcalc.receptive_field import Number, ReceptiveField
from convcalc.report import LayerRow, Report, TrainingMemory
from convcalc.units import format_seconds

if TYPE_CHECKING:
    from convcalc.cost import Estimate, LayerEstimate
    from convcalc.profiling import Profile

__all__ = ["FORMATS", "MACS_NOTE", "render"]

FORMATS = ("table", "markdown", "github", "csv", "json")

MACS_NOTE = (
    "MACs count the multiply-accumulates of conv, transposed conv and linear layers, bias "
    "excluded, as torch.utils.flop_counter.FlopCounterMode does (FLOPs = 2 × MACs)."
)

_HEADERS = ["Layer", "Type", "Output shape", "Arguments", "Params", "MACs", "Receptive field"]
_TABLE_STYLES = {"table": "simple", "markdown": "pipe", "github": "github"}


def render(
    report: Report,
    format: str = "table",
    depth: int | None = None,
    optimizer: str | None = None,
    explain: bool = False,
    traffic: bool = False,
    estimate: Estimate | None = None,
) -> str:
    """``report`` as ``table``, ``markdown``, ``github``, ``csv`` or ``json`` text;
    with ``optimizer``, the training-memory estimate for it too (not in CSV); with
    ``explain``, each layer's formulas under it (table) or in a column (markdown); with
    ``traffic``, the bytes each layer reads and writes and its FLOPs per byte (always in
    CSV and JSON); with ``estimate`` (``convcalc.cost``), each layer's estimated time."""
    if explain and not report.explained and report.network is not None:
        from convcalc.analysis import analyze  # the formulas are written only when asked for

        report = analyze(report.network, explain=True)
    memory = None if optimizer is None else report.training_memory(optimizer)
    if format == "json":
        data = report.to_dict(depth=depth)
        if memory is not None:
            data["training_memory"] = memory.to_dict()
        if estimate is not None:
            data["estimate"] = estimate.to_dict()
        return json.dumps(data, indent=2) + "\n"
    rows = visible_rows(report, depth)
    if format == "csv":
        return _csv(rows, estimate)
    if format not in _TABLE_STYLES:
        raise ValueError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    return _table(report, rows, _TABLE_STYLES[format], memory, explain, traffic, estimate)


def visible_rows(report: Report, depth: int | None) -> list[LayerRow]:
    """Rows down to ``depth`` (1 = top-level layers only); blocks keep their children's sums."""
    return [row for row in report.rows if depth is None or row.depth <= depth]


def _number(value: Number) -> str:
    return (
        str(value)
        if not isinstance(value, Fraction) or value.denominator == 1
        else f"{float(value):.4g}"
    )


def shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def field_text(field: ReceptiveField | None) -> str:
    """``11×11 (stride 4)``, or ``--`` once there is no spatial dimension left."""
    if field is None:
        return "--"
    size = "×".join(_number(v) for v in field.size)
    strides = {_number(v) for v in field.stride}
    stride = strides.pop() if len(strides) == 1 else "×".join(_number(v) for v in field.stride)
    return f"{size} (stride {stride})"


def _count(value: int) -> str:
    return f"{value:,}" if value else "--"


def _megabytes(value: int) -> str:
    """Decimal megabytes as torchinfo reports them; kilobytes below 0.1 MB."""
    if value < 100_000:
        return f"{value / 1e3:,.2f} KB"
    return f"{value / 1e6:,.2f} MB"


def _scaled(value: int) -> str:
    """``714.19 M``, ``15.47 G``: three significant figures or more."""
    for factor, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if value >= factor:
            return f"{value / factor:,.2f} {unit}"
    return str(value)


def _explanation_indent(row: LayerRow) -> str:
    return " " * (3 * max(0, row.depth - 1) + 4)


def _label(row: LayerRow, indent: str = "│  ") -> str:
    """The path (and name), indented as a tree; tabulate would strip plain spaces."""
    prefix = "" if row.depth <= 1 else indent * (row.depth - 2) + "└─ "
    return prefix + row.label


def _field_covers_input(report: Report) -> list[tuple[str, str]]:
    """The totals line naming the first layer that sees the whole input, if any."""
    path = report.totals.field_covers_input_path
    if path is None:
        return []
    row = report.row(path)
    assert row.receptive_field is not None
    size = "×".join(f"{float(r):g}" for r in row.receptive_field.size)
    given = "×".join(map(str, report.input_shape[2:]))
    return [("Whole-input field", f"from {row.label} (field {size} > input {given})")]


def _bytes(value: int) -> str:
    return _megabytes(value) if value else "--"


def _traffic_lines(report: Report) -> list[tuple[str, str]]:
    totals = report.totals
    intensity = totals.arithmetic_intensity
    return [
        (
            "Memory traffic",
            f"{_megabytes(totals.bytes_read + totals.bytes_written)} (read "
            f"{_megabytes(totals.bytes_read)}, written {_megabytes(totals.bytes_written)}"
            + (f"; {intensity:,.1f} FLOP/B)" if intensity else ")"),
        )
    ]


def estimate_lines(estimate: Estimate) -> list[tuple[str, str]]:
    """(label, value) lines of a roofline estimate: the total and the dominant layers."""
    total = estimate.seconds
    memory = sum(layer.seconds for layer in estimate.layers if layer.bound == "memory")
    dominant = ", ".join(
        f"{layer.label} {100 * layer.seconds / total:.0f}%" for layer in estimate.dominant(3)
    )
    profile = estimate.profile
    return [
        (
            "Estimated time",
            f"{format_seconds(total)} on {profile.name} at {estimate.dtype} "
            f"({estimate.throughput:,.0f} samples/s; {100 * memory / total:.0f}% memory-bound)",
        ),
        ("  dominated by", dominant),
    ]


def training_memory_lines(memory: TrainingMemory) -> list[tuple[str, str]]:
    """(label, value) lines of the training-memory estimate."""
    return [
        (
            f"Training memory ({memory.optimizer})",
            f"{_megabytes(memory.total)} at batch {memory.batch_size}",
        ),
        (
            "  made of",
            f"weights {_megabytes(memory.weights)}, gradients {_megabytes(memory.gradients)}, "
            f"optimizer state {_megabytes(memory.optimizer_state)}, activations saved for "
            f"backward {_megabytes(memory.activations)}",
        ),
    ]


def _table(
    report: Report,
    rows: list[LayerRow],
    style: str,
    memory: TrainingMemory | None,
    explain: bool = False,
    traffic: bool = False,
    estimate: Estimate | None = None,
) -> str:
    from tabulate import tabulate  # only the table formats need it

    body = [
        [
            _label(row),
            row.type,
            shape_text(row.output_shape),
            row.arguments,
            _count(row.params),
            _count(row.macs),
            field_text(row.receptive_field),
        ]
        for row in rows
    ]
    headers = list(_HEADERS)
    align = ["left", "left", "left", "left", "right", "right", "left"]
    if traffic:
        headers += ["Read", "Written", "FLOP/B"]
        align += ["right", "right", "right"]
        for line, row in zip(body, rows):
            intensity = row.arithmetic_intensity
            line += [
                _bytes(row.bytes_read),
                _bytes(row.bytes_written),
                "--" if not intensity else f"{intensity:,.1f}",
            ]
    if estimate is not None:
        headers += ["Est. time", "Bound"]
        align += ["right", "left"]
        leaves = {layer.path: layer for layer in estimate.layers}
        for line, row in zip(body, rows):
            seconds = estimate.block_seconds(row) if row.is_block else leaves[row.path].seconds
            bound = "" if row.is_block else leaves[row.path].bound
            line += [format_seconds(seconds), bound]
    if explain and style != "simple":  # markdown: the formulas in a column
        headers.append("Formulas")
        align.append("left")
        for line, row in zip(body, rows):
            line.append("<br>".join(row.explanation))
    table = tabulate(
        body,
        headers=headers,
        tablefmt=style,
        colalign=align,
        disable_numparse=True,
    )
    if explain and style == "simple":  # the formulas under each layer's line
        lines = table.splitlines()
        table = "\n".join(
            lines[:2]
            + [
                text
                for line, row in zip(lines[2:], rows)
                for text in [line, *(_explanation_indent(row) + e for e in row.explanation)]
            ]
        )
    totals = report.totals
    largest = ""
    if totals.largest_activation_path:
        row = report.row(totals.largest_activation_path)
        largest = f" (largest: {_label(row, '')}, {_megabytes(totals.largest_activation_bytes)})"
    summary = [
        ("Total params", f"{totals.params:,}"),
        ("Trainable params", f"{totals.trainable_params:,}"),
        ("Non-trainable params", f"{totals.non_trainable_params:,}"),
        ("Buffer elements", f"{totals.buffers:,}"),
        ("MACs", f"{totals.macs:,} ({_scaled(totals.macs)}MACs, {_scaled(totals.flops)}FLOPs)"),
        ("Input size", _megabytes(totals.input_bytes)),
        ("Params size", _megabytes(totals.param_bytes)),
        ("Activations size", _megabytes(totals.activation_bytes) + largest),
        *_field_covers_input(report),
        *(
            [("Output shape", shape_text(report.output_shape))]
            if len(report.outputs) <= 1
            else [(f"Output {key}", shape_text(shape)) for key, shape in report.outputs.items()]
        ),
    ]
    if traffic or estimate is not None:
        summary += _traffic_lines(report)
    if estimate is not None:
        summary += estimate_lines(estimate)
    if memory is not None:
        summary += training_memory_lines(memory)
    inputs = (
        f"input {shape_text(report.input_shape)}"
        if len(report.input_shapes) <= 1
        else "inputs " + ", ".join(f"{k} {shape_text(v)}" for k, v in report.input_shapes.items())
    )
    title = f"{report.name}: {inputs}, {report.dtype}"
    if style == "simple":
        width = max(len(line) for line in table.splitlines())
        rule = "=" * width
        lines = [title, rule, table, rule]
        label_width = max(len(label) for label, _ in summary) + 2
        lines += [f"{label + ':':<{label_width}}{value}" for label, value in summary]
        lines += [rule, *textwrap.wrap(MACS_NOTE, width=max(60, min(width, 100)))]
        if report.warnings:
            lines += ["", "Warnings:"] + [f"  {warning}" for warning in report.warnings]
        return "\n".join(lines) + "\n"
    lines = [
        f"**{title}**",
        "",
        table,
        "",
        tabulate(summary, ["Total", "Value"], tablefmt=style, disable_numparse=True),
        "",
        f"_{MACS_NOTE}_",
    ]
    if report.warnings:
        lines += ["", "**Warnings**", ""] + [f"- `{w.path}`: {w.message}" for w in report.warnings]
    return "\n".join(lines) + "\n"


_CSV_COLUMNS = [
    "path",
    "name",
    "type",
    "depth",
    "input_shape",
    "output_shape",
    "arguments",
    "params",
    "trainable_params",
    "buffers",
    "macs",
    "output_bytes",
    "saved_bytes",
    "rf_size",
    "rf_stride",
    "rf_padding",
    "bytes_read",
    "bytes_written",
    "arithmetic_intensity",
]


def _csv_estimate(
    row: LayerRow, estimate: Estimate | None, leaves: dict[str, LayerEstimate]
) -> list[str]:
    if estimate is None:
        return []
    if row.is_block:
        return [f"{estimate.block_seconds(row) * 1e3:.6g}", ""]
    layer = leaves[row.path]
    return [f"{layer.seconds * 1e3:.6g}", layer.bound]


def _csv(rows: list[LayerRow], estimate: Estimate | None = None) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS + (["estimated_ms", "bound"] if estimate else []))
    leaves = {layer.path: layer for layer in estimate.layers} if estimate else {}
    for row in rows:
        field = row.receptive_field
        rf = ["", "", ""]
        if field is not None:
            rf = [
                "x".join(_number(v) for v in values)
                for values in (field.size, field.stride, field.padding)
            ]
        writer.writerow(
            [
                row.path,
                row.name or "",
                row.type,
                row.depth,
                "x".join(map(str, row.input_shape)),
                "x".join(map(str, row.output_shape)),
                row.arguments,
                row.params,
                row.trainable_params,
                row.buffers,
                row.macs,
                row.output_bytes,
                row.saved_bytes,
                *rf,
                row.bytes_read,
                row.bytes_written,
                "" if row.arithmetic_intensity is None else f"{row.arithmetic_intensity:.4g}",
                *_csv_estimate(row, estimate, leaves),
            ]
        )
    return out.getvalue()


def profile_table(result: Profile) -> str:
    """``convcalc profile``'s table: each layer's estimated and measured time, then the
    whole network's."""
    from tabulate import tabulate

    def time(seconds: float | None) -> str:
        return "--" if seconds is None else format_seconds(seconds)

    body = [
        [
            layer.path if not layer.name else f"{layer.path} ({layer.name})",
            layer.type,
            time(layer.estimated),
            time(layer.measured),
            "--" if layer.ratio is None else f"{layer.ratio:.2f}",
        ]
        for layer in result.layers
    ]
    headers = ["Layer", "Type", "Estimated", "Measured", "Ratio"]
    table = tabulate(
        body, headers, colalign=("left", "left", "right", "right", "right"), disable_numparse=True
    )
    width = max(len(line) for line in table.splitlines())
    rule = "=" * width
    report = result.report
    title = (
        f"{report.name}: input {shape_text(report.input_shape)}, {report.dtype}, "
        f"{result.device} ({result.threads} threads), median of {result.runs} runs"
    )
    estimated = result.estimated
    lines = [title, rule, table, rule]
    summary = [
        ("Measured", f"{format_seconds(result.measured)} ({result.throughput:,.1f} samples/s)")
    ]
    if estimated is not None and result.estimate is not None:
        summary += [
            (
                "Estimated",
                f"{format_seconds(estimated)} on {result.estimate.profile.name} "
                f"(measured / estimated = {result.measured / estimated:.2f})",
            ),
            ("Rank correlation", f"{result.rank_correlation:.2f} (Spearman, layer times)"),
        ]
    else:
        summary.append(("Estimated", "-- (give --device-profile, or run `convcalc calibrate`)"))
    label_width = max(len(label) for label, _ in summary) + 2
    lines += [f"{label + ':':<{label_width}}{value}" for label, value in summary]
    note = (
        "Layer times come from forward hooks; the total is a separate run without them. A "
        "block's join (+, cat) has no layer time of its own."
    )
    lines += [rule, *textwrap.wrap(note, width=max(60, min(width, 100)))]
    return "\n".join(lines) + "\n"
