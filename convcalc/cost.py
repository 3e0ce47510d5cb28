"""What a design costs on a device: a roofline estimate of each layer's time.

Each leaf layer takes the longer of its compute time (FLOPs over the device's peak
rate at the report's dtype) and its memory time (bytes read and written over the
bandwidth), divided by the efficiency its family reaches on that device (1 for data-sheet
profiles, measured by ``convcalc calibrate``), plus the profile's fixed per-layer
overhead. The bound is the side that is longer. Block rows are the sums of their layers.

Only the layers that compute something count: a view (flatten, a split, dropout in
evaluation) moves no bytes and costs the overhead alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from convcalc.devices import DeviceProfile, device_profile
from convcalc.report import LayerRow, Report

__all__ = ["Estimate", "LayerEstimate", "estimate"]


@dataclass(frozen=True, slots=True)
class LayerEstimate:
    """One leaf layer's estimated time on a device."""

    path: str
    name: str | None
    type: str
    family: str
    flops: int
    bytes: int
    compute_seconds: float
    memory_seconds: float
    seconds: float
    bound: str  # "compute", "memory", or "overhead" for a layer that moves nothing

    @property
    def label(self) -> str:
        return self.path if not self.name else f"{self.path} ({self.name})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "type": self.type,
            "family": self.family,
            "flops": self.flops,
            "bytes": self.bytes,
            "compute_ms": self.compute_seconds * 1e3,
            "memory_ms": self.memory_seconds * 1e3,
            "estimated_ms": self.seconds * 1e3,
            "bound": self.bound,
        }


@dataclass(frozen=True)
class Estimate:
    """Every leaf layer's estimate on one device profile, and the whole network's."""

    profile: DeviceProfile
    dtype: str
    batch_size: int
    layers: tuple[LayerEstimate, ...]

    def __iter__(self) -> Iterator[LayerEstimate]:
        return iter(self.layers)

    @property
    def seconds(self) -> float:
        """The whole network, layer after layer (no overlap between layers)."""
        return sum(layer.seconds for layer in self.layers)

    @property
    def throughput(self) -> float:
        """Samples per second at this batch size."""
        return self.batch_size / self.seconds if self.seconds else float("inf")

    def layer(self, path: str) -> LayerEstimate:
        for layer in self.layers:
            if layer.path == path:
                return layer
        raise KeyError(path)

    def dominant(self, count: int = 5) -> list[LayerEstimate]:
        """The layers that take the most time, longest first."""
        return sorted(self.layers, key=lambda layer: -layer.seconds)[:count]

    def block_seconds(self, row: LayerRow) -> float:
        """A block row's time: the sum of its layers' and its join's."""
        return self._path_seconds.get(row.path, 0.0)

    @cached_property
    def _path_seconds(self) -> dict[str, float]:
        """Seconds under every path: each entry's, added to its path and every prefix of it
        (one pass, so that a table of block rows is not quadratic in the layers)."""
        sums: dict[str, float] = {}
        for layer in self.layers:
            parts = layer.path.split(".")
            for end in range(1, len(parts) + 1):
                key = ".".join(parts[:end])
                sums[key] = sums.get(key, 0.0) + layer.seconds
        return sums

    def to_dict(self) -> dict[str, Any]:
        bound = {"compute": 0.0, "memory": 0.0, "overhead": 0.0}
        for layer in self.layers:
            bound[layer.bound] += layer.seconds
        return {
            "device_profile": self.profile.name,
            "dtype": self.dtype,
            "batch_size": self.batch_size,
            "layers": [layer.to_dict() for layer in self.layers],
            "total": {
                "estimated_ms": self.seconds * 1e3,
                "throughput_per_s": self.throughput,
                "compute_bound_ms": bound["compute"] * 1e3,
                "memory_bound_ms": bound["memory"] * 1e3,
                "overhead_ms": bound["overhead"] * 1e3,
            },
        }


def estimate(report: Report, profile: str | DeviceProfile) -> Estimate:
    """The roofline estimate of every leaf layer of ``report`` on ``profile`` (a shipped
    profile's name, a profile file, or a ``DeviceProfile``); the join of a v1 residual or
    concat block (its ``+`` or ``cat``) is an entry at the block's path."""
    device = device_profile(profile)
    peak = device.peak_rate(report.dtype)

    def entry(row: LayerRow, kind: str, family: str, flops: int, moved: int) -> LayerEstimate:
        compute = flops / peak
        memory = moved / device.bandwidth
        return LayerEstimate(
            path=row.path,
            name=row.name,
            type=kind,
            family=family,
            flops=flops,
            bytes=moved,
            compute_seconds=compute,
            memory_seconds=memory,
            seconds=max(compute, memory) / device.efficiency.get(family, 1.0) + device.overhead,
            bound=_bound(compute, memory),
        )

    rows = report.rows
    # (the row index after which it runs, the entry): a join after its block's last row
    ordered: list[tuple[float, LayerEstimate]] = []
    for index, row in enumerate(rows):
        if not row.is_block:
            ordered.append((index, entry(row, row.type, row.family, row.flops, _moved(row))))
        elif row.type in _JOINS:
            children, last = _children(rows, index)
            own = _moved(row) - sum(_moved(child) for child in children)
            kind, family = _JOINS[row.type]
            ordered.append((last + 0.5, entry(row, kind, family, 0, own)))
    layers = tuple(layer for _, layer in sorted(ordered, key=lambda pair: pair[0]))
    return Estimate(device, report.dtype, report.input_shape[0], layers)


# v1 blocks whose output is made by a join of their own: (its type, its family)
_JOINS = {"residual": ("add", "elementwise"), "concat": ("cat", "copy")}


def _bound(compute: float, memory: float) -> str:
    if not compute and not memory:
        return "overhead"
    return "compute" if compute >= memory else "memory"


def _moved(row: LayerRow) -> int:
    return row.bytes_read + row.bytes_written


def _children(rows: tuple[LayerRow, ...], index: int) -> tuple[list[LayerRow], int]:
    """The rows one level under the block at ``index`` (rows list blocks first), and the
    index of its last row."""
    block = rows[index]
    children = []
    last = index
    for last in range(index + 1, len(rows)):
        row = rows[last]
        if row.depth <= block.depth:
            last -= 1
            break
        if row.depth == block.depth + 1:
            children.append(row)
    return children, last
