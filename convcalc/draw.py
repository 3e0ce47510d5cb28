"""A picture of the network: its graph laid out in layers by Graphviz's ``dot``.

The picture is read from the lowered graph (``convcalc.graph``) and the report's rows,
never from the spec's blocks. Each layer is a box with its name, its operation (kernel,
stride and dilation on convolutions and pools), its output shape and parameters, and a
small swatch whose height follows the spatial size and whose width the channels (log
scales), coloured by the layer's family. Shape-keeping layers without their own geometry
(activations, normalisation, dropout: ``Leaf.drawn_folded``) are folded into the box
before them when nothing else reads that box's output. Merges are small round nodes
(``+`` add and residual joins, ``×`` mul, ``©`` cat and concat joins), splits a small
triangle whose outgoing edges name their piece and its shape. Blocks are clusters;
``depth`` draws the blocks at that nesting depth as one dashed box each. A long network is
wrapped into columns, cut where few tensors cross; a legend explains the colours.

``dot`` runs as a subprocess (``dot -Tsvg``); without Graphviz the picture is refused in
one sentence. The SVG is plain (no script); the HTML page around it, with the totals and
the per-layer table, needs no network access.
"""

from __future__ import annotations

import html
import math
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from convcalc.analysis import analyze
from convcalc.errors import ConvCalcError
from convcalc.formatting import MACS_NOTE, field_text, shape_text
from convcalc.graph import Graph, Group, Node, Ref, lower
from convcalc.layers import Leaf
from convcalc.loader import load_spec, with_overrides
from convcalc.report import LayerRow, Report
from convcalc.spec import LAYER_TYPES, Network

__all__ = ["GRAPHVIZ_MISSING", "draw", "html_table", "svg_picture"]

Spec = str | os.PathLike[str] | Mapping[str, Any] | Network
Shape = tuple[int, ...]

GRAPHVIZ_MISSING = "convcalc draw needs Graphviz's dot: apt-get install graphviz"
DOT_TIMEOUT = 60  # seconds for one layout

# Layer families: (legend name, colour); a layer's family is the first whose prefix
# its type starts with.
FAMILIES: dict[str, tuple[str, str]] = {
    "dwconv": ("depthwise conv", "#9cc9e6"),
    "conv": ("conv", "#6f9fd8"),
    "convtranspose": ("transposed conv", "#a08fd9"),
    "pool": ("pooling", "#e8a35e"),
    "adaptive": ("adaptive pooling", "#e6c35c"),
    "linear": ("linear", "#7cc08a"),
    "reshape": ("flatten / reshape", "#c2c2c2"),
    "upsample": ("upsampling", "#c98ad6"),
    "pad": ("padding", "#d6d0c4"),
    "norm": ("normalisation", "#f0d9a8"),
    "activation": ("activation", "#f3b8b0"),
    "other": ("other", "#b8b8b8"),
    "block": ("block drawn as one box", "#dde6f0"),
    "io": ("input / output", "#eeeeee"),
}
# Merges and splits: (symbol, legend text, fill).
MERGES: dict[str, tuple[str, str, str]] = {
    "add": ("+", "add (residual)", "#e3f1e3"),
    "mul": ("×", "mul (gate)", "#fbe6d0"),
    "cat": ("©", "concat", "#e0eaf6"),
    "split": ("", "split / chunk", "#eeeeee"),
}
FONT = "Helvetica,Arial,sans-serif"
COLUMN_RANKS = 16  # a column longer than this many layers wraps into several
COLUMN_GAP = 24  # px between columns
MAX_CROSSING = 2  # values that may cross from one column to the next


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


# -- what is drawn: items (boxes, merges, inputs, outputs) and edges between them -------


@dataclass(eq=False)
class _Item:
    """One drawn node: a layer with the layers folded into it, a merge, an input, an
    output, or a block drawn as one box."""

    kind: str  # box, merge, input, output, block
    key: float  # position in a topological order (the first graph node it draws)
    nodes: list[Node] = field(default_factory=list)
    group: Group | None = None  # the block, for kind == "block"
    name: str = ""  # inputs and outputs
    shape: Shape = ()
    source: Ref | None = None  # outputs: the value they name
    id: str = ""

    @property
    def main(self) -> Node | None:
        return self.nodes[0] if self.nodes else None


@dataclass(frozen=True)
class _Edge:
    source: _Item
    target: _Item
    ref: Ref
    label: str = ""


