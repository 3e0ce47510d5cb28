"""A picture of the network, the one people draw by hand for AlexNet and VGG.

Each layer's output is a box: its height follows the spatial size, its thickness the
channels (both on a log scale), its slant the width. Shape-keeping layers without
their own geometry (activations, normalisation, dropout) are folded into the box
before them. Residual blocks are drawn as a body and a shortcut (or a bypass arrow)
meeting at ⊕, concat blocks as parallel branches meeting at ©. Below each box: the
layer, its output shape, parameters and receptive field.

Plain SVG (and an HTML page around it with the per-layer table), made with nothing but
the standard library; the HTML needs no network access and runs no script.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from convcalc.analysis import analyze
from convcalc.formatting import MACS_NOTE, field_text, shape_text
from convcalc.layers import Leaf
from convcalc.loader import load_spec, with_overrides
from convcalc.report import LayerRow, Report
from convcalc.spec import Block, LayerSpec, Network

__all__ = ["draw", "html_table", "svg_picture"]

Spec = str | os.PathLike[str] | Mapping[str, Any] | Network

COLOURS = {
    "conv": "#7aa6d6",
    "convtranspose": "#a08fd9",
    "maxpool": "#e8a35e",
    "avgpool": "#e8a35e",
    "adaptive": "#e6c35c",
    "linear": "#7cc08a",
    "flatten": "#c2c2c2",
    "upsample": "#c98ad6",
    "zeropad": "#d0d0d0",
    "input": "#eeeeee",
    "block": "#dde6f0",
}
FONT = 10  # px; labels are 12 px apart
CHAR = 5.8  # px per character of a label, roughly, for sizing boxes
GAP = 20  # px between items
NODE = 9  # radius of the ⊕ and © nodes


def draw(
    spec: Spec,
    *,
    format: str = "svg",
    depth: int | None = None,
    input: Sequence[int] | None = None,
    batch_size: int | None = None,
) -> str:
    """The picture as an SVG document, or (``format="html"``) one self-contained page
    with the picture, the totals and the per-layer table. ``depth`` draws blocks at that
    nesting depth as one box."""
    if format not in ("svg", "html"):
        raise ValueError(f"unknown format {format!r}; use svg or html")
    network, report = _load(spec, input, batch_size)
    picture = svg_picture(network, report, depth)
    if format == "svg":
        return picture
    title = html.escape(f"{report.name} — convcalc")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(report.name)}</h1>\n"
        f'<div class="picture">{picture}</div>\n'
        f"{html_table(report)}\n</body>\n</html>\n"
    )


def _load(
    spec: Spec, input: Sequence[int] | None, batch_size: int | None
) -> tuple[Network, Report]:
    network = load_spec(spec)
    if input is not None or batch_size is not None:
        network = with_overrides(network, input=input, batch_size=batch_size)
    return network, analyze(network)


# -- the table (also Report._repr_html_) -------------------------------------------------


def html_table(report: Report, picture: str = "") -> str:
    """The per-layer table and the totals as HTML (``picture``: SVG to put above it)."""
    header = "".join(
        f"<th>{h}</th>"
        for h in ("Layer", "Type", "Output shape", "Arguments", "Params", "MACs", "Receptive field")
    )
    body = []
    for row in report.rows:
        name = f" ({html.escape(row.name)})" if row.name else ""
        css = ' class="block"' if row.is_block else ""
        body.append(
            f'<tr{css}><td style="padding-left:{0.3 + 1.2 * (row.depth - 1):.1f}em">'
            f"{html.escape(row.path)}{name}</td><td>{html.escape(row.type)}</td>"
            f"<td>{shape_text(row.output_shape)}</td><td>{html.escape(row.arguments)}</td>"
            f'<td class="n">{_count(row.params)}</td><td class="n">{_count(row.macs)}</td>'
            f"<td>{html.escape(field_text(row.receptive_field))}</td></tr>"
        )
    totals = report.totals
    summary = [
        ("Input", shape_text(report.input_shape) + f", {report.dtype}"),
        ("Total params", f"{totals.params:,}"),
        ("Trainable params", f"{totals.trainable_params:,}"),
        ("MACs", f"{totals.macs:,}"),
        ("Params size", f"{totals.param_bytes / 1e6:,.2f} MB"),
        ("Activations size", f"{totals.activation_bytes / 1e6:,.2f} MB"),
        ("Output shape", shape_text(report.output_shape)),
    ]
    summary_rows = "".join(f"<tr><th>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in summary)
    warnings = "".join(f"<li>{html.escape(str(w))}</li>" for w in report.warnings)
    return (
        f'<div class="convcalc">{picture}'
        f'<table class="summary">{summary_rows}</table>'
        f'<table class="layers"><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
        f'<p class="note">{html.escape(MACS_NOTE)}</p>'
        + (f"<p>Warnings:</p><ul>{warnings}</ul>" if warnings else "")
        + "</div>"
    )


def _count(value: int) -> str:
    return f"{value:,}" if value else "--"


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
.picture { overflow-x: auto; border: 1px solid #ddd; padding: 0.5em; margin-bottom: 1em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 0.15em 0.7em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.block td { background: #f4f7fb; font-weight: 600; }
.note { color: #666; font-size: 0.9em; }
"""


