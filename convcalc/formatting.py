"""Turning a ``Report`` into text: a table for people, CSV and JSON for programs."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from fractions import Fraction

from convcalc.receptive_field import Number, ReceptiveField
from convcalc.report import LayerRow, Report, TrainingMemory

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
) -> str:
    """``report`` as ``table``, ``markdown``, ``github``, ``csv`` or ``json`` text;
    with ``optimizer``, the training-memory estimate for it too (not in CSV); with
    ``explain``, each layer's formulas under it (table) or in a column (markdown)."""
    if explain and not report.explained and report.network is not None:
        from convcalc.analysis import analyze  # the formulas are written only when asked for

        report = analyze(report.network, explain=True)
    memory = None if optimizer is None else report.training_memory(optimizer)
    if format == "json":
        data = report.to_dict(depth=depth)
        if memory is not None:
            data["training_memory"] = memory.to_dict()
        return json.dumps(data, indent=2) + "\n"
    rows = visible_rows(report, depth)
    if format == "csv":
        return _csv(rows)
    if format not in _TABLE_STYLES:
        raise ValueError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    return _table(report, rows, _TABLE_STYLES[format], memory, explain)


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
        *(
            [("Output shape", shape_text(report.output_shape))]
            if len(report.outputs) <= 1
            else [(f"Output {key}", shape_text(shape)) for key, shape in report.outputs.items()]
        ),
    ]
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
]


def _csv(rows: list[LayerRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
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
            ]
        )
    return out.getvalue()
