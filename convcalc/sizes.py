"""Which input sizes pass through a whole network: no error, and no input pixel
dropped by floor division (the "input must be a multiple of 32" question).

Every candidate size S gives the input ``[C, S, …, S]``, or, with ``vary``, S in the
spatial dimensions it names and the spec's sizes in the others (``vary=["H", "W"]`` on a
``[C, D, H, W]`` input keeps the frame count D); the layers' own shape rules
(``Leaf.infer``) decide, exactly as ``analyze`` would, but without building rows or
receptive fields, and with each layer's answer for a given incoming shape computed
once: deep layers see the same shape for many input sizes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from convcalc.analysis import node_result, output_problem
from convcalc.errors import ConvCalcError, ShapeError
from convcalc.graph import Node, lower
from convcalc.layers import SPATIAL_NAMES, LayerResult
from convcalc.loader import load_spec
from convcalc.spec import Network

__all__ = ["SizeCheck", "SizesReport", "check_sizes"]

Shape = tuple[int, ...]
Template = tuple[int | None, ...]  # a sample shape, None where the size S goes
Status = Literal["ok", "drops", "error"]


@dataclass(frozen=True, slots=True)
class SizeCheck:
    """What one input size does: ``ok``, ``drops`` pixels, or ends in an ``error``."""

    size: int
    status: Status
    output_shape: Shape | None = None
    path: str | None = None  # the layer that fails, or the first one that drops pixels
    name: str | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "status": self.status,
            "output_shape": None if self.output_shape is None else list(self.output_shape),
            "path": self.path,
            "name": self.name,
            "message": self.message,
        }


@dataclass(frozen=True)
class SizesReport:
    name: str
    input: Template  # one sample's shape, None where the size S goes
    batch_size: int
    checks: tuple[SizeCheck, ...]

    @property
    def channels(self) -> int:
        return self.input[0] or 0

    @property
    def dims(self) -> int:
        """How many spatial dimensions the input has (varied or not)."""
        return len(self.input) - 1

    def input_shape(self, size: int) -> Shape:
        """One sample's shape for the candidate ``size``.

        >>> SizesReport("c3d", (3, 16, None, None), 1, ()).input_shape(112)
        (3, 16, 112, 112)
        """
        return _fill(self.input, size)

    @property
    def valid(self) -> list[int]:
        return [c.size for c in self.checks if c.status == "ok"]

    @property
    def smallest(self) -> int | None:
        return self.valid[0] if self.valid else None

    @property
    def step(self) -> int | None:
        """g when the valid sizes are exactly the multiples of g from the smallest on."""
        valid = self.valid
        if len(valid) < 2:
            return None
        step = math.gcd(*valid)
        last = self.checks[-1].size
        return step if valid == list(range(valid[0], last + 1, step)) else None

    def runs(self) -> list[tuple[SizeCheck, SizeCheck]]:
        """(first, last) of each run of consecutive sizes with the same answer and layer."""
        runs: list[tuple[SizeCheck, SizeCheck]] = []
        for check in self.checks:
            if runs and (runs[-1][0].status, runs[-1][0].path) == (check.status, check.path):
                runs[-1] = (runs[-1][0], check)
            else:
                runs.append((check, check))
        return runs

    def summary(self) -> str:
        first, last = self.checks[0].size, self.checks[-1].size
        valid = self.valid
        if not valid:
            return f"no size from {first} to {last} passes without an error or dropped pixels"
        step = self.step
        which = (
            f"every size from {valid[0]} to {valid[-1]}"
            if step == 1
            else f"every multiple of {step} from {valid[0]} to {valid[-1]}"
            if step
            else ", ".join(map(str, valid[:12])) + (", …" if len(valid) > 12 else "")
        )
        verb = "passes" if len(valid) == 1 else "pass"
        return (
            f"{len(valid)} of the sizes from {first} to {last} {verb} without an error or "
            f"dropped pixels: {which}; the smallest is {valid[0]}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input": ["S" if n is None else n for n in self.input],
            "valid": self.valid,
            "smallest": self.smallest,
            "step": self.step,
            "sizes": [check.to_dict() for check in self.checks],
        }

    def render(self, format: str = "table") -> str:
        """``table``, ``markdown`` or ``json``."""
        if format == "json":
            return json.dumps(self.to_dict(), indent=2) + "\n"
        from tabulate import tabulate

        rows = []
        for first, last in self.runs():
            sizes = str(first.size) if first is last else f"{first.size}–{last.size}"
            layer = "" if first.path is None else first.path
            if first.name:
                layer += f" ({first.name})"
            result = {"ok": "ok", "drops": "drops pixels", "error": "error"}[first.status]
            detail = first.message
            if first.status == "ok" and first.output_shape is not None:
                detail = "output [" + ", ".join(map(str, first.output_shape)) + "]"
            rows.append([sizes, result, layer, detail])
        headers = ["S", "result", "first layer", "at the first size of the run"]
        table = tabulate(
            rows,
            headers,
            tablefmt="pipe" if format == "markdown" else "simple",
            disable_numparse=True,
        )
        sample = ", ".join("S" if n is None else str(n) for n in self.input)
        title = f"{self.name}: input [{self.batch_size}, {sample}]"
        return f"{title}\n{self.summary()}\n\n{table}\n"


class _Walker:
    """Shapes only, over the graph, with each node's answer per input shapes remembered."""

    def __init__(self, network: Network, vary: frozenset[str] | None) -> None:
        self.network = network
        self.graph = lower(network)
        self.inputs = {
            path: _template(sample, vary) for path, sample in network.input_shapes.items()
        }
        self.results: dict[tuple[int, tuple[Shape, ...]], LayerResult | str] = {}

    def check(self, size: int) -> SizeCheck:
        network = self.network
        graph = self.graph
        values: list[tuple[Shape, ...]] = []
        dropped: tuple[Node, str] | None = None
        for node in graph.nodes:
            if node.is_input:
                values.append(((network.batch_size, *_fill(self.inputs[node.path], size)),))
                continue
            shapes = []
            for ref in node.inputs:
                problem = output_problem(graph, ref, len(values[ref.node]))
                if problem:
                    return self.error(size, node, problem)
                shapes.append(values[ref.node][ref.index])
            key = (node.index, tuple(shapes))
            result = self.results.get(key)
            if result is None:
                try:
                    result = node_result(node, shapes)
                except ShapeError as error:
                    result = error.first.message
                self.results[key] = result
            if isinstance(result, str):
                return self.error(size, node, result)
            if result.dropped and not node.in_shortcut and dropped is None:
                dropped = (node, result.dropped)
            values.append((result.output_shape, *result.extra_outputs))
        first = next(iter(graph.outputs.values()))
        out = values[first.node][first.index]
        if dropped is not None:
            node, message = dropped
            return SizeCheck(size, "drops", out, node.path, _name(node), message)
        return SizeCheck(size, "ok", out)

    def error(self, size: int, node: Node, message: str) -> SizeCheck:
        return SizeCheck(size, "error", None, node.path, _name(node), message)


