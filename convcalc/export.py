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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from convcalc.analysis import analyze
from convcalc.formatting import shape_text
from convcalc.layers import Leaf
from convcalc.loader import load_spec
from convcalc.report import Report
from convcalc.spec import Block, Concat, LayerSpec, Network, Repeat, Residual, Sequential
from convcalc.torch_bridge import INFERRED_FIELDS, torch_arguments

__all__ = ["export_pytorch"]

INDENT = "    "


def export_pytorch(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Network, class_name: str | None = None
) -> str:
    """The source of a Python module defining the spec as one ``nn.Module`` class."""
    network = load_spec(spec)
    report = analyze(network)
    name = class_name or _class_name(network.name)
    writer = _Writer(report)
    layers = writer.sequence(network.layers, "layers").render(depth=2)
    body = writer.forward_sequence(network.layers, "self.layers", "layers", "x", depth=2)
    totals = report.totals
    sample = list(report.input_shape[1:])
    source = f" from {network.source}" if network.source and network.source != "<dict>" else ""
    lines = [
        f'"""{network.name}, written out by convcalc{source}.',
        "",
        f"Input: [N, {', '.join(map(str, sample))}] (one sample: {sample}).",
        f"Output: {shape_text(('N', *report.output_shape[1:]))}.",  # type: ignore[arg-type]
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
        f"{INDENT}def forward(self, x: torch.Tensor) -> torch.Tensor:",
        *body,
        f"{INDENT * 2}return x",
        "",
        "",
        'if __name__ == "__main__":',
        f"{INDENT}model = {name}()",
        f"{INDENT}print(model(torch.zeros({', '.join(map(str, report.input_shape))})).shape)",
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
    def __init__(self, report: Report) -> None:
        self.rows = {row.path: row for row in report.rows}
        self.frozen: list[str] = []  # requires_grad_(False) for trainable: false
        self.names = 0
        self.custom_classes: set[str] = set()  # convcalc.torch_modules classes used

    # -- __init__: the containers, nested ----------------------------------------------

    def sequence(self, layers: Sequence[LayerSpec], prefix: str) -> _Call:
        return _Call(
            "nn.Sequential",
            [self.layer(layer, f"{prefix}.{i}") for i, layer in enumerate(layers)],
        )

    def layer(self, layer: LayerSpec, path: str) -> _Call | str:
        if not layer.trainable:
            self.frozen.append(f"{_access('self.layers', path)}.requires_grad_(False)")
        if isinstance(layer, Leaf):
            arguments = torch_arguments(layer, self.rows[path].input_shape)
            inferred = [key for key in arguments if key in INFERRED_FIELDS]
            order = inferred + [key for key in arguments if key not in inferred]
            text = ", ".join(f"{key}={_literal(arguments[key])}" for key in order)
            comment = f"  # {layer.name}" if layer.name else ""
            if layer.custom_module:  # torch.nn lacks it: its class is written out too
                self.custom_classes.add(layer.torch_name)
                return f"{layer.torch_name}({text}){comment}"
            return f"nn.{layer.torch_name}({text}){comment}"
        return self.block(layer, path)

    def block(self, block: Block, path: str) -> _Call:
        if isinstance(block, Sequential):
            return self.sequence(block.layers, path)
        if isinstance(block, Repeat):
            if len(block.layers) == 1:
                return self.sequence(block.layers * block.times, path)
            copies = [self.sequence(block.layers, f"{path}.{copy}") for copy in range(block.times)]
            return _Call("nn.Sequential", list(copies))
        if isinstance(block, Residual):
            entries = {
                "body": self.sequence(block.layers, f"{path}.body"),
                "shortcut": self.sequence(block.shortcut, f"{path}.shortcut"),
            }
            return _Call("nn.ModuleDict", entries=entries)
        assert isinstance(block, Concat)
        branches = [
            self.sequence(branch, f"{path}.branches.{i}") for i, branch in enumerate(block.branches)
        ]
        return _Call(
            "nn.ModuleDict",
            entries={"branches": _Call("nn.ModuleList", list(branches), as_list=True)},
        )

    # -- forward: the data flow ----------------------------------------------------------

    def forward_sequence(
        self, layers: Sequence[LayerSpec], expression: str, prefix: str, value: str, depth: int
    ) -> list[str]:
        """Statements that run ``layers`` (the container ``expression``) on ``value``."""
        pad = INDENT * depth
        if all(isinstance(layer, Leaf) for layer in layers):
            if not layers:
                return []
            last = self.rows[f"{prefix}.{len(layers) - 1}"]
            return [f"{pad}{value} = {expression}({value})  # → {shape_text(last.output_shape)}"]
        lines: list[str] = []
        if "[" in expression and len(layers) > 1:  # a short name for a nested container
            self.names += 1
            alias = f"seq{self.names}"
            lines.append(f"{pad}{alias} = {expression}  # {prefix}")
            expression = alias
        for index, layer in enumerate(layers):
            path = f"{prefix}.{index}"
            item = f"{expression}[{index}]"
            row = self.rows[path]
            if isinstance(layer, Leaf):
                lines.append(f"{pad}{value} = {item}({value})  # {row.label} → "
                             f"{shape_text(row.output_shape)}")  # fmt: skip
            else:
                lines += self.forward_block(layer, item, path, value, depth)
        return lines

    def forward_block(
        self, block: Block, expression: str, path: str, value: str, depth: int
    ) -> list[str]:
        pad = INDENT * depth
        row = self.rows[path]
        if isinstance(block, Sequential):
            return self.forward_sequence(block.layers, expression, path, value, depth)
        if isinstance(block, Repeat):
            if len(block.layers) == 1:
                return self.forward_sequence(
                    block.layers * block.times, expression, path, value, depth
                )
            lines = []
            for copy in range(block.times):
                lines += self.forward_sequence(
                    block.layers, f"{expression}[{copy}]", f"{path}.{copy}", value, depth
                )
            return lines
        self.names += 1
        branch = f"branch{self.names}"
        lines = [f"{pad}# {row.label}: {block.type} → {shape_text(row.output_shape)}"]
        if isinstance(block, Residual):
            lines.append(f"{pad}{branch} = {value}")
            lines += self.forward_sequence(
                block.shortcut, f'{expression}["shortcut"]', f"{path}.shortcut", branch, depth
            )
            lines += self.forward_sequence(
                block.layers, f'{expression}["body"]', f"{path}.body", value, depth
            )
            lines.append(f"{pad}{value} = {value} + {branch}")
            return lines
        assert isinstance(block, Concat)
        outputs = []
        for i, layers in enumerate(block.branches):
            name = f"{branch}_{i}"
            outputs.append(name)
            lines.append(f"{pad}{name} = {value}")
            lines += self.forward_sequence(
                layers, f'{expression}["branches"][{i}]', f"{path}.branches.{i}", name, depth
            )
        lines.append(f"{pad}{value} = torch.cat([{', '.join(outputs)}], dim=1)")
        return lines


def _custom_sources(names: set[str]) -> list[str]:
    """The source of each convcalc.torch_modules class used, followed by two blank lines."""
    if not names:
        return []
    import inspect

    from convcalc import torch_modules

    lines: list[str] = []
    for name in sorted(names):
        lines += [inspect.getsource(getattr(torch_modules, name)).rstrip("\n"), "", ""]
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
