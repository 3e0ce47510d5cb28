"""Measured latency, next to the roofline estimate: ``convcalc profile`` and
``convcalc calibrate``. Imports torch (only when a function is called).

``profile`` builds the spec as a module and times every leaf layer with forward hooks
(``time.perf_counter`` around the layer's call, the device synchronised first on CUDA):
a few warm-up passes, then the median of several passes per layer. The whole network is
timed again without hooks, so the total carries no hook overhead. The joins of v1
residual and concat blocks run inside their block's ``forward`` and have no layer time of
their own; they are in the total.

``calibrate`` measures this machine: the peak arithmetic rate (the faster of a large
matrix product and a large convolution), the bandwidth (a large copy: bytes read plus
bytes written over the time), the fixed cost of one layer call (a ReLU on one element),
and, for each layer family, the fraction of the roofline that typical layers reach
(the geometric mean over a few shapes at batch 1 and 8). The estimate of a calibrated
profile is then ``max(FLOPs / peak, bytes / bandwidth) / efficiency + overhead``.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convcalc.analysis import analyze
from convcalc.cost import Estimate, estimate
from convcalc.devices import DeviceProfile
from convcalc.errors import ConvCalcError
from convcalc.layers import Leaf
from convcalc.report import Report
from convcalc.spec import Network
from convcalc.torch_bridge import build_module, import_torch, torch_layer

__all__ = [
    "LayerTiming",
    "Profile",
    "calibrate",
    "default_profile_path",
    "profile",
    "rank_correlation",
]


def default_profile_path(device: str) -> Path:
    """Where ``calibrate`` writes by default and ``profile`` looks first."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "convcalc" / f"{device}.yaml"


def _torch_device(name: str) -> Any:
    torch = import_torch()
    if name not in ("cpu", "cuda"):
        raise ConvCalcError(f"unknown device {name!r}; use cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConvCalcError("--device cuda: CUDA is not available on this machine")
    return torch.device(name)


def _synchronize(device: Any) -> Callable[[], None]:
    torch = import_torch()
    return torch.cuda.synchronize if device.type == "cuda" else lambda: None


def _median_seconds(run: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rank_correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get their average rank).

    >>> rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]), rank_correlation([1, 2, 3], [3, 2, 1])
    (1.0, -1.0)
    """

    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        result = [0.0] * len(values)
        start = 0
        while start < len(order):
            end = start
            while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
                end += 1
            for k in range(start, end + 1):
                result[order[k]] = (start + end) / 2
            start = end + 1
        return result

    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    norm = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / norm if norm else 0.0


@dataclass(frozen=True, slots=True)
class LayerTiming:
    """One leaf layer (or a block's join): estimated and measured seconds."""

    path: str
    name: str | None
    type: str
    estimated: float | None
    measured: float | None  # None for a join, which has no module of its own

    @property
    def ratio(self) -> float | None:
        """measured / estimated."""
        if self.estimated is None or self.measured is None or not self.estimated:
            return None
        return self.measured / self.estimated

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "type": self.type,
            "estimated_ms": None if self.estimated is None else self.estimated * 1e3,
            "measured_ms": None if self.measured is None else self.measured * 1e3,
            "ratio": self.ratio,
        }