class _Scene:
    """The graph as it is drawn: folding and collapsing applied."""

    def __init__(self, graph: Graph, report: Report, depth: int | None) -> None:
        self.graph = graph
        self.rows = {row.path: row for row in report.rows}
        self.report = report
        self.depth = depth
        self.items: list[_Item] = []
        self.owner: dict[int, _Item] = {}  # graph node -> the item drawing its output
        self.collapsed: dict[int, Group] = {}  # graph node -> the block drawn as one box
        self.parent: dict[int, Group] = {}  # group -> the group around it
        self._collapse(graph.root)
        readers: dict[int, int] = {}
        for node in graph.nodes:
            for ref in node.inputs:
                readers[ref.node] = readers.get(ref.node, 0) + 1
        for ref in graph.outputs.values():
            readers[ref.node] = readers.get(ref.node, 0) + 2  # never folded away
        blocks: dict[int, _Item] = {}
        for node in graph.nodes:
            group = self.collapsed.get(node.index)
            if group is not None:
                item = blocks.get(id(group))
                if item is None:
                    item = blocks[id(group)] = self._add("block", node.index, group=group)
                item.nodes.append(node)
                self.owner[node.index] = item
                continue
            if node.is_input:
                shape = report.input_shapes.get(node.path, report.input_shape)
                item = self._add("input", node.index, name=node.path, shape=shape)
                item.nodes.append(node)
                self.owner[node.index] = item
                continue
            before = self._fold_target(node, readers)
            if before is not None:
                before.nodes.append(node)
                self.owner[node.index] = before
                continue
            item = self._add("merge" if _merge_kind(node) else "box", node.index)
            item.nodes.append(node)
            self.owner[node.index] = item
        for name, ref in graph.outputs.items():
            shape = report.outputs.get(name) or self.value_shape(ref)
            item = self._add("output", ref.node + 0.5, name=name, shape=shape, source=ref)
        self.items.sort(key=lambda item: item.key)
        for number, item in enumerate(self.items):
            item.id = f"n{number}"
        self.edges = self._edges()

    def _collapse(self, group: Group) -> None:
        for member in group.members:
            if not isinstance(member, Group):
                continue
            self.parent[id(member)] = group
            if self.depth is not None and member.row and member.depth >= self.depth:
                for index in range(member.first, member.last + 1):
                    self.collapsed[index] = member
            else:
                self._collapse(member)

    def _add(self, kind: str, key: float, **fields: Any) -> _Item:
        item = _Item(kind, key, **fields)
        self.items.append(item)
        return item

    def _fold_target(self, node: Node, readers: dict[int, int]) -> _Item | None:
        """The item a folded layer is drawn in: the one before it, when it reads only
        that item's output and nothing else does."""
        layer = node.layer
        if not (isinstance(layer, Leaf) and layer.drawn_folded) or len(node.inputs) != 1:
            return None
        ref = node.inputs[0]
        before = self.owner.get(ref.node)
        if before is None or before.kind not in ("box", "merge", "block"):
            return None
        if ref.index or ref.picked or readers.get(ref.node, 0) != 1:
            return None
        if before.nodes[-1].index != ref.node or _merge_kind(before.nodes[-1]) == "split":
            return None
        inner = before.group if before.kind == "block" else before.nodes[0].group
        while inner is not None and inner is not node.group:  # never into a block
            inner = self.parent.get(id(inner))
        return before if inner is not None else None

    def _edges(self) -> list[_Edge]:
        edges: list[_Edge] = []
        seen: set[tuple[int, int, int, int]] = set()

        def add(source: _Item, target: _Item, ref: Ref) -> None:
            key = (id(source), id(target), ref.node, ref.index)
            if source is target or key in seen:
                return
            seen.add(key)
            edges.append(_Edge(source, target, ref, self.edge_label(source, ref)))

        for node in self.graph.nodes:
            for ref in node.inputs:
                add(self.owner[ref.node], self.owner[node.index], ref)
        for item in self.items:
            if item.kind == "output" and item.source is not None:
                add(self.owner[item.source.node], item, item.source)
        return edges

    def edge_label(self, source: _Item, ref: Ref) -> str:
        """Pieces of a split, and values taken from inside a block drawn as one box,
        carry their shape (every other value's shape is in the box it leaves)."""
        node = self.graph.nodes[ref.node]
        if _merge_kind(node) == "split":
            return f".{ref.index} {_dims(self.value_shape(ref))}"
        if source.kind == "block" and source.nodes[-1].index != ref.node:
            return _dims(self.value_shape(ref))
        return ""

    def row(self, node: Node) -> LayerRow:
        return self.rows[node.path]

    def value_shape(self, ref: Ref) -> Shape:
        node = self.graph.nodes[ref.node]
        if node.is_input:
            return self.report.input_shapes.get(node.path, self.report.input_shape)
        row = self.rows[node.path]
        if row.output_shapes:
            return row.output_shapes[ref.index]
        return row.output_shape