# -- the picture -----------------------------------------------------------------------


@dataclass
class _Item:
    """Something drawn in a row: its size around the centre line, and how to draw it."""

    width: float
    above: float
    below: float
    paint: Callable[[list[str], float, float], None]  # (svg parts, left x, centre y)
    notes: list[str] = field(default_factory=list)  # folded layers after a ⊕ or © node


@dataclass
class _Box:
    """The rows one box stands for: the first gives the geometry, the last the output."""

    rows: list[LayerRow] = field(default_factory=list)
    block: bool = False


def svg_picture(network: Network, report: Report, depth: int | None = None) -> str:
    """The network as an SVG element."""
    rows = {row.path: row for row in report.rows}
    drawer = _Drawer(rows, depth)
    items = [drawer.input_item(report.input_shape), *drawer.sequence(network.layers, "layers")]
    whole = _row_of(items)
    margin = 16
    title_height = 22
    width = whole.width + 2 * margin
    height = whole.above + whole.below + 2 * margin + title_height
    totals = report.totals
    title = (
        f"{report.name}: input {shape_text(report.input_shape)}, {totals.params:,} params, "
        f"{totals.macs:,} MACs, output {shape_text(report.output_shape)}"
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="system-ui, sans-serif" '
        f'font-size="{FONT}" role="img" aria-label="{html.escape(report.name)}">',
        '<defs><marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L8,4 L0,8 z" '
        'fill="#555"/></marker></defs>',
        f'<rect width="{width:.0f}" height="{height:.0f}" fill="white"/>',
        f'<text x="{margin}" y="{margin + 4}" font-size="13" font-weight="600">'
        f"{html.escape(title)}</text>",
    ]
    whole.paint(parts, margin, margin + title_height + whole.above)
    parts.append("</svg>")
    return "\n".join(parts)


