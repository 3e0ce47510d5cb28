"""Specs out as plain PyTorch code: one standalone file, importing only torch, defining
one ``nn.Module`` class.

The module's structure is ``build_module``'s, written out with torch's own containers:
``self.layers`` is an ``nn.Sequential``; a residual block is an ``nn.ModuleDict`` with
``body`` and ``shortcut``, a concat block one with ``branches``. So its parameter names
are the report's paths (``layers.4.0.body.0.weight``) and weights trained with
``convcalc train`` (``model.pt``) load into it unchanged.
"""

from __future__ import annotations

import keyword
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from convcalc.analysis import analyze
from convcalc.formatting import shape_text
from convcalc.graph import Graph, Group, Node, Ref, lower
from convcalc.loader import load_spec
from convcalc.merges import Split
from convcalc.report import Report
from convcalc.spec import Network
from convcalc.torch_bridge import INFERRED_FIELDS, torch_arguments

__all__ = ["export_pytorch"]

INDENT = "    "


def export_pytorch(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Network, class_name: str | None = None
) -> str:
    """The source of a Python module defining the spec as one ``nn.Module`` class."""
    network = load_spec(spec)
    report = analyze(network)
    graph = lower(network)
    name = class_name or _class_name(network.name)
    writer = _Writer(report, graph)
    layers = writer.container(graph.root).render(depth=2)
    body, arguments, returned = writer.forward()
    totals = report.totals
    sample = list(report.input_shape[1:])
    source = f" from {network.source}" if network.source and network.source != "<dict>" else ""
    inputs = [
        f"{key}: [N, {', '.join(map(str, shape[1:]))}]"
        for key, shape in report.input_shapes.items()
    ]
    outputs = [
        f"{key}: {shape_text(('N', *shape[1:]))}"  # type: ignore[arg-type]
        for key, shape in report.outputs.items()
    ]
    lines = [
        f'"""{network.name}, written out by convcalc{source}.',
        "",
        f"Input: [N, {', '.join(map(str, sample))}] (one sample: {sample})."
        if len(inputs) == 1
        else f"Inputs: {'; '.join(inputs)}.",
        f"Output: {shape_text(('N', *report.output_shape[1:]))}."  # type: ignore[arg-type]
        if len(outputs) == 1
        else f"Outputs (a tuple): {'; '.join(outputs)}.",
        f"Parameters: {totals.params:,} ({totals.trainable_params:,} trainable).",
        f"MACs: {totals.macs // report.input_shape[0]:,} per sample (conv, transposed conv "
        "and linear; FLOPs = 2 × MACs).",
        '"""',
        "",
        "import torch",
        "from torch import nn",
        "",
        "",
        *_custom_sources(writer.custom_classes),
        f"class {name}(nn.Module):",
        f'{INDENT}"""{network.name}: see the module docstring."""',
        "",
        f"{INDENT}def __init__(self) -> None:",
        f"{INDENT * 2}super().__init__()",
        f"{INDENT * 2}self.layers = {layers}",
        *(f"{INDENT * 2}{line}" for line in writer.frozen),
        "",
        f"{INDENT}def forward(self, {arguments}) -> "
        f"{'torch.Tensor' if len(outputs) == 1 else 'tuple[torch.Tensor, ...]'}:",
        *body,
        f"{INDENT * 2}return {returned}",
        "",
        "",
        'if __name__ == "__main__":',
        f"{INDENT}model = {name}()",
        f"{INDENT}outputs = model("
        + ", ".join(
            f"torch.zeros({', '.join(map(str, shape))})" for shape in report.input_shapes.values()
        )
        + ")",
        f"{INDENT}print(outputs.shape)"
        if len(outputs) == 1
        else f"{INDENT}print([output.shape for output in outputs])",
        "",
    ]
    return "\n".join(lines)


@dataclass
class _Call:
    """A container constructor in ``__init__``: ``nn.Sequential(...)`` and friends."""

    function: str
    items: list[_Call | str] = field(default_factory=list)  # str: a leaf's constructor
    entries: dict[str, _Call] | None = None  # nn.ModuleDict({...})
    as_list: bool = False  # nn.ModuleList([...])

    def render(self, depth: int) -> str:
        pad, end = INDENT * (depth + 1), INDENT * depth
        if self.entries is not None:
            lines = [f"{self.function}(", f"{pad}{{"]
            lines += [
                f'{pad}{INDENT}"{key}": {value.render(depth + 2)},'
                for key, value in self.entries.items()
            ]
            return "\n".join([*lines, f"{pad}}}", f"{end})"])
        if not self.items:
            return f"{self.function}()"
        inner = depth + 2 if self.as_list else depth + 1
        items = [
            _comma(item if isinstance(item, str) else item.render(inner)) for item in self.items
        ]
        if self.as_list:
            body = [f"{pad}[", *(f"{pad}{INDENT}{item}" for item in items), f"{pad}]"]
        else:
            body = [f"{pad}{item}" for item in items]
        return "\n".join([f"{self.function}(", *body, f"{end})"])