def _merge_kind(node: Node) -> str | None:
    """add, mul, cat or split for merges, splits and block joins; None otherwise."""
    if node.join == "residual":
        return "add"
    if node.join == "concat":
        return "cat"
    kind = getattr(node.layer, "type", "")
    if kind in ("add", "mul", "cat"):
        return kind
    if kind in ("split", "chunk"):
        return "split"
    return None


def _family(kind: str, layer: Any = None) -> str:
    if kind.startswith("conv") and not kind.startswith("convtranspose"):
        groups = getattr(layer, "groups", 1)
        if groups != 1 and groups == getattr(layer, "out_channels", None):
            return "dwconv"
    cls = LAYER_TYPES.get(kind)
    if cls is not None and issubclass(cls, Leaf) and cls.draw_family:
        return cls.draw_family
    if isinstance(layer, Leaf) and layer.drawn_folded:
        return "activation"
    return "other"


def _short(kind: str) -> str:
    """A folded layer's name in a box title: BN for batchnorm2d, and so on."""
    cls = LAYER_TYPES.get(kind)
    if cls is not None and issubclass(cls, Leaf):
        return cls.short_labels.get(kind, kind)
    return kind


def _folded(row: LayerRow) -> str:
    """A folded layer in a title: ``BN``, or ``SiLU (p3)`` when it has a name."""
    return _short(row.type) + (f" ({row.name})" if row.name else "")


def _dims(shape: Shape) -> str:
    """``64×55×55``: the shape without the batch."""
    return "×".join(map(str, shape[1:]))


def _pair(value: Any) -> str:
    values = list(value) if isinstance(value, list | tuple) else [value]
    if len(set(values)) == 1 and len(values) > 1:
        values = values[:1]
    return "×".join(map(str, values))


def _operation(node: Node, row: LayerRow) -> str:
    """``conv 3×3 s2 d2 dw``: kernel, stride and dilation (and groups) of convolutions
    and pools; the report's arguments for other layers."""
    layer = node.layer
    kind = row.type
    kernel = getattr(layer, "kernel_size", None)
    kind = re.sub(r"[123]d$", "", kind)
    if kind.startswith("adaptive") and row.arguments.startswith("out="):
        return f"{kind} → {row.arguments[4:]}"
    if kernel is None:
        text = f"{kind} {row.arguments}".strip()
        return text if len(text) <= 40 else text[:39] + "…"
    dims = max(1, layer.dims) if isinstance(layer, Leaf) else 2
    size = "×".join(map(str, kernel if isinstance(kernel, list | tuple) else [kernel] * dims))
    parts = [kind, size]
    stride = getattr(layer, "stride", None)
    if stride is None:  # pools: the stride is the kernel
        stride = kernel
    if _pair(stride) != "1":
        parts.append(f"s{_pair(stride)}")
    dilation = getattr(layer, "dilation", 1)
    if _pair(dilation) != "1":
        parts.append(f"d{_pair(dilation)}")
    groups = getattr(layer, "groups", 1)
    if groups != 1:
        depthwise = groups == getattr(layer, "out_channels", None)
        parts.append("dw" if depthwise else f"g{groups}")
    return " ".join(parts)


# -- dot ---------------------------------------------------------------------------------


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _attrs(**attributes: Any) -> str:
    parts = []
    for key, value in attributes.items():
        if isinstance(value, str) and value.startswith("<") and value.endswith(">"):
            parts.append(f"{key}={value}")  # an HTML-like label
        else:
            text = str(value).replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'{key}="{text}"')
    return "[" + " ".join(parts) + "]"


def _swatch(shape: Shape) -> tuple[int, int]:
    """(width, height) in points: the width from the channels, the height from the
    (first) spatial size, on log scales; a flat [N, F] value is a thin bar."""
    if len(shape) <= 2:
        features = shape[-1] if shape else 1
        return 3, int(_clamp(4 + 4 * math.log2(features + 1), 6, 40))
    channels, spatial = shape[1], shape[2:]
    width = _clamp(2 + 2.3 * math.log2(channels + 1), 3, 30)
    height = _clamp(3 + 4.6 * math.log2(spatial[0] + 1), 4, 40)
    return int(width), int(height)


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