class _Drawer:
    def __init__(self, rows: dict[str, LayerRow], depth: int | None) -> None:
        self.rows = rows
        self.depth = depth

    # -- structure -------------------------------------------------------------------

    def sequence(self, layers: Sequence[LayerSpec], prefix: str) -> list[_Item]:
        boxes: list[_Item] = []
        current: _Box | None = None
        for index, layer in enumerate(layers):
            path = f"{prefix}.{index}"
            row = self.rows[path]
            if isinstance(layer, Leaf) and layer.drawn_folded:
                if current is not None:
                    current.rows.append(row)  # drawn in the box before it
                    continue
                if boxes:
                    boxes[-1].notes.append(_short(row.type))  # after a block's ⊕ or ©
                    continue
            if current is not None:
                boxes.append(self.box_item(current))
                current = None
            if isinstance(layer, Leaf):
                current = _Box([row])
            elif self.depth is not None and row.depth >= self.depth:
                current = _Box([row], block=True)
            else:
                boxes += self.block(layer, path)
        if current is not None:
            boxes.append(self.box_item(current))
        return boxes

    def block(self, block: Block, path: str) -> list[_Item]:
        chains = [
            (f"{path}.{segment}" if segment else path, layers)
            for segment, layers in block.children()
        ]
        if block.type == "residual":
            (_, body), (_, shortcut) = chains
            return [
                self.merge(
                    [
                        self.sequence(body, f"{path}.body"),
                        self.sequence(shortcut, f"{path}.shortcut"),
                    ],
                    "+",
                    bypass=not shortcut,
                )
            ]
        if block.type == "concat":
            return [self.merge([self.sequence(layers, p) for p, layers in chains], "©")]
        items: list[_Item] = []
        for prefix, layers in chains:  # sequential, and the copies of a repeat
            items += self.sequence(layers, prefix)
        return items

    # -- items -----------------------------------------------------------------------

    def input_item(self, shape: tuple[int, ...]) -> _Item:
        return _box_item(shape, ["input", _dims(shape)], COLOURS["input"], dashed=False)

    def box_item(self, box: _Box) -> _Item:
        main, last = box.rows[0], box.rows[-1]
        title = main.name or main.type
        if box.block:
            title = f"{main.name or main.path} ({main.type})"
        folded = [_short(r.type) for r in box.rows[1:]]
        lines = [title + (" + " + " + ".join(folded) if folded else ""), _dims(last.output_shape)]
        params = sum(r.params for r in box.rows)
        if params:
            lines.append(f"{params:,} params")
        if last.receptive_field is not None:
            lines.append("RF " + field_text(last.receptive_field))
        colour = COLOURS["block"] if box.block else _colour(main.type)
        return _box_item(last.output_shape, lines, colour, dashed=box.block)

    def merge(self, lanes: list[list[_Item]], symbol: str, bypass: bool = False) -> _Item:
        """Lanes side by side between a split and a node: residual (+) or concat (©)."""
        rows = [_row_of(lane) if lane else None for lane in lanes]
        if bypass:
            rows = rows[:1]  # the identity shortcut is an arc over the body
        inner = max((r.width for r in rows if r is not None), default=0.0)
        width = 16 + inner + 16 + 2 * NODE
        first = rows[0]
        above = (first.above if first else NODE) + (16 if bypass else 0)
        centres = [0.0]
        below = first.below if first else NODE
        for lane in rows[1:]:
            lane_above = lane.above if lane else 6
            lane_below = lane.below if lane else 6
            centres.append(below + 14 + lane_above)
            below = centres[-1] + lane_below

        def paint(parts: list[str], x: float, cy: float) -> None:
            split, node = x + 8, x + width - NODE
            parts.append(_line(x, cy, split, cy))
            for lane, offset in zip(rows, centres):
                y = cy + offset
                if offset:
                    parts.append(_line(split, cy, split, y))
                if lane is None:
                    parts.append(
                        _line(split, y, node - (NODE if not offset else 0), y, arrow=not offset)
                    )
                else:
                    parts.append(_line(split, y, x + 16, y))
                    lane.paint(parts, x + 16, y)
                    parts.append(
                        _line(
                            x + 16 + lane.width,
                            y,
                            node - (0 if offset else NODE),
                            y,
                            arrow=not offset,
                        )
                    )
                if offset:
                    parts.append(_line(node, y, node, cy + NODE, arrow=True))
            if bypass:
                top = cy - above + 4
                parts.append(
                    f'<path d="M{split:.1f},{cy:.1f} V{top:.1f} H{node:.1f} V{cy - NODE:.1f}" '
                    'fill="none" stroke="#555" marker-end="url(#arrow)"/>'
                )
            parts.append(
                f'<circle cx="{node:.1f}" cy="{cy:.1f}" r="{NODE}" fill="white" stroke="#555"/>'
                f'<text x="{node:.1f}" y="{cy + 4:.1f}" text-anchor="middle" font-size="12">'
                f"{html.escape(symbol)}</text>"
            )

        item = _Item(width, above, below, paint)
        notes = item.notes

        def paint_with_notes(parts: list[str], x: float, cy: float) -> None:
            paint(parts, x, cy)
            if notes:
                parts.append(
                    f'<text x="{x + width - NODE:.1f}" y="{cy + NODE + 12:.1f}" '
                    f'text-anchor="middle">{html.escape(" + ".join(notes))}</text>'
                )

        item.paint = paint_with_notes
        item.below = max(below, NODE + 16)
        return item


def _short(kind: str) -> str:
    """A folded layer's name in a box title: BN for batchnorm2d, and so on."""
    for prefix, short in (("batchnorm", "BN"), ("instancenorm", "IN"), ("groupnorm", "GN"),
                          ("layernorm", "LN"), ("localresponsenorm", "LRN"),
                          ("dropout", "dropout")):  # fmt: skip
        if kind.startswith(prefix):
            return short
    return kind


