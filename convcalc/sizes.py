"""Which input sizes pass through a whole network: no error, and no input pixel
dropped by floor division (the "input must be a multiple of 32" question).

Every candidate size S gives the input ``[C, S, …, S]``; the layers' own shape rules
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
from convcalc.layers import LayerResult
from convcalc.loader import load_spec
from convcalc.spec import Network

__all__ = ["SizeCheck", "SizesReport", "check_sizes"]

Shape = tuple[int, ...]
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
    channels: int
    dims: int
    batch_size: int
    checks: tuple[SizeCheck, ...]

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
            "input": [self.channels, *(["S"] * self.dims)],
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
        spatial = ", ".join(["S"] * self.dims)
        title = f"{self.name}: input [{self.batch_size}, {self.channels}, {spatial}]"
        return f"{title}\n{self.summary()}\n\n{table}\n"


class _Walker:
    """Shapes only, over the graph, with each node's answer per input shapes remembered."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.graph = lower(network)
        self.results: dict[tuple[int, tuple[Shape, ...]], LayerResult | str] = {}

    def check(self, size: int) -> SizeCheck:
        network = self.network
        graph = self.graph
        values: list[tuple[Shape, ...]] = []
        dropped: tuple[Node, str] | None = None
        for node in graph.nodes:
            if node.is_input:
                sample = network.input_shapes[node.path]
                values.append(((network.batch_size, sample[0], *([size] * (len(sample) - 1))),))
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
) -> SizesReport:
    """Every candidate input size (all spatial dimensions equal; default 1 to 1024, or
    to the spec's own size when larger) through the whole network."""
    network = load_spec(spec)
    if len(network.input) < 2:
        raise ConvCalcError(
            f"{network.source}: the input {list(network.input)} has no spatial dimension to vary"
        )
    if sizes is None:
        sizes = range(1, max(1024, *network.input[1:]) + 1)
    walker = _Walker(network)
    checks = tuple(walker.check(size) for size in sizes)
    return SizesReport(
        network.name, network.input[0], len(network.input) - 1, network.batch_size, checks
    )
