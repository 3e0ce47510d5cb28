"""What fits in a memory budget (``convcalc fit``): the largest batch size whose memory
estimate fits, and at a given batch the largest input size.

The estimate is a training step's (``Report.training_memory``: weights, gradients,
optimizer state and the activations autograd saves) or, with ``inference``, a forward
pass's without autograd: weights and buffers plus the peak of live activations
(``Totals.peak_inference_bytes``). Neither counts transient buffers (convolution
workspaces, the gradients flowing back) or the framework's own memory.

The batch is found by doubling, then bisecting, over real analyses (milliseconds each):
the estimate only has to grow with the batch, never to be linear in it. Input sizes are
those ``convcalc sizes`` accepts (no error, no input pixel dropped), every spatial
dimension S, the channels kept; the memory grows with S, so the largest size that fits
is bisected among them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from convcalc.analysis import analyze
from convcalc.errors import ConvCalcError
from convcalc.loader import build_network, load_spec, with_overrides
from convcalc.report import DTYPE_BYTES, OPTIMIZER_STATES, TrainingMemory
from convcalc.sizes import check_sizes
from convcalc.spec import Network
from convcalc.units import format_bytes, parse_bytes

__all__ = ["BATCH_CAP", "SIZE_CAP", "Candidate", "FitReport", "InferenceMemory", "fit"]

Shape = tuple[int, ...]

BATCH_CAP = 2**31  # the search stops here, and says so when even this batch fits
SIZE_CAP = 2**15  # likewise for the input size S


@dataclass(frozen=True, slots=True)
class InferenceMemory:
    """Bytes a forward pass without autograd holds at its peak: weights (parameters and
    buffers) + the most activations alive at once (the inputs included)."""

    batch_size: int
    weights: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.activations

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "weights_bytes": self.weights,
            "activations_bytes": self.activations,
            "total_bytes": self.total,
        }


Memory = TrainingMemory | InferenceMemory


@dataclass(frozen=True, slots=True)
class Candidate:
    """One configuration tried: a batch size and an input (one sample), its estimate,
    and whether that fits the budget."""

    batch_size: int
    input: Shape
    memory: Memory
    fits: bool

    def to_dict(self) -> dict[str, Any]:
        memory = self.memory.to_dict()
        memory = {k: v for k, v in memory.items() if k not in ("batch_size", "optimizer")}
        return {
            "batch_size": self.batch_size,
            "input": list(self.input),
            "fits": self.fits,
            **memory,
        }


@dataclass(frozen=True)
class FitReport:
    """The answers of ``fit``: ``batch`` (the largest batch size that fits, at the spec's
    input) and ``next_batch`` (one more, which does not); at ``size_batch``, ``size``
    (the largest input that fits) and ``next_size`` (the next accepted input, which does
    not). ``*_capped`` when the search stopped at its cap with everything fitting."""

    name: str
    inference: bool
    optimizer: str | None
    dtype: str
    memory: int  # the budget, in bytes
    batch: Candidate
    next_batch: Candidate | None
    batch_capped: bool
    size_batch: int
    size: Candidate | None  # None when no accepted input size fits (or none is spatial)
    next_size: Candidate | None
    size_capped: bool
    spatial: bool  # the input has spatial dimensions to vary

    def to_dict(self) -> dict[str, Any]:
        def entry(candidate: Candidate | None) -> dict[str, Any] | None:
            return None if candidate is None else candidate.to_dict()

        return {
            "name": self.name,
            "mode": "inference" if self.inference else "training",
            "optimizer": self.optimizer,
            "dtype": self.dtype,
            "memory_bytes": self.memory,
            "batch": {
                "largest": self.batch.batch_size,
                "capped": self.batch_capped,
                "at_largest": entry(self.batch),
                "at_next": entry(self.next_batch),
            },
            "size": {
                "batch_size": self.size_batch,
                "largest": _size_of(self.size),
                "capped": self.size_capped,
                "at_largest": entry(self.size),
                "next": _size_of(self.next_size),
                "at_next": entry(self.next_size),
            }
            if self.spatial
            else None,
        }

    def summary(self) -> list[str]:
        """The answers in words, a line each."""
        batch = self.batch
        at_least = "at least " if self.batch_capped else ""
        lines = [
            f"largest batch: {at_least}{batch.batch_size:,} at input {_shape(batch.input)}"
            + (
                " (the search stops there)"
                if self.batch_capped
                else f"; batch {batch.batch_size + 1:,} needs more"
            )
        ]
        if not self.spatial:
            lines.append(f"input sizes: {_shape(batch.input)} has no spatial dimension to vary")
        elif self.size is not None:
            lines.append(
                f"largest input at batch {self.size_batch:,}: "
                + _shape(self.size.input)
                + (
                    f" (every accepted size up to {SIZE_CAP:,} fits; the search stops there)"
                    if self.size_capped
                    else ""
                )
            )
        elif self.next_size is not None:
            lines.append(
                f"no input fits at batch {self.size_batch:,}: the smallest accepted, "
                f"{_shape(self.next_size.input)}, needs more"
            )
        else:
            lines.append(f"no input size up to {SIZE_CAP:,} passes the network")
        return lines

    def render(self, format: str = "table") -> str:
        """``table`` or ``json``."""
        if format == "json":
            return json.dumps(self.to_dict(), indent=2) + "\n"
        from tabulate import tabulate

        parts = [("weights", "weights")]
        if not self.inference:
            parts += [("gradients", "gradients"), ("optimizer state", "optimizer_state")]
        parts.append(
            ("activations (peak)" if self.inference else "activations (saved)", "activations")
        )
        candidates = [self.batch, self.next_batch, self.size, self.next_size]
        rows = [
            [
                f"{candidate.batch_size:,}",
                _shape(candidate.input),
                *(format_bytes(getattr(candidate.memory, field)) for _, field in parts),
                format_bytes(candidate.memory.total),
                _verdict(candidate.memory.total, self.memory),
            ]
            for candidate in candidates
            if candidate is not None
        ]
        headers = ["batch", "input", *(label for label, _ in parts), "total", "fits"]
        table = tabulate(rows, headers, disable_numparse=True)
        mode = "inference (no autograd)" if self.inference else f"training with {self.optimizer}"
        title = (
            f"{self.name}: {mode}, {self.dtype}, in {format_bytes(self.memory)} "
            f"({self.memory:,} bytes)"
        )
        counted = (
            "weights (parameters and buffers) and the peak of the activations alive at once"
            if self.inference
            else "weights (parameters and buffers), gradients, optimizer state and the "
            "activations autograd saves"
        )
        note = (
            f"Counted: {counted}.\nNot counted: workspaces, transient buffers and the "
            f"framework's own memory."
        )
        return "\n".join([title, *self.summary(), "", table, "", note]) + "\n"


def fit(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Network,
    memory: str | int,
    *,
    optimizer: str = "adam",
    inference: bool = False,
    batch_size: int | None = None,
    dtype: str | None = None,
    input: Sequence[int] | None = None,
) -> FitReport:
    """The largest batch size whose memory estimate fits ``memory`` (``16GiB``,
    ``200MiB``, ``900MB``, or bytes), for a training step with ``optimizer`` (sgd with
    momentum, adam, adamw) or, with ``inference``, a forward pass without autograd; and,
    at ``batch_size`` (default the spec's), the largest input size that fits.

    A linear classifier of 28×28 images: 7,850 parameters (31,400 bytes), and per
    sample its input (3,136 bytes) and output (40), both alive at the end of a forward
    pass; (1,048,576 − 31,400) / 3,176 = 320.3:

    >>> spec = {"input": [1, 28, 28], "layers": ["flatten", {"type": "linear", "out_features": 10}]}
    >>> report = fit(spec, "1MiB", inference=True)
    >>> report.batch.batch_size, report.batch.memory.total, report.next_batch.memory.total
    (320, 1047720, 1050896)
    """
    budget = _budget(memory)
    if not inference and optimizer not in OPTIMIZER_STATES:
        raise ConvCalcError(
            f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZER_STATES)}"
        )
    network = load_spec(spec)
    if input is not None or dtype is not None:
        network = with_overrides(network, input=input, dtype=dtype)
    estimates: dict[tuple[int, int | None], Memory] = {}

    def estimate(batch: int, size: int | None = None) -> Memory:
        key = (batch, size)
        if key not in estimates:
            report = analyze(_at_size(network, size), batch_size=batch)
            estimates[key] = (
                InferenceMemory(
                    batch,
                    (report.totals.params + report.totals.buffers) * DTYPE_BYTES[report.dtype],
                    report.totals.peak_inference_bytes,
                )
                if inference
                else report.training_memory(optimizer)
            )
        return estimates[key]

    def candidate(batch: int, size: int | None = None) -> Candidate:
        memory = estimate(batch, size)
        sample = network.input if size is None else _sample_at(network.input, size)
        return Candidate(batch, tuple(sample), memory, memory.total <= budget)

    first = estimate(1)
    if first.total > budget:
        what = "a forward pass" if inference else f"a training step with {optimizer}"
        raise ConvCalcError(
            f"memory {_quoted(memory)} is too small for even batch 1 of {network.name}: "
            f"{what} needs {format_bytes(first.total)} ({first.total:,} bytes)"
        )
    largest, capped = _largest(lambda b: estimate(b).total <= budget, BATCH_CAP)
    size_batch = batch_size if batch_size is not None else network.batch_size
    spatial = len(network.input) >= 2
    size = next_size = None
    size_capped = False
    if spatial:
        size, next_size, size_capped = _largest_size(
            network, lambda s: estimate(size_batch, s).total <= budget
        )
    return FitReport(
        name=network.name,
        inference=inference,
        optimizer=None if inference else optimizer,
        dtype=network.dtype,
        memory=budget,
        batch=candidate(largest),
        next_batch=None if capped else candidate(largest + 1),
        batch_capped=capped,
        size_batch=size_batch,
        size=None if size is None else candidate(size_batch, size),
        next_size=None if next_size is None else candidate(size_batch, next_size),
        size_capped=size_capped,
        spatial=spatial,
    )


def _budget(memory: str | int) -> int:
    """The budget in whole bytes, or one sentence naming the value that is no budget."""
    try:
        value = parse_bytes(memory)
    except ValueError as error:
        raise ConvCalcError(f"memory: {error}") from None
    if value < 1:
        raise ConvCalcError(f"memory must be at least 1 byte, got {_quoted(memory)}")
    return math.floor(value)


def _quoted(memory: str | int) -> str:
    return repr(memory) if isinstance(memory, str) else str(memory)


def _largest(fits: Callable[[int], bool], cap: int) -> tuple[int, bool]:
    """The largest n ≥ 1 for which ``fits`` holds, given that it holds for 1 and, once
    false, stays false: doubling, then bisecting. (n, True) when it holds even at
    ``cap``."""
    low, high = 1, 2
    while fits(high):
        if high >= cap:
            return cap, True
        low, high = high, min(2 * high, cap)
    while high - low > 1:  # fits(low), not fits(high)
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low, False


def _largest_size(
    network: Network, fits: Callable[[int], bool]
) -> tuple[int | None, int | None, bool]:
    """(the largest accepted size that fits or None, the next accepted size or None,
    capped). With v(p) the largest accepted size up to p, "v(p) fits" holds up to some
    p and fails beyond it (the memory grows with the size): that p is found by doubling
    from 1024 (or the spec's size), then bisecting; v(p) is found by checking the sizes
    just below p (``check_sizes``), each size once."""
    accepted = _AcceptedSizes(network)

    def holds(p: int) -> bool:
        size = accepted.at_most(p)
        return size is None or fits(size)

    low, high = 0, max(1024, *network.input[1:])  # holds(0): no size, nothing too big
    while holds(high):
        if high >= SIZE_CAP:
            largest = accepted.at_most(high)
            return largest, None, largest is not None
        low, high = high, min(2 * high, SIZE_CAP)
    while high - low > 1:  # holds(low), not holds(high)
        middle = (low + high) // 2
        low, high = (middle, high) if holds(middle) else (low, middle)
    # v(high) does not fit but v(low) does (or is None), so v(high) is high itself
    return accepted.at_most(low), high, False


class _AcceptedSizes:
    """Which input sizes the network accepts (``check_sizes``' "ok"), checked lazily a
    window at a time, downwards."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.ok: dict[int, bool] = {}

    def at_most(self, size: int) -> int | None:
        """The largest accepted size up to ``size``, or None."""
        window = 16
        while size >= 1:
            if size not in self.ok:
                sizes = [s for s in range(max(1, size - window + 1), size + 1) if s not in self.ok]
                for check in check_sizes(self.network, sizes).checks:
                    self.ok[check.size] = check.status == "ok"
                window *= 2
            if self.ok[size]:
                return size
            size -= 1
        return None


def _sample_at(sample: Sequence[int], size: int) -> tuple[int, ...]:
    """One sample's shape with every spatial dimension ``size``, the channels kept."""
    return (sample[0], *(size for _ in sample[1:]))


def _at_size(network: Network, size: int | None) -> Network:
    """The network with every input's spatial dimensions set to ``size`` (as
    ``check_sizes`` varies them), or itself."""
    if size is None:
        return network
    if network.inputs is None:
        return with_overrides(network, input=_sample_at(network.input, size))
    data: dict[str, Any] = {name: getattr(network, name) for name in Network.model_fields}
    del data["input"]
    data["inputs"] = {name: list(_sample_at(shape, size)) for name, shape in network.inputs.items()}
    return build_network(data, network.source or "<spec>")


def _verdict(total: int, budget: int) -> str:
    """``yes (1.50 MiB left)`` or ``no (312 B over)``."""
    if total <= budget:
        return f"yes ({format_bytes(budget - total)} left)"
    return f"no ({format_bytes(total - budget)} over)"


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _size_of(candidate: Candidate | None) -> int | None:
    return None if candidate is None else candidate.input[-1]
