"""Two specs side by side: what a change costs, in total and layer by layer.

Layers pair structurally, so two specs that nest the same layers differently (AlexNet
in one flat list, or in ``features`` and ``classifier`` blocks) still line up:

1. a layer pairs with the layer of the same name (names used once in their spec), or,
   unnamed, with the one at the same place under the same named block (``layer1.0.body.3``)
   and of the same type;
2. between those pairs, the remaining layers are aligned by order and type (and role: a
   residual body's layer does not pair with a shortcut's), by a longest common
   subsequence, as ``diff`` aligns lines; what is left is shown on its own side only.

``depth`` cuts the tree as ``convcalc shape --depth`` does (1 = top level): a block at
that depth is one row with its sums, so each side's rows add up to its totals.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from convcalc.analysis import analyze
from convcalc.formatting import field_text, shape_text
from convcalc.receptive_field import ReceptiveField
from convcalc.report import LayerRow, Report
from convcalc.spec import Network

__all__ = ["Comparison", "compare"]

Spec = str | os.PathLike[str] | Mapping[str, Any] | Network
Pair = tuple[LayerRow | None, LayerRow | None]

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

    def pairs(self, depth: int | None = None) -> list[Pair]:
        """(A row, B row) in order, one of them ``None`` when a layer has no counterpart:
        every layer (``depth=None``), or the rows down to ``depth`` with deeper blocks as
        one row each."""
        a_rows, b_rows = _visible(self.a, depth), _visible(self.b, depth)
        pairs: list[Pair] = []
        a_left: list[LayerRow] = []  # rows between two pairs, aligned by kind
        b_left: list[LayerRow] = []
        for i, j in _common_subsequence(_keys(self.a, a_rows), _keys(self.b, b_rows)):
            if i is not None and j is not None:
                pairs += _align_kinds(a_left, b_left)
                a_left, b_left = [], []
                pairs.append((a_rows[i], b_rows[j]))
            elif i is not None:
                a_left.append(a_rows[i])
            elif j is not None:
                b_left.append(b_rows[j])
        return pairs + _align_kinds(a_left, b_left)

    def to_dict(self, depth: int | None = None) -> dict[str, Any]:
        def side(row: LayerRow | None) -> dict[str, Any] | None:
            if row is None:
                return None
            return {
                "path": row.path,
                "name": row.name,
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
            "depth": depth,
            "layers": [{"a": side(a), "b": side(b)} for a, b in self.pairs(depth)],
        }

    def render(self, format: str = "table", depth: int | None = None) -> str:
        """``table``, ``markdown`` or ``json``; ``depth`` as in :meth:`pairs`."""
        if format == "json":
            return json.dumps(self.to_dict(depth), indent=2) + "\n"
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
        layer_rows = []
        for x, y in self.pairs(depth):
            layer_rows.append(
                [
                    "--" if x is None else x.label,
                    "--" if y is None else y.label,
                    _type(x, y),
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
        layers = tabulate(
            layer_rows,
            [
                "A layer",
                "B layer",
                "Type",
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
            colalign=(*["left"] * 5, *["right"] * 6),
            disable_numparse=True,
        )
        heading = "**{}**" if format == "markdown" else "{}"
        return (
            heading.format(f"A: {a} ({self.a.name}), B: {b} ({self.b.name})")
            + f"\n\n{totals}\n\n{layers}\n"
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


def _visible(report: Report, depth: int | None) -> list[LayerRow]:
    """The layers down to ``depth`` and the blocks at ``depth``: each layer once."""
    return [
        row
        for row in report.rows
        if (not row.is_block and (depth is None or row.depth <= depth))
        or (row.is_block and row.depth == depth)
    ]


def _keys(report: Report, rows: Sequence[LayerRow]) -> list[Hashable]:
    """What pairs a row first: its name if no other layer has it; else its place under
    the nearest block with such a name (``layer1.0.body.3``), or its path, and its type."""
    counts = Counter(row.name for row in report.rows if row.name)
    unique = {row.path: row.name for row in report.rows if row.name and counts[row.name] == 1}
    keys: list[Hashable] = []
    for row in rows:
        if row.path in unique:
            keys.append(("name", row.name))
            continue
        place = row.path
        ancestor = row.path
        while "." in ancestor:
            ancestor = ancestor.rsplit(".", 1)[0]
            if ancestor in unique:
                place = f"{unique[ancestor]}{row.path[len(ancestor) :]}"
                break
        keys.append(("place", place, row.type))
    return keys


def _align_kinds(a_rows: Sequence[LayerRow], b_rows: Sequence[LayerRow]) -> list[Pair]:
    """Rows that did not pair by name or place, aligned by order and kind."""
    return [
        (None if i is None else a_rows[i], None if j is None else b_rows[j])
        for i, j in _common_subsequence(_kinds(a_rows), _kinds(b_rows))
    ]


def _common_subsequence(
    a: Sequence[Hashable], b: Sequence[Hashable]
) -> list[tuple[int | None, int | None]]:
    """A longest common subsequence of ``a`` and ``b`` as index pairs ``(i, j)``, in
    order, with the items it leaves out as ``(i, None)`` and ``(None, j)``; among equally
    long ones, items pair as early as they can, and A's left-outs come before B's.

    >>> _common_subsequence(["conv", "relu", "pool"], ["conv", "bn", "relu", "pool"])
    [(0, 0), (None, 1), (1, 2), (2, 3)]
    >>> _common_subsequence(["relu", "conv"], ["conv", "relu"])
    [(0, None), (1, 0), (None, 1)]
    """
    n, m = len(a), len(b)
    # longest[i][j]: the length of a longest common subsequence of a[i:] and b[j:]
    longest = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, below = longest[i], longest[i + 1]
        for j in range(m - 1, -1, -1):
            row[j] = below[j + 1] + 1 if a[i] == b[j] else max(below[j], row[j + 1])
    steps: list[tuple[int | None, int | None]] = []
    i = j = 0
    while i < n and j < m:
        if a[i] == b[j]:  # pairing equal items first never shortens the subsequence
            steps.append((i, j))
            i, j = i + 1, j + 1
        elif longest[i + 1][j] >= longest[i][j + 1]:
            steps.append((i, None))
            i += 1
        else:
            steps.append((None, j))
            j += 1
    return steps + [(k, None) for k in range(i, n)] + [(None, k) for k in range(j, m)]


def _kinds(rows: Sequence[LayerRow]) -> list[Hashable]:
    """Each row's type and the named parts of its path (``body``, ``shortcut``): a layer
    in a residual body does not pair with one in a shortcut."""
    return [
        (row.type, *(part for part in row.path.split(".") if not part.isdigit())) for row in rows
    ]


def _type(a: LayerRow | None, b: LayerRow | None) -> str:
    types = dict.fromkeys(row.type for row in (a, b) if row is not None)
    return " → ".join(types)


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