@dataclass(frozen=True)
class Profile:
    """Measured latency of a spec on a device, and the estimate beside it."""

    report: Report
    estimate: Estimate | None
    device: str
    threads: int
    runs: int
    layers: tuple[LayerTiming, ...]
    measured: float  # the whole forward pass, without hooks (median)

    @property
    def batch_size(self) -> int:
        return self.report.input_shape[0]

    @property
    def estimated(self) -> float | None:
        return None if self.estimate is None else self.estimate.seconds

    @property
    def throughput(self) -> float:
        """Measured samples per second."""
        return self.batch_size / self.measured

    @property
    def rank_correlation(self) -> float | None:
        """Spearman's correlation of estimated and measured layer times."""
        pairs = [
            (layer.estimated, layer.measured)
            for layer in self.layers
            if layer.estimated is not None and layer.measured is not None
        ]
        if len(pairs) < 2:
            return None
        return rank_correlation([e for e, _ in pairs], [m for _, m in pairs])

    def to_dict(self) -> dict[str, Any]:
        estimated = self.estimated
        return {
            "name": self.report.name,
            "device": self.device,
            "threads": self.threads,
            "batch_size": self.batch_size,
            "runs": self.runs,
            "device_profile": None if self.estimate is None else self.estimate.profile.name,
            "layers": [layer.to_dict() for layer in self.layers],
            "total": {
                "estimated_ms": None if estimated is None else estimated * 1e3,
                "measured_ms": self.measured * 1e3,
                "ratio": None if not estimated else self.measured / estimated,
                "throughput_per_s": self.throughput,
                "rank_correlation": self.rank_correlation,
                "layers_measured_ms": sum(layer.measured or 0.0 for layer in self.layers) * 1e3,
            },
        }


def profile(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Network,
    *,
    device: str = "cpu",
    batch_size: int | None = None,
    input: Sequence[int] | None = None,
    device_profile: str | DeviceProfile | None = None,
    runs: int = 10,
    warmup: int = 3,
) -> Profile:
    """Time every leaf layer of ``spec`` on ``device`` (median of ``runs`` passes after
    ``warmup``), and the whole forward pass; with a device profile, the estimate too."""
    torch = import_torch()
    target = _torch_device(device)
    if runs < 1 or warmup < 0:
        raise ConvCalcError(f"runs must be at least 1 and warmup at least 0, got {runs}, {warmup}")
    report = analyze(spec, input=input, batch_size=batch_size)
    cost = None if device_profile is None else estimate(report, device_profile)
    model = build_module(report.network or spec, report=report).eval().to(target)
    network = report.network
    assert network is not None
    inputs = [
        torch.randn((report.input_shape[0], *shape), device=target)
        for shape in network.input_shapes.values()
    ]
    sync = _synchronize(target)
    leaves = [row for row in report.rows if not row.is_block]
    times: dict[str, list[float]] = {row.path: [] for row in leaves}
    started: dict[str, float] = {}
    handles = []
    for row in leaves:
        module = model.get_submodule(row.path)  # submodule names are the report's paths

        def before(_module: Any, _args: Any, path: str = row.path) -> None:
            sync()
            started[path] = time.perf_counter()

        def after(_module: Any, _args: Any, _output: Any, path: str = row.path) -> None:
            sync()
            times[path].append(time.perf_counter() - started[path])

        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(after))
    with torch.inference_mode():
        for _ in range(warmup):
            model(*inputs)
        for values in times.values():
            values.clear()
        for _ in range(runs):
            model(*inputs)
        for handle in handles:
            handle.remove()
        whole = _median_seconds(lambda: model(*inputs), runs, sync)
    measured = {path: statistics.median(values) for path, values in times.items() if values}
    estimated = {} if cost is None else {layer.path: layer for layer in cost.layers}
    order = [layer.path for layer in cost.layers] if cost else [row.path for row in leaves]
    rows = {row.path: row for row in report.rows}
    timings = []
    for path in order:
        row = rows[path]
        entry = estimated.get(path)
        timings.append(
            LayerTiming(
                path=path,
                name=row.name,
                type=entry.type if entry else row.type,
                estimated=entry.seconds if entry else None,
                measured=measured.get(path) if not row.is_block else None,
            )
        )
    return Profile(
        report=report,
        estimate=cost,
        device=device,
        threads=torch.get_num_threads(),
        runs=runs,
        layers=tuple(timings),
        measured=whole,
    )


# -- calibration ---------------------------------------------------------------------


def _conv(out: int, kernel: int, **arguments: int) -> dict[str, Any]:
    return {"type": "conv2d", "out_channels": out, "kernel_size": kernel, **arguments}