def _row_of(items: list[_Item]) -> _Item:
    """Items left to right, joined by arrows, on one centre line."""
    width = sum(i.width for i in items) + GAP * (len(items) - 1)
    above = max(i.above for i in items)
    below = max(i.below for i in items)

    def paint(parts: list[str], x: float, cy: float) -> None:
        for index, item in enumerate(items):
            if index:
                parts.append(_line(x - GAP, cy, x - 2, cy, arrow=True))
            item.paint(parts, x, cy)
            x += item.width + GAP

    return _Item(width, above, below, paint)


def _box_item(shape: tuple[int, ...], lines: list[str], colour: str, dashed: bool) -> _Item:
    thickness, height, slant = _geometry(shape)
    dx, dy = slant * 0.7, slant * 0.5
    text_width = max(len(line) for line in lines) * CHAR
    width = max(thickness + dx, text_width) + 4
    label_height = 12 * len(lines) + 6
    item = _Item(width, height / 2 + dy + 2, height / 2 + label_height, lambda *_: None)

    def paint(parts: list[str], x: float, cy: float) -> None:
        left = x + (width - thickness - dx) / 2
        top, bottom, right = cy - height / 2, cy + height / 2, left + thickness
        dash = ' stroke-dasharray="4 2"' if dashed else ""
        style = f'stroke="#333" stroke-width="0.8"{dash}'
        parts.append(
            f'<g><polygon points="{left:.1f},{top:.1f} {left + dx:.1f},{top - dy:.1f} '
            f'{right + dx:.1f},{top - dy:.1f} {right:.1f},{top:.1f}" fill="{_shade(colour, 1.12)}" '
            f"{style}/>"
            f'<polygon points="{right:.1f},{top:.1f} {right + dx:.1f},{top - dy:.1f} '
            f'{right + dx:.1f},{bottom - dy:.1f} {right:.1f},{bottom:.1f}" '
            f'fill="{_shade(colour, 0.82)}" {style}/>'
            f'<rect x="{left:.1f}" y="{top:.1f}" width="{thickness:.1f}" height="{height:.1f}" '
            f'fill="{colour}" {style}/>'
        )
        centre = x + width / 2
        if item.notes:
            lines[0] += " + " + " + ".join(item.notes)
            item.notes.clear()
        for number, line in enumerate(lines):
            weight = ' font-weight="600"' if number == 0 else ""
            parts.append(
                f'<text x="{centre:.1f}" y="{bottom + 14 + 12 * number:.1f}" '
                f'text-anchor="middle"{weight}>{html.escape(line)}</text>'
            )
        parts.append("</g>")

    item.paint = paint
    return item


def _geometry(shape: tuple[int, ...]) -> tuple[float, float, float]:
    """(thickness from the channels, height from the first spatial size, slant from the
    last), on log scales; a flat [N, F] output is a thin bar as tall as its features."""
    if len(shape) == 2:
        return 6.0, _clamp(8 + 9 * math.log2(shape[1] + 1), 8, 150), 0.0
    channels, spatial = shape[1], shape[2:]
    thickness = _clamp(3 + 3.2 * math.log2(channels + 1), 4, 44)
    height = _clamp(8 + 13 * math.log2(spatial[-2 if len(spatial) > 1 else 0] + 1), 8, 150)
    slant = _clamp(3 + 5 * math.log2(spatial[-1] + 1), 3, 60) if len(spatial) > 1 else 3.0
    return thickness, height, slant


def _dims(shape: tuple[int, ...]) -> str:
    """``64×55×55``: the shape without the batch."""
    return "×".join(map(str, shape[1:]))


def _colour(kind: str) -> str:
    for prefix in ("convtranspose", "conv", "maxpool", "avgpool", "adaptive", "linear",
                   "flatten", "upsample", "zeropad"):  # fmt: skip
        if kind.startswith(prefix):
            return COLOURS[prefix]
    return "#b8b8b8"


def _shade(colour: str, factor: float) -> str:
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{min(255, int(c * factor)):02x}" for c in (r, g, b))


def _line(x1: float, y1: float, x2: float, y2: float, arrow: bool = False) -> str:
    marker = ' marker-end="url(#arrow)"' if arrow else ""
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#555"{marker}/>'


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))