def _name(node: Node) -> str | None:
    return node.layer.name if node.layer is not None else None


def check_sizes(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Network,
    sizes: Sequence[int] | range | None = None,
    vary: Sequence[str] | str | None = None,
) -> SizesReport:
    """Every candidate input size (default 1 to 1024, or to the spec's own size when
    larger) through the whole network, in every spatial dimension, or in those ``vary``
    names (``["H", "W"]`` or ``"H,W"``: the spec format's names, L of ``[C, L]``, H and
    W of ``[C, H, W]``, D, H and W of ``[C, D, H, W]``); the others keep the spec's size."""
    network = load_spec(spec)
    sample = tuple(network.input)
    if len(sample) < 2:
        raise ConvCalcError(
            f"{network.source}: the input {list(sample)} has no spatial dimension to vary"
        )
    chosen = None if vary is None else _chosen(sample, vary)
    template = _template(sample, chosen)
    if sizes is None:
        sizes = range(1, max(1024, *(n for n, t in zip(sample, template) if t is None)) + 1)
    walker = _Walker(network, chosen)
    checks = tuple(walker.check(size) for size in sizes)
    return SizesReport(network.name, template, network.batch_size, checks)


def _chosen(sample: Shape, vary: Sequence[str] | str) -> frozenset[str]:
    """The dimension names in ``vary``, checked against the input's layout."""
    names = SPATIAL_NAMES.get(len(sample) - 1)
    if names is None:
        raise ConvCalcError(
            f"the input {list(sample)} has more spatial dimensions than the names D, H, W; "
            "vary them all"
        )
    given = [name.strip() for name in (vary.split(",") if isinstance(vary, str) else vary)]
    layout = f"[C, {', '.join(names)}]"
    choice = " or ".join(", ".join(names).rsplit(", ", 1))
    if not given or not all(given):
        raise ConvCalcError(f"name the dimensions to vary among {', '.join(names)}, with commas")
    for name in given:
        if name.upper() not in names:
            what = f"{name}, the channels" if name.upper() == "C" else name
            raise ConvCalcError(f"cannot vary {what}: choose {choice} of the {layout} input")
    return frozenset(name.upper() for name in given)


def _template(sample: Shape, vary: frozenset[str] | None) -> Template:
    """``sample`` with None in the dimensions that take the size S (all but the
    channels when ``vary`` is None).

    >>> _template((3, 16, 112, 112), frozenset({"H", "W"}))
    (3, 16, None, None)
    """
    spatial = sample[1:]
    names = SPATIAL_NAMES.get(len(spatial), ("",) * len(spatial))
    return (
        sample[0],
        *(None if vary is None or name in vary else n for name, n in zip(names, spatial)),
    )


def _fill(template: Template, size: int) -> Shape:
    return tuple(size if n is None else n for n in template)
