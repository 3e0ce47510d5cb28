"""How well the roofline estimate of a calibrated profile predicts measured latency on
this machine (issue 13 target: per-layer Spearman ≥ 0.8 and the whole network within a
factor of 2, for ResNet-50, MobileNetV2, EfficientNet-B0 and VGG16 at batch 1 and 8),
next to what a MAC-only tool implies (MACs × 2 / peak FLOP/s). Prints figures; asserts
nothing. Run it on a quiet machine: other processes on the cores skew every figure.

    python benchmarks/bench_cost.py [--runs 5] [--profile FILE]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from convcalc import analyze
from convcalc.devices import device_profile
from convcalc.profiling import calibrate, profile

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["resnet50", "mobilenet_v2", "efficientnet_b0", "vgg16"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", help="a calibrated profile (default: calibrate now)")
    args = parser.parse_args()
    if args.profile:
        measured = device_profile(args.profile)
    else:
        start = time.perf_counter()
        measured = calibrate(progress=print)
        print(f"calibrate: {time.perf_counter() - start:.1f} s")
    peak = measured.peak["float32"]
    print(
        f"\n{'model':<16} {'batch':>5} {'measured':>10} {'estimate':>10} {'ratio':>6} "
        f"{'MACs/peak':>10} {'ratio':>6} {'Spearman':>8} {'layers':>6}"
    )
    for name in MODELS:
        for batch in (1, 8):
            spec = ROOT / "specs" / f"{name}.yaml"
            result = profile(
                spec, batch_size=batch, device_profile=measured, runs=args.runs, warmup=1
            )
            naive = 2 * analyze(spec, batch_size=batch).totals.macs / peak
            estimated = result.estimated or 0.0
            print(
                f"{name:<16} {batch:>5} {result.measured * 1e3:>8.1f}ms "
                f"{estimated * 1e3:>8.1f}ms {result.measured / estimated:>6.2f} "
                f"{naive * 1e3:>8.1f}ms {result.measured / naive:>6.2f} "
                f"{result.rank_correlation or 0:>8.2f} {len(result.layers):>6}"
            )
    print("\nratio = measured / estimated; Spearman over the per-layer times.")


if __name__ == "__main__":
    main()