# Typical layers of each family, from ResNet, VGG, MobileNet and EfficientNet: (the layer
# as written in a spec, one sample's shape).
_FAMILY_CASES: dict[str, list[tuple[dict[str, Any], tuple[int, ...]]]] = {
    "conv": [
        (_conv(64, 3, padding=1), (64, 56, 56)),
        (_conv(256, 3, padding=1), (256, 14, 14)),
        (_conv(64, 7, stride=2, padding=3), (3, 224, 224)),
        (_conv(32, 3, stride=2, padding=1), (3, 224, 224)),
    ],
    "depthwise": [
        (_conv(32, 3, padding=1, groups=32), (32, 112, 112)),
        (_conv(96, 3, padding=1, groups=96), (96, 56, 56)),
        (_conv(144, 3, stride=2, padding=1, groups=144), (144, 56, 56)),
        (_conv(480, 5, padding=2, groups=480), (480, 14, 14)),
        (_conv(960, 3, padding=1, groups=960), (960, 7, 7)),
    ],
    "pointwise": [
        (_conv(96, 1), (16, 112, 112)),
        (_conv(24, 1), (144, 56, 56)),
        (_conv(64, 1), (384, 14, 14)),
        (_conv(256, 1), (64, 56, 56)),
        (_conv(128, 1), (512, 28, 28)),
        (_conv(1280, 1), (320, 7, 7)),
    ],
    "linear": [
        ({"type": "linear", "out_features": 1000}, (2048,)),
        ({"type": "linear", "out_features": 4096}, (4096,)),
        ({"type": "linear", "out_features": 1000}, (1280,)),
    ],
    "pool": [
        ({"type": "maxpool2d", "kernel_size": 3, "stride": 2, "padding": 1}, (64, 112, 112)),
        ({"type": "adaptiveavgpool2d", "output_size": 1}, (512, 7, 7)),
        ({"type": "adaptiveavgpool2d", "output_size": 1}, (96, 56, 56)),
        ({"type": "adaptiveavgpool2d", "output_size": 1}, (480, 14, 14)),
    ],
    "elementwise": [
        ({"type": "relu"}, (64, 112, 112)),
        ({"type": "relu6"}, (96, 112, 112)),
        ({"type": "silu"}, (144, 56, 56)),
        ({"type": "batchnorm2d"}, (128, 28, 28)),
        ({"type": "batchnorm2d"}, (32, 112, 112)),
        ({"type": "hardswish"}, (96, 28, 28)),
    ],
    "copy": [
        ({"type": "zeropad2d", "padding": 1}, (64, 56, 56)),
        ({"type": "upsample", "scale_factor": 2, "mode": "nearest"}, (128, 28, 28)),
        ({"type": "channelshuffle", "groups": 2}, (116, 28, 28)),
    ],
}