class _Dot:
    """The dot source of one column of the picture."""

    def __init__(self, scene: _Scene, items: list[_Item], column: int, columns: int) -> None:
        self.scene = scene
        self.items = items
        self.inside = {id(item) for item in items}
        self.column = column
        self.columns = columns
        self.lines: list[str] = []
        self.clusters = 0
        self._emitted: set[int] = set()
        self.column_of: dict[int, int] = {}  # item -> its column, when there are several

    def source(self) -> str:
        scene = self.scene
        self.lines = [
            "digraph convcalc {",
            f"graph {_attrs(rankdir='TB', nodesep=0.22, ranksep=0.28, fontname=FONT, fontsize=9, bgcolor='transparent', pad=0.05)};",  # noqa: E501
            f"node {_attrs(fontname=FONT, fontsize=9, shape='box', style='rounded,filled', color='#666666', penwidth=0.8, margin='0.06,0.03', height=0.2)};",  # noqa: E501
            f"edge {_attrs(fontname=FONT, fontsize=8, color='#555555', arrowsize=0.55, penwidth=0.8, fontcolor='#444444')};",  # noqa: E501
        ]
        self._group(scene.graph.root, "  ", top=True)
        for item in self.items:  # the outputs (and anything no group holds)
            self._node(item, "  ")
        self._edges()
        self.lines.append("}")
        return "\n".join(self.lines)

    def _group(self, group: Group, indent: str, top: bool = False) -> None:
        if top:
            for item in self.items:  # the inputs first
                if item.kind == "input":
                    self._node(item, indent)
        members = self._drawn_members(group)
        if not members:
            return
        cluster = group.row and not top and not self._one_cluster(members)
        if cluster:
            self.clusters += 1
            label = f"{group.name or group.path} ({group.type})"
            self.lines.append(f"{indent}subgraph cluster_{self.clusters} {{")
            self.lines.append(
                f"{indent}  graph {_attrs(label=label, labeljust='l', fontsize=8, fontcolor='#555555', style='rounded,dashed', color='#9aa7b5', penwidth=0.8, margin=6)};"  # noqa: E501
            )
            indent += "  "
        for member in members:
            if isinstance(member, Group):
                self._group(member, indent)
            else:
                self._node(member, indent)
        if cluster:
            self.lines.append(indent[:-2] + "}")

    def _drawn_members(self, group: Group) -> list[Group | _Item]:
        """What of a group is drawn in this column: its items (in order) and the groups
        that hold some; a block drawn as one box is its item."""
        found: list[Group | _Item] = []
        for member in group.members:
            if isinstance(member, Group):
                item = self.scene.owner.get(member.first) if member.last >= member.first else None
                if item is not None and item.kind == "block" and item.group is member:
                    if id(item) in self.inside:
                        found.append(item)
                elif self._holds(member):
                    found.append(member)
            else:
                item = self.scene.owner[member.index]
                if item.main is member and id(item) in self.inside:
                    found.append(item)
        return found

    def _holds(self, group: Group) -> bool:
        """Whether anything of this group is drawn in this column."""
        for member in group.members:
            if isinstance(member, Group):
                item = self.scene.owner.get(member.first)
                if item is not None and item.group is member:
                    if id(item) in self.inside:
                        return True
                elif self._holds(member):
                    return True
            else:
                item = self.scene.owner[member.index]
                if item.main is member and id(item) in self.inside:
                    return True
        return False

    def _one_cluster(self, members: list[Group | _Item]) -> bool:
        """A block drawn as one box (conv + BN + activation), or holding nothing but one
        other block (a repeat's copy around a residual), is not framed."""
        return len(members) == 1 and (not isinstance(members[0], Group) or members[0].row)

    def _node(self, item: _Item, indent: str) -> None:
        if id(item) in self._emitted:
            return
        self._emitted.add(id(item))
        self.lines.append(f"{indent}{item.id} {_attrs(**self.node_attributes(item))};")

    def node_attributes(self, item: _Item) -> dict[str, Any]:
        scene = self.scene
        if item.kind in ("input", "output"):
            name = item.name if item.kind == "input" else f"output {item.name}"
            if item.kind == "output" and len(scene.graph.outputs) == 1 and item.name == "output":
                name = "output"
            label = f"<<B>{_esc(name)}</B><BR/>{_esc(_dims(item.shape))}>"
            return {
                "label": label,
                "fillcolor": FAMILIES["io"][1],
                "class": f"io {item.kind}",
                "tooltip": f"{name} {shape_text(item.shape)}",
            }
        if item.kind == "merge":
            node = item.nodes[0]
            kind = _merge_kind(node) or "add"
            symbol, _, fill = MERGES[kind]
            row = scene.row(node)
            notes = [_folded(scene.row(n)) for n in item.nodes[1:]]
            out = scene.row(item.nodes[-1])
            attributes: dict[str, Any] = {
                "class": f"merge {kind}",
                "fillcolor": fill,
                "tooltip": _tooltip(item, scene),
            }
            if kind == "split":
                pieces = len(row.output_shapes) or 1
                attributes.update(
                    shape="invtriangle", label="", width=0.28, height=0.22, fixedsize=True,
                    fontsize=8, xlabel=f"{row.name or row.type} ×{pieces}",
                )  # fmt: skip
            else:
                extra = (" · " + " + ".join(notes)) if notes else ""
                name = f"{row.name}: " if row.name else ""
                attributes.update(
                    shape="circle", label=f"<<FONT POINT-SIZE='12'>{_esc(symbol)}</FONT>>",
                    width=0.26, fixedsize=True, fontsize=8,
                    xlabel=f"{name}{_dims(out.output_shape)}{extra}",
                )  # fmt: skip
            return attributes
        if item.kind == "block":
            group = item.group
            assert group is not None
            row = scene.rows[group.path]
            last = scene.row(item.nodes[-1]) if item.nodes[-1].path != group.path else row
            layers = sum(1 for n in item.nodes if n.layer is not None and n.join is None)
            title = f"{group.name or group.path} ({group.type})"
            notes = [_folded(scene.row(n)) for n in item.nodes if n.index > group.last]
            if notes:
                title += " + " + " + ".join(notes)
            lines = [f"{layers} layers", _shape_params(last.output_shape, row.params)]
            return {
                "label": _box_label(title, lines, FAMILIES["block"][1], last.output_shape),
                "style": "rounded,filled,dashed",
                "fillcolor": "#f4f7fb",
                "class": "box block",
                "tooltip": _tooltip(item, scene),
            }
        node = item.nodes[0]
        main = scene.row(node)
        out = scene.row(item.nodes[-1])
        folded = [_folded(scene.row(n)) for n in item.nodes[1:]]
        operation = _operation(node, main)
        title = (main.name or operation) + "".join(f" + {f}" for f in folded)
        lines = [operation] if main.name else []
        params = sum(scene.row(n).params for n in item.nodes)
        lines.append(_shape_params(out.output_shape, params))
        family = _family(main.type, node.layer)
        colour = FAMILIES[family][1]
        return {
            "label": _box_label(title, lines, colour, out.output_shape),
            "fillcolor": _tint(colour),
            "class": f"box {family}",
            "tooltip": _tooltip(item, scene),
        }

    def _edges(self) -> None:
        ghosts: dict[tuple[int, int], str] = {}
        sent: set[tuple[int, int]] = set()
        for edge in self.scene.edges:
            source_in = id(edge.source) in self.inside
            target_in = id(edge.target) in self.inside
            if source_in and target_in:
                self.lines.append(
                    f"  {edge.source.id} -> {edge.target.id} {_attrs(**_edge_attrs(edge))};"
                )
            elif source_in != target_in:
                key = (edge.ref.node, edge.ref.index)
                if key not in ghosts:
                    ghosts[key] = f"g{self.column}_{len(ghosts)}"
                    self._ghost(ghosts[key], edge, incoming=target_in)
                if target_in:
                    self.lines.append(
                        f"  {ghosts[key]} -> {edge.target.id} {_attrs(**_edge_attrs(edge))};"
                    )
                elif key not in sent:
                    sent.add(key)
                    self.lines.append(f"  {edge.source.id} -> {ghosts[key]};")

    def _ghost(self, name: str, edge: _Edge, incoming: bool) -> None:
        """Where a value comes from another column (at the top) or goes on to one (at
        the bottom)."""
        if incoming:
            what = self._what(edge.ref)
            column = self.column_of.get(id(edge.source), 0)
            text = f"◂ column {column}: {what}" if column else what
            rank = "source"
        else:
            text = f"on in column {self.column_of.get(id(edge.target), 0)} ▸"
            rank = "sink"
        self.lines.append(
            f"  {name} {_attrs(label=text, shape='plaintext', style='', fontcolor='#555555', fontsize=8, height=0.1, **{'class': 'ghost'})};"  # noqa: E501
        )
        self.lines.append(f"  {{ rank={rank}; {name}; }}")

    def _what(self, ref: Ref) -> str:
        """A value's name (when it has one) and shape."""
        node = self.scene.graph.nodes[ref.node]
        name = node.path if node.is_input else (node.layer.name if node.layer else None)
        if name and (ref.picked or ref.index):
            name += f".{ref.index}"
        return (f"{name} " if name else "") + _dims(self.scene.value_shape(ref))


