"""The output-size formula run backwards: which kernel, stride, padding and dilation
turn an input size into a target output size.

Every combination within the bounds is tried with the forward formula torch uses, so
the answer is complete within them; the tests hold it to torch by brute force.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from convcalc.formulas import (
    conv_output_size,
    conv_transpose_output_size,
    effective_kernel,
    pool_output_size,
    uncovered_pixels,
)
from convcalc.layers import conv_formula, pool_formula

__all__ = ["KINDS", "Solution", "render_solutions", "solve"]

Kind = Literal["conv", "pool", "convtranspose"]
KINDS: tuple[Kind, ...] = ("conv", "pool", "convtranspose")

# Bounds searched for what is not given: kernels up to 11 (AlexNet's), strides up to 8,
# dilations up to 3; padding from 0 to what leaves a window touching the input (pooling:
# half the kernel, as torch requires).
MAX_KERNEL = 11
MAX_STRIDE = 8
MAX_DILATION = 3

Choice = int | range | None


@dataclass(frozen=True, slots=True)
class Solution:
    """One way to get the target size, and what it leaves out of the input."""

    kind: Kind
    input_size: int
    output_size: int
    kernel: int
    stride: int
    padding: int
    dilation: int = 1
    ceil_mode: bool = False
    output_padding: int = 0
    dropped: int = 0  # trailing input pixels that no window reaches
    skipped: int = 0  # of every `stride` input pixels, how many no kernel tap reaches

    @property
    def covers_input(self) -> bool:
        return not self.dropped and not self.skipped

    @property
    def formula(self) -> str:
        """The forward formula with these numbers."""
        n, k, s, p, d = self.input_size, self.kernel, self.stride, self.padding, self.dilation
        if self.kind == "conv":
            return conv_formula(n, k, s, p, p, d, self.output_size)
        if self.kind == "pool":
            return pool_formula(n, k, s, p, d, self.ceil_mode, self.output_size)
        return (
            f"({n} − 1)·{s} − 2·{p} + {d}·({k}−1) + {self.output_padding} + 1 = {self.output_size}"
        )

    @property
    def coverage(self) -> str:
        """``yes``, or which input pixels no window reaches."""
        notes = []
        if self.dropped:
            notes.append(f"drops the last {self.dropped} pixel{'s' * (self.dropped > 1)}")
        if self.skipped:
            notes.append(f"skips {self.skipped} of every {self.stride} pixels")
        return "; ".join(notes) or "yes"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": self.kind,
            "kernel_size": self.kernel,
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
        }
        if self.kind == "pool":
            data["ceil_mode"] = self.ceil_mode
        if self.kind == "convtranspose":
            data["output_padding"] = self.output_padding
        data.update(
            dropped_pixels=self.dropped,
            skipped_pixels=self.skipped,
            covers_input=self.covers_input,
            formula=self.formula,
        )
        return data


def solve(
    input_size: int,
    output_size: int,
    *,
    kind: Kind = "conv",
    kernel: Choice = None,
    stride: Choice = None,
    padding: Choice = None,
    dilation: Choice = None,
    ceil_mode: bool | None = None,
    output_padding: Choice = None,
) -> list[Solution]:
    """Every combination within the bounds that maps ``input_size`` to ``output_size``,
    simplest first (covering the whole input, no dilation, small kernel, stride and
    padding). Give a value, or a ``range``, to fix or bound any argument.

    >>> [(s.stride, s.padding) for s in solve(224, 112, kernel=3, dilation=1)]
    [(2, 1)]
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    if input_size < 1 or output_size < 1:
        raise ValueError(f"sizes must be at least 1, got {input_size} → {output_size}")
    dilations = _values(dilation, range(1, MAX_DILATION + 1 if kind != "pool" else 2))
    found = []
    for k in _values(kernel, range(1, MAX_KERNEL + 1)):
        for d in dilations:
            span = effective_kernel(k, d)
            limit = k // 2 if kind == "pool" else span - 1
            for s in _values(stride, range(1, MAX_STRIDE + 1)):
                for p in _values(padding, range(0, limit + 1)):
                    if kind == "pool" and p > k // 2:
                        continue  # torch refuses padding over half the kernel
                    found += _matches(
                        kind, input_size, output_size, k, s, p, d, ceil_mode, output_padding
                    )
    return sorted(found, key=_simplicity)


def _matches(
    kind: Kind,
    n: int,
    target: int,
    k: int,
    s: int,
    p: int,
    d: int,
    ceil_mode: bool | None,
    output_padding: Choice,
) -> list[Solution]:
    if kind == "convtranspose":
        return [
            Solution(kind, n, target, k, s, p, d, output_padding=op)
            for op in _values(output_padding, range(max(s, d)))
            if op < max(s, d) and conv_transpose_output_size(n, k, s, p, op, d) == target
        ]
    modes = [False] if kind == "conv" else _modes(ceil_mode)
    answers = []
    for ceil in modes:
        size = (
            conv_output_size(n, k, s, (p, p), d)
            if kind == "conv"
            else pool_output_size(n, k, s, p, d, ceil)
        )
        fits = kind == "pool" or n + 2 * p >= effective_kernel(k, d)  # conv: the kernel fits
        if size == target and fits:
            answers.append(
                Solution(
                    kind,
                    n,
                    target,
                    k,
                    s,
                    p,
                    d,
                    ceil_mode=ceil,
                    dropped=uncovered_pixels(n, k, s, p, d, target),
                    skipped=s - len({(t * d) % s for t in range(min(k, s))}),
                )
            )
    return answers


def _modes(ceil_mode: bool | None) -> list[bool]:
    return [False, True] if ceil_mode is None else [ceil_mode]


def _values(choice: Choice, default: range) -> range | list[int]:
    if choice is None:
        return default
    return [choice] if isinstance(choice, int) else choice


def _simplicity(solution: Solution) -> tuple[int, ...]:
    return (
        not solution.covers_input,
        solution.dilation,
        solution.ceil_mode,
        solution.output_padding,
        solution.kernel,
        solution.stride,
        solution.padding,
    )


def render_solutions(solutions: list[Solution], format: str = "table") -> str:
    """The solutions as a table (``table``, ``markdown``) or ``json``."""
    if format == "json":
        return json.dumps([s.to_dict() for s in solutions], indent=2) + "\n"
    from tabulate import tabulate

    first = solutions[0]
    headers = ["kernel", "stride", "padding", "dilation"]
    if first.kind == "pool":
        headers.append("ceil_mode")
    if first.kind == "convtranspose":
        headers.append("output_padding")
    headers += ["covers the input", "check"]
    rows = []
    for s in solutions:
        row: list[Any] = [s.kernel, s.stride, s.padding, s.dilation]
        if s.kind == "pool":
            row.append(s.ceil_mode)
        if s.kind == "convtranspose":
            row.append(s.output_padding)
        rows.append([*row, s.coverage, s.formula])
    count = f"{len(solutions)} solution{'s' * (len(solutions) > 1)}"
    title = f"{first.kind}: {first.input_size} → {first.output_size}, {count}, simplest first"
    table = tabulate(rows, headers, tablefmt="pipe" if format == "markdown" else "simple")
    return f"{title}\n\n{table}\n"