def calibrate(
    device: str = "cpu",
    *,
    repeats: int = 7,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
) -> DeviceProfile:
    """Measure this machine's peak rate, bandwidth, per-layer overhead and per-family
    efficiency (float32) and return them as a device profile. ``quick`` measures smaller
    problems, one shape per family, at batch 1 (a second instead of ten or so; rougher)."""
    torch = import_torch()
    target = _torch_device(device)
    sync = _synchronize(target)
    say = progress or (lambda _message: None)
    with torch.inference_mode():
        matmul, convolution = _peak_rates(target, sync, repeats, quick)
        peak = max(matmul, convolution)
        say(
            f"peak float32: {peak / 1e9:,.1f} GFLOP/s (matmul {matmul / 1e9:,.1f}, "
            f"conv {convolution / 1e9:,.1f})"
        )
        bandwidth = _bandwidth(target, sync, repeats, quick)
        say(f"bandwidth: {bandwidth / 1e9:,.1f} GB/s")
        overhead = _overhead(target, sync, repeats)
        say(f"overhead per layer: {overhead * 1e6:,.1f} µs")
        efficiency = {}
        for family, cases in _FAMILY_CASES.items():
            ratios = []
            for layer, shape in cases[:1] if quick else cases:
                for batch in (1,) if quick else (1, 8):
                    ratios.append(
                        _efficiency(layer, (batch, *shape), peak, bandwidth, overhead, target, sync)
                    )
            efficiency[family] = min(1.0, math.exp(statistics.fmean(map(math.log, ratios))))
            say(f"efficiency {family}: {efficiency[family]:.3f}")
    threads = torch.get_num_threads() if device == "cpu" else 0
    processor = _processor_name() if device == "cpu" else torch.cuda.get_device_name(target)
    today = datetime.date.today().isoformat()
    return DeviceProfile(
        name=f"{platform.node() or 'this-machine'}-{device}",
        description=f"{processor}" + (f", {threads} threads" if threads else ""),
        source=f"measured by convcalc calibrate on {today} (torch {torch.__version__})",
        bandwidth=f"{bandwidth:.6g}",
        peak={"float32": f"{peak:.6g}"},
        efficiency=efficiency,
        overhead=f"{overhead:.6g}",
    )


def _peak_rates(
    target: Any, sync: Callable[[], None], repeats: int, quick: bool
) -> tuple[float, float]:
    """FLOP/s of a large float32 matrix product and of a large 3×3 convolution."""
    torch = import_torch()
    size = 512 if quick else 2048
    a = torch.randn(size, size, device=target)
    b = torch.randn(size, size, device=target)
    torch.mm(a, b)
    matmul = 2 * size**3 / _median_seconds(lambda: torch.mm(a, b), repeats, sync)
    batch = 1 if quick else 8
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(target)
    x = torch.randn(batch, 128, 56, 56, device=target)
    conv(x)
    flops = 2 * batch * 128 * 56 * 56 * 128 * 9
    return matmul, flops / _median_seconds(lambda: conv(x), repeats, sync)


def _bandwidth(target: Any, sync: Callable[[], None], repeats: int, quick: bool) -> float:
    """Bytes per second of a large copy (256 MiB, 16 MiB when quick): read plus written."""
    torch = import_torch()
    source = torch.randn((4 if quick else 64) * 2**20, device=target)
    destination = torch.empty_like(source)
    destination.copy_(source)
    seconds = _median_seconds(lambda: destination.copy_(source), repeats, sync)
    return float(2 * source.numel() * source.element_size() / seconds)


def _overhead(target: Any, sync: Callable[[], None], repeats: int) -> float:
    """Seconds of one layer call that does almost nothing (a ReLU on one element)."""
    torch = import_torch()
    relu = torch.nn.ReLU()
    one = torch.zeros(1, device=target)

    def calls() -> None:
        for _ in range(200):
            relu(one)

    return _median_seconds(calls, repeats, sync) / 200


def _efficiency(
    layer: dict[str, Any],
    shape: tuple[int, ...],
    peak: float,
    bandwidth: float,
    overhead: float,
    target: Any,
    sync: Callable[[], None],
) -> float:
    """The fraction of the roofline one layer reaches: roofline time over measured time
    less the per-layer overhead (the bytes and FLOPs as convcalc counts them)."""
    torch = import_torch()
    report = analyze({"input": list(shape[1:]), "batch_size": shape[0], "layers": [layer]})
    row = report.rows[0]
    assert report.network is not None
    leaf = report.network.layers[0]
    assert isinstance(leaf, Leaf)
    module = torch_layer(leaf, shape).eval().to(target)
    x = torch.randn(shape, device=target)
    module(x)
    seconds = _median_seconds(lambda: module(x), 7, sync)
    roofline = max(row.flops / peak, (row.bytes_read + row.bytes_written) / bandwidth)
    return max(1e-3, roofline / max(seconds - overhead, 1e-9))


def _processor_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
