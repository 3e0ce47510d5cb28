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

from convcalc.analysis import concat_shape, residual_problem
from convcalc.errors import ConvCalcError, ShapeError
from convcalc.layers import LayerModel, LayerResult, Leaf
from convcalc.loader import load_spec
from convcalc.spec import Block, Concat, LayerSpec, Network, Repeat, Residual, Sequential

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


class _Stop(Exception):
    def __init__(self, path: str, layer: LayerModel, message: str) -> None:
        self.path, self.layer, self.message = path, layer, message


class _Walker:
    """Shapes only, with each leaf's answer per incoming shape remembered."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.results: dict[tuple[int, Shape], LayerResult | str] = {}
        self.dropped: tuple[str, LayerModel, str] | None = None

    def check(self, size: int) -> SizeCheck:
        network = self.network
        shape = (network.batch_size, network.input[0], *([size] * (len(network.input) - 1)))
        self.dropped = None
        try:
            out = self.sequence(network.layers, shape, "layers", in_shortcut=False)
        except _Stop as stop:
            return SizeCheck(size, "error", None, stop.path, stop.layer.name, stop.message)
        if self.dropped is not None:
            path, layer, message = self.dropped
            return SizeCheck(size, "drops", out, path, layer.name, message)
        return SizeCheck(size, "ok", out)

    def sequence(
        self, layers: Sequence[LayerSpec], shape: Shape, prefix: str, in_shortcut: bool
    ) -> Shape:
        for index, layer in enumerate(layers):
            shape = self.layer(layer, shape, f"{prefix}.{index}", in_shortcut)
        return shape

    def layer(self, layer: LayerSpec, shape: Shape, path: str, in_shortcut: bool) -> Shape:
        if isinstance(layer, Leaf):
            return self.leaf(layer, shape, path, in_shortcut)
        return self.block(layer, shape, path, in_shortcut)

    def leaf(self, layer: Leaf, shape: Shape, path: str, in_shortcut: bool) -> Shape:
        key = (id(layer), shape)
        result = self.results.get(key)
        if result is None:
            try:
                result = layer.infer(shape)
            except ShapeError as error:
                result = error.first.message
            self.results[key] = result
        if isinstance(result, str):
            raise _Stop(path, layer, result)
        if result.dropped and not in_shortcut and self.dropped is None:
            self.dropped = (path, layer, result.dropped)
        return result.output_shape

    def block(self, block: Block, shape: Shape, path: str, in_shortcut: bool) -> Shape:
        if isinstance(block, Sequential):
            return self.sequence(block.layers, shape, path, in_shortcut)
        if isinstance(block, Repeat):
            if len(block.layers) == 1:
                return self.sequence(block.layers * block.times, shape, path, in_shortcut)
            for copy in range(block.times):
                shape = self.sequence(block.layers, shape, f"{path}.{copy}", in_shortcut)
            return shape
        if isinstance(block, Residual):
            body = self.sequence(block.layers, shape, f"{path}.body", in_shortcut)
            shortcut = self.sequence(block.shortcut, shape, f"{path}.shortcut", True)
            problem = residual_problem(body, shortcut, bool(block.shortcut))
            if problem:
                raise _Stop(path, block, problem)
            return body
        assert isinstance(block, Concat)
        shapes = [
            self.sequence(branch, shape, f"{path}.branches.{i}", in_shortcut)
            for i, branch in enumerate(block.branches)
        ]
        merged = concat_shape(shapes)
        if isinstance(merged, str):
            raise _Stop(path, block, merged)
        return merged


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
