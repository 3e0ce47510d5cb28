"""Two specs side by side: what a change costs, in total and per top-level block."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from convcalc.analysis import analyze
from convcalc.formatting import field_text, shape_text
from convcalc.receptive_field import ReceptiveField
from convcalc.report import LayerRow, Report
from convcalc.spec import Network

__all__ = ["Comparison", "compare"]

Spec = str | os.PathLike[str] | Mapping[str, Any] | Network

# (label, how to read it off a report, unit)
_TOTALS: list[tuple[str, str, str]] = [
    ("Params", "params", ""),
    ("Trainable params", "trainable_params", ""),
    ("MACs", "macs", ""),
    ("Parameter memory", "param_bytes", "MB"),
    ("Activation memory", "activation_bytes", "MB"),
]


@dataclass(frozen=True)
class Comparison:
    a: Report
    b: Report
    a_label: str
    b_label: str

    @property
    def totals(self) -> list[tuple[str, int, int]]:
        """(label, A, B) for each total."""
        return [
            (label, getattr(self.a.totals, field), getattr(self.b.totals, field))
            for label, field, _ in _TOTALS
        ]

    def blocks(self) -> list[tuple[str, LayerRow | None, LayerRow | None]]:
        """Top-level rows paired by name (when both have one) or else by path."""
        a_rows = [row for row in self.a.rows if row.depth == 1]
        b_rows = [row for row in self.b.rows if row.depth == 1]
        b_by_key = {_key(row): row for row in b_rows}
        pairs: list[tuple[str, LayerRow | None, LayerRow | None]] = []
        used: set[str] = set()
        for row in a_rows:
            other = b_by_key.get(_key(row))
            if other is not None:
                used.add(_key(row))
            pairs.append((row.label, row, other))
        pairs += [(row.label, None, row) for row in b_rows if _key(row) not in used]
        return pairs

    def to_dict(self) -> dict[str, Any]:
        def side(row: LayerRow | None) -> dict[str, Any] | None:
            if row is None:
                return None
            return {
                "path": row.path,
                "type": row.type,
                "output_shape": list(row.output_shape),
                "params": row.params,
                "macs": row.macs,
            }

        return {
            "a": {"label": self.a_label, "name": self.a.name},
            "b": {"label": self.b_label, "name": self.b.name},
            "totals": {
                field: {
                    "a": a,
                    "b": b,
                    "delta": b - a,
                    "relative": None if a == 0 else (b - a) / a,
                }
                for (label, a, b), (_, field, _) in zip(self.totals, _TOTALS)
            },
            "receptive_field": {
                "a": _field_dict(final_field(self.a)),
                "b": _field_dict(final_field(self.b)),
            },
            "output_shape": {"a": list(self.a.output_shape), "b": list(self.b.output_shape)},
            "blocks": [
                {"block": label, "a": side(a), "b": side(b)} for label, a, b in self.blocks()
            ],
        }

    def render(self, format: str = "table") -> str:
        """``table``, ``markdown`` or ``json``."""
        if format == "json":
            return json.dumps(self.to_dict(), indent=2) + "\n"
        from tabulate import tabulate

        style = "pipe" if format == "markdown" else "simple"
        a, b = self.a_label, self.b_label
        rows = [
            [label, _amount(x, unit), _amount(y, unit), _delta(x, y, unit), _relative(x, y)]
            for (label, x, y), (_, _, unit) in zip(self.totals, _TOTALS)
        ]
        rows.append(
            [
                "Final receptive field",
                field_text(final_field(self.a)),
                field_text(final_field(self.b)),
                "",
                "",
            ]
        )
        rows.append(
            [
                "Output shape",
                shape_text(self.a.output_shape),
                shape_text(self.b.output_shape),
                "",
                "",
            ]
        )
        totals = tabulate(
            rows,
            ["Total", f"A: {a}", f"B: {b}", "B − A", "change"],
            tablefmt=style,
            colalign=("left", "right", "right", "right", "right"),
            disable_numparse=True,
        )
        block_rows = []
        for label, x, y in self.blocks():
            block_rows.append(
                [
                    label,
                    _shape(x),
                    _shape(y),
                    _amount(x.params if x else None),
                    _amount(y.params if y else None),
                    _delta(x.params if x else 0, y.params if y else 0),
                    _amount(x.macs if x else None),
                    _amount(y.macs if y else None),
                    _delta(x.macs if x else 0, y.macs if y else 0),
                ]
            )
        blocks = tabulate(
            block_rows,
            [
                "Top-level layer",
                "A output",
                "B output",
                "A params",
                "B params",
                "Δ params",
                "A MACs",
                "B MACs",
                "Δ MACs",
            ],
            tablefmt=style,
            colalign=("left", "left", "left", *["right"] * 6),
            disable_numparse=True,
        )
        heading = "**{}**" if format == "markdown" else "{}"
        return (
            heading.format(f"A: {a} ({self.a.name}), B: {b} ({self.b.name})")
            + f"\n\n{totals}\n\n{blocks}\n"
        )


def compare(
    a: Spec,
    b: Spec,
    *,
    input: Sequence[int] | None = None,
    batch_size: int | None = None,
    dtype: str | None = None,
) -> Comparison:
    """Analyse both specs (with the same overrides) and pair their numbers."""
    reports = [analyze(s, input=input, batch_size=batch_size, dtype=dtype) for s in (a, b)]
    labels = [_spec_label(s, r) for s, r in zip((a, b), reports)]
    return Comparison(reports[0], reports[1], labels[0], labels[1])


def final_field(report: Report) -> ReceptiveField | None:
    """The receptive field of the last top-level feature map larger than one pixel (after
    global pooling every unit sees the whole padded input), or of the last one at all."""
    fields = [row for row in report.rows if row.depth == 1 and row.receptive_field is not None]
    for row in reversed(fields):
        if any(n > 1 for n in row.output_shape[2:]):
            return row.receptive_field
    return fields[-1].receptive_field if fields else None


def _field_dict(field: ReceptiveField | None) -> dict[str, Any] | None:
    return None if field is None else field.to_dict()


def _spec_label(spec: Spec, report: Report) -> str:
    if isinstance(spec, (str, os.PathLike)) and report.source:
        return str(report.source)
    return report.name


def _key(row: LayerRow) -> str:
    """Named layers pair by name; others by path and type."""
    return f"name:{row.name}" if row.name else f"path:{row.path}:{row.type}"


def _shape(row: LayerRow | None) -> str:
    return "--" if row is None else shape_text(row.output_shape)


def _amount(value: int | None, unit: str = "") -> str:
    if value is None:
        return "--"
    return f"{value / 1e6:,.2f} MB" if unit == "MB" else f"{value:,}"


def _delta(a: int, b: int, unit: str = "") -> str:
    change = b - a
    if unit == "MB":
        return f"{change / 1e6:+,.2f} MB"
    return f"{change:+,}" if change else "0"


def _relative(a: int, b: int) -> str:
    if a == 0:
        return "--" if b == 0 else "new"
    return f"{(b - a) / a:+.1%}"