class _Writer:
    def __init__(self, report: Report, graph: Graph) -> None:
        self.rows = {row.path: row for row in report.rows}
        self.graph = graph
        self.frozen: list[str] = []  # requires_grad_(False) for trainable: false
        self.custom_classes: set[str] = set()  # convcalc.torch_modules classes used

    # -- __init__: the containers, nested as build_module nests them --------------------

    def container(self, group: Group) -> _Call:
        if group.layer is not None and not group.layer.trainable and group.row:
            self.frozen.append(f"{_access('self.layers', group.path)}.requires_grad_(False)")
        children: dict[str, _Call | str] = {}
        for member in group.members:
            if isinstance(member, Node):
                if member.join is None:
                    children[member.path[len(group.path) + 1 :]] = self.leaf(member)
            else:
                children[member.path[len(group.path) + 1 :]] = self.container(member)
        if all(key.isdigit() for key in children):
            return _Call("nn.Sequential", list(children.values()))
        entries: dict[str, _Call] = {}
        for key, child in children.items():
            head, dot, _ = key.partition(".")
            if dot:  # branches.0, branches.1, ...: one ModuleList
                entries.setdefault(head, _Call("nn.ModuleList", as_list=True)).items.append(child)
            else:
                assert isinstance(child, _Call)
                entries[key] = child
        return _Call("nn.ModuleDict", entries=entries)

    def leaf(self, node: Node) -> str:
        layer = node.leaf
        module = _access("self.layers", node.path)
        if not layer.trainable:
            self.frozen.append(f"{module}.requires_grad_(False)")
        for tensor in layer.frozen:  # frozen: [bias], say
            self.frozen.append(f"{module}.{tensor}.requires_grad_(False)")
        arguments = torch_arguments(layer, self.rows[node.path].input_shape)
        inferred = [key for key in arguments if key in INFERRED_FIELDS]
        order = inferred + [key for key in arguments if key not in inferred]
        text = ", ".join(f"{key}={_literal(arguments[key])}" for key in order)
        comment = f"  # {layer.name}" if layer.name else ""
        if layer.custom_module:  # torch.nn lacks it: its class is written out too
            self.custom_classes.add(layer.torch_name)
            return f"{layer.torch_name}({text}){comment}"
        return f"nn.{layer.torch_name}({text}){comment}"

    # -- forward: straight-line code over the graph -------------------------------------

    def forward(self) -> tuple[list[str], str, str]:
        """The statements of ``forward``, its parameters and what it returns."""
        graph = self.graph
        pad = INDENT * 2
        names: dict[int, str] = {}
        taken: set[str] = {"self", "torch", "nn", "x", "inputs"}
        readers: dict[int, list[int]] = {}
        for node in graph.nodes:
            for ref in node.inputs:
                readers.setdefault(ref.node, []).append(node.index)
        outputs = {ref.node for ref in graph.outputs.values()}

        def variable(node: Node) -> str:
            # the running value x, unless something other than the next node reads it
            if readers.get(node.index) == [node.index + 1] and node.index not in outputs:
                return "x"
            name = node.layer.name if node.layer is not None and node.layer.name else None
            base = _identifier(name or f"x{node.index}")
            text, count = base, 1
            while text in taken:
                count += 1
                text = f"{base}_{count}"
            taken.add(text)
            return text

        for ref in graph.inputs.values():
            node = graph.nodes[ref.node]
            names[node.index] = "x" if len(graph.inputs) == 1 else variable(node)
        arguments = ", ".join(f"{names[ref.node]}: torch.Tensor" for ref in graph.inputs.values())

        def read(ref: Ref) -> str:
            tuple_valued = isinstance(graph.nodes[ref.node].layer, Split)  # even one piece
            return f"{names[ref.node]}[{ref.index}]" if tuple_valued else names[ref.node]

        lines: list[str] = []
        for node in graph.nodes:
            if node.is_input:
                continue
            values = ", ".join(read(ref) for ref in node.inputs)
            target = variable(node)
            if node.join == "residual":
                row = self.rows[node.path]
                expression = " + ".join(read(ref) for ref in node.inputs)
                comment = f"{row.label}: residual → {shape_text(row.output_shape)}"
            elif node.join == "concat":
                row = self.rows[node.path]
                expression = f"torch.cat([{values}], dim=1)"
                comment = f"{row.label}: concat → {shape_text(row.output_shape)}"
            else:
                row = self.rows[node.path]
                expression = f"{_access('self.layers', node.path)}({values})"
                shapes = row.output_shapes or (row.output_shape,)
                comment = f"{row.label} → {', '.join(shape_text(s) for s in shapes)}"
            lines.append(f"{pad}{target} = {expression}  # {comment}")
            names[node.index] = target
        returned = ", ".join(read(ref) for ref in graph.outputs.values())
        return lines, arguments, returned


def _identifier(name: str) -> str:
    """A Python name for a layer name: ``p3``, ``stage_2``."""
    text = re.sub(r"\W", "_", name)
    if not text or text[0].isdigit() or keyword.iskeyword(text):
        text = "x_" + text
    return text


def _custom_sources(names: set[str]) -> list[str]:
    """The source of each convcalc.torch_modules class used, followed by two blank lines."""
    if not names:
        return []
    import inspect

    from convcalc import torch_modules

    classes: list[type] = []
    for name in sorted(names):  # each class after the convcalc classes it derives from
        for cls in reversed(getattr(torch_modules, name).__mro__):
            if cls.__module__ == torch_modules.__name__ and cls not in classes:
                classes.append(cls)
    lines: list[str] = []
    for cls in classes:
        lines += [inspect.getsource(cls).rstrip("\n"), "", ""]
    return lines


def _access(root: str, path: str) -> str:
    """``self.layers[4][0]["body"][0]`` for the path ``layers.4.0.body.0``."""
    parts = path.split(".")[1:]
    text = root
    for part in parts:
        text += f"[{part}]" if part.isdigit() else f'["{part}"]'
    return text


def _comma(item: str) -> str:
    """``item,``, the comma before the last line's trailing comment if it has one."""
    *lines, last = item.split("\n")
    code, hash_, comment = last.partition("  # ")
    return "\n".join([*lines, f"{code},  # {comment}" if hash_ else f"{last},"])


def _literal(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def _class_name(name: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", name)
    text = "".join(word[:1].upper() + word[1:] for word in words) or "Network"
    if text[0].isdigit() or keyword.iskeyword(text):
        text = "Net" + text
    return text