def _edge_attrs(edge: _Edge) -> dict[str, Any]:
    attributes: dict[str, Any] = {"class": "flow"}
    if edge.label:
        attributes["label"] = edge.label
    return attributes


def _shape_params(shape: Shape, params: int) -> str:
    return _dims(shape) + (f" · {params:,} params" if params else "")


def _box_label(title: str, lines: list[str], colour: str, shape: Shape) -> str:
    width, height = _swatch(shape)
    rows = len(lines) + 1
    cells = [f"<TD ALIGN='LEFT'><B>{_esc(title)}</B></TD>"] + [
        f"<TD ALIGN='LEFT'>{_esc(line)}</TD>" for line in lines
    ]
    swatch = (
        f"<TD ROWSPAN='{rows}' WIDTH='{width}' HEIGHT='{height}' FIXEDSIZE='TRUE' "
        f"BGCOLOR='{colour}'></TD><TD ROWSPAN='{rows}' WIDTH='3'></TD>"
    )
    body = f"<TR>{swatch}{cells[0]}</TR>" + "".join(f"<TR>{cell}</TR>" for cell in cells[1:])
    return f"<<TABLE BORDER='0' CELLBORDER='0' CELLSPACING='0' CELLPADDING='1'>{body}</TABLE>>"


def _tint(colour: str, amount: float = 0.72) -> str:
    """The colour mixed with white: box fills stay light, the swatch carries the hue."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{int(c + (255 - c) * amount):02x}" for c in (r, g, b))


def _tooltip(item: _Item, scene: _Scene) -> str:
    lines = []
    for node in item.nodes:
        row = scene.rows.get(node.path)
        if row is None:
            continue
        rf = f", RF {field_text(row.receptive_field)}" if row.receptive_field else ""
        lines.append(f"{row.label} {row.type} {row.arguments} → {shape_text(row.output_shape)}{rf}")
    return "\n".join(lines[:12]) + ("\n…" if len(lines) > 12 else "")


# -- wrapping into columns -----------------------------------------------------------------


def _ranks(scene: _Scene) -> dict[int, int]:
    """The layer of each item in a longest-path layering (what dot's rows will be)."""
    rank: dict[int, int] = {}
    incoming: dict[int, list[_Item]] = {}
    for edge in scene.edges:
        incoming.setdefault(id(edge.target), []).append(edge.source)
    for item in scene.items:
        rank[id(item)] = max((rank[id(s)] + 1 for s in incoming.get(id(item), [])), default=0)
    return rank


def _columns(scene: _Scene, limit: int = COLUMN_RANKS) -> list[list[_Item]]:
    """The items cut into columns of about ``limit`` layers each, where few values cross
    the cut (ideally one: between two blocks of a chain) and no block is split."""
    items = scene.items
    rank = _ranks(scene)
    total = max(rank.values(), default=0) + 1
    if total <= limit * 1.25 or len(items) < 8:
        return [items]
    count = math.ceil(total / limit)
    target = total / count
    position = {id(item): index for index, item in enumerate(items)}
    # The values crossing each cut (cut k: between items k-1 and k).
    crossing: list[set[tuple[int, int]]] = [set() for _ in range(len(items) + 1)]
    for edge in scene.edges:
        start, end = position[id(edge.source)], position[id(edge.target)]
        for k in range(start + 1, end + 1):
            crossing[k].add((edge.ref.node, edge.ref.index))
    inside = [0] * (len(items) + 1)  # blocks a cut would split
    for k in range(1, len(items)):
        before, after = items[k - 1].nodes, items[k].nodes
        if before and after:
            a, b = before[-1], after[0]
            inside[k] = sum(
                1 for g in _row_groups(scene.graph.root) if g.first <= a.index and b.index <= g.last
            )
    columns: list[list[_Item]] = []
    start = 0
    while start < len(items):
        low = rank[id(items[start])]
        if max(rank[id(i)] for i in items[start:]) - low < target * 1.3:
            columns.append(items[start:])
            break
        best: tuple[float, int] | None = None
        for k in range(start + 1, len(items)):
            span = rank[id(items[k - 1])] - low + 1
            if span < target * 0.6:
                continue
            if span > target * 1.3:
                break
            if len(crossing[k]) > MAX_CROSSING:
                continue
            cost = 10 * len(crossing[k]) + 2 * inside[k] + abs(span - target) / target * 4
            if best is None or cost < best[0]:
                best = (cost, k)
        if best is None:
            columns.append(items[start:])
            break
        columns.append(items[start : best[1]])
        start = best[1]
    return columns


def _row_groups(group: Group) -> list[Group]:
    found = []
    for member in group.members:
        if isinstance(member, Group):
            if member.row:
                found.append(member)
            found += _row_groups(member)
    return found


# -- running dot and putting the picture together ----------------------------------------


def _run_dot(source: str) -> str:
    dot = shutil.which("dot")
    if dot is None:
        raise ConvCalcError(GRAPHVIZ_MISSING)
    try:
        done = subprocess.run(
            [dot, "-Tsvg"],
            input=source.encode("utf-8"),
            capture_output=True,
            timeout=DOT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConvCalcError(
            f"Graphviz's dot did not lay the picture out within {DOT_TIMEOUT} s; "
            "try --depth 1 or 2 to draw blocks as one box"
        ) from None
    except OSError as error:
        raise ConvCalcError(f"{GRAPHVIZ_MISSING} ({error})") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip()
        raise ConvCalcError(f"Graphviz's dot failed: {message}")
    return done.stdout.decode("utf-8")


SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
ET.register_namespace("", SVG_NS)
ET.register_namespace("xlink", XLINK_NS)


@dataclass
class _Laid:
    """One column as dot drew it: its elements and size in px."""

    root: ET.Element
    width: float
    height: float


def _lay_out(source: str) -> _Laid:
    root = ET.fromstring(_run_dot(source))
    _, _, width, height = (float(v) for v in root.get("viewBox", "0 0 0 0").split())
    for element in root.iter():
        element.attrib.pop("id", None)
    for group in root.iter(f"{{{SVG_NS}}}g"):  # tooltips: dot's <title> names our ids
        anchor = group.find(f"{{{SVG_NS}}}g/{{{SVG_NS}}}a")
        if anchor is not None and anchor.get(f"{{{XLINK_NS}}}title"):
            title = group.find(f"{{{SVG_NS}}}title")
            if title is not None:
                title.text = anchor.get(f"{{{XLINK_NS}}}title")
    _unwrap_anchors(root)
    return _Laid(root, width, height)


def _unwrap_anchors(element: ET.Element) -> None:
    """dot wraps nodes with a tooltip in <g><a xlink:title=…>; keep what they hold (the
    tooltip is the node's <title>), so the SVG needs no xlink."""
    for index, child in enumerate(list(element)):
        if child.tag == f"{{{SVG_NS}}}g" and child.get("class") is None:
            anchors = [c for c in child if c.tag == f"{{{SVG_NS}}}a"]
            if len(anchors) == 1 and len(child) == 1:
                element.remove(child)
                for offset, grandchild in enumerate(list(anchors[0])):
                    element.insert(index + offset, grandchild)
                _unwrap_anchors(element)
                return
        _unwrap_anchors(child)


def svg_picture(network: Network, report: Report, depth: int | None = None) -> str:
    """The network as an SVG element."""
    if shutil.which("dot") is None:
        raise ConvCalcError(GRAPHVIZ_MISSING)
    graph = lower(network)
    scene = _Scene(graph, report, depth)
    columns = _columns(scene)
    where = {id(item): number + 1 for number, column in enumerate(columns) for item in column}
    laid = []
    for number, column in enumerate(columns):
        dot = _Dot(scene, column, number + 1, len(columns))
        dot.column_of = where if len(columns) > 1 else {}
        laid.append(_lay_out(dot.source()))
    return _compose(scene, report, laid)


def _compose(scene: _Scene, report: Report, laid: list[_Laid]) -> str:
    margin = 12
    totals = report.totals
    inputs = ", ".join(f"{k} {shape_text(v)}" for k, v in report.input_shapes.items())
    outputs = ", ".join(f"{k} {shape_text(v)}" for k, v in report.outputs.items())
    if len(report.input_shapes) <= 1:
        inputs = "input " + shape_text(report.input_shape)
    if len(report.outputs) <= 1:
        outputs = "output " + shape_text(report.output_shape)
    titles = [
        f"{report.name}: {totals.params:,} params, {totals.macs:,} MACs",
        f"{inputs} → {outputs}",
    ]
    graph_width = sum(c.width for c in laid) + COLUMN_GAP * (len(laid) - 1)
    width = max(graph_width, 480, len(titles[0]) * 7.4, len(titles[1]) * 6.2) + 2 * margin
    if len(" — ".join(titles)) * 7.4 < width - 2 * margin:
        titles = [" — ".join(titles)]
    legend, legend_height = _legend(
        scene, margin, margin + 18 * len(titles) + 6, width - 2 * margin
    )
    top = margin + 18 * len(titles) + 6 + legend_height + 8
    height = top + max(c.height for c in laid) + margin
    svg = ET.Element(
        f"{{{SVG_NS}}}svg",
        {
            "width": f"{width:.0f}",
            "height": f"{height:.0f}",
            "viewBox": f"0 0 {width:.0f} {height:.0f}",
            "font-family": FONT,
            "font-size": "10",
            "role": "img",
            "aria-label": report.name,
        },
    )
    _el(svg, "rect", width=f"{width:.0f}", height=f"{height:.0f}", fill="white")
    for number, line in enumerate(titles):
        size, weight = ("13", "600") if number == 0 else ("11", "400")
        y = f"{margin + 10 + 18 * number}"
        _el(svg, "text", line, x=str(margin), y=y, font_size=size, font_weight=weight)
    svg.append(legend)
    x = float(margin)
    for number, column in enumerate(laid):
        if number:
            rule = f"{x - COLUMN_GAP / 2:.1f}"
            _el(svg, "line", x1=rule, x2=rule, y1=f"{top:.1f}", y2=f"{height - margin:.1f}",
                stroke="#e2e2e2")  # fmt: skip
        inner = ET.SubElement(
            svg,
            f"{{{SVG_NS}}}svg",
            {
                "x": f"{x:.1f}",
                "y": f"{top:.1f}",
                "width": f"{column.width:.1f}",
                "height": f"{column.height:.1f}",
                "viewBox": column.root.get("viewBox", ""),
                "class": "column",
            },
        )
        for child in column.root:
            inner.append(child)
        x += column.width + COLUMN_GAP
    return ET.tostring(svg, encoding="unicode")


def _el(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    """An SVG element (``font_size`` is written font-size, and so on)."""
    element = ET.SubElement(
        parent, f"{{{SVG_NS}}}{tag}", {k.replace("_", "-"): v for k, v in attributes.items()}
    )
    element.text = text
    return element


def _legend(scene: _Scene, x0: float, y0: float, width: float) -> tuple[ET.Element, float]:
    """Swatches for the colours and symbols the picture uses, in rows."""
    families: list[str] = []
    merges: list[str] = []
    for item in scene.items:
        if item.kind == "box":
            node = item.nodes[0]
            family = _family(scene.row(node).type, node.layer)
        elif item.kind == "merge":
            kind = _merge_kind(item.nodes[0]) or "add"
            if kind not in merges:
                merges.append(kind)
            continue
        else:
            family = "block" if item.kind == "block" else "io"
        if family not in families:
            families.append(family)
    order = list(FAMILIES)
    families.sort(key=order.index)
    merges.sort(key=list(MERGES).index)
    legend = ET.Element(f"{{{SVG_NS}}}g", {"class": "legend"})  # a <g> without a box
    x, y = x0, y0
    entries: list[tuple[str, str, str]] = [("family", f, FAMILIES[f][0]) for f in families]
    entries += [("merge", m, MERGES[m][1]) for m in merges]
    entries.append(("note", "", "swatch: height ∝ log spatial size, width ∝ log channels"))
    if any(
        item.kind == "box" and getattr(item.nodes[0].layer, "kernel_size", None) is not None
        for item in scene.items
    ):
        entries.append(("note", "", "k×k sS dD: kernel, stride, dilation; dw depthwise"))
    for kind, key, text in entries:
        step = 16 + len(text) * 5.6 + 14
        wrap = x + step > x0 + width or (kind == "note" and "swatch" in text)
        if wrap and x > x0:
            x, y = x0, y + 16
        line = {"stroke": "#666", "stroke_width": "0.6"}
        if kind == "family":
            dash = {"stroke_dasharray": "3 2"} if key == "block" else {}
            _el(legend, "rect", x=f"{x:.1f}", y=f"{y:.1f}", width="11", height="11", rx="2",
                fill=FAMILIES[key][1], **line, **dash)  # fmt: skip
        elif kind == "merge":
            symbol, _, fill = MERGES[key]
            if key == "split":
                points = f"{x:.1f},{y + 1:.1f} {x + 11:.1f},{y + 1:.1f} {x + 5.5:.1f},{y + 10:.1f}"
                _el(legend, "polygon", points=points, fill=fill, **line)
            else:
                cx = f"{x + 5.5:.1f}"
                _el(legend, "circle", cx=cx, cy=f"{y + 5.5:.1f}", r="6", fill=fill, **line)
                _el(legend, "text", symbol, x=cx, y=f"{y + 9:.1f}", text_anchor="middle")
        note = kind == "note"
        _el(legend, "text", text, x=f"{x + (0 if note else 16):.1f}", y=f"{y + 9:.1f}",
            fill="#666" if note else "#333")  # fmt: skip
        x += step if kind != "note" else step - 16
    return legend, y - y0 + 14
