"""Speed of the design tools. Prints figures; asserts nothing.

Target (issue 5): `convcalc sizes` checks at least 1,000 candidate sizes per second on
ResNet-50.

    python benchmarks/bench_design.py
"""

from __future__ import annotations

import time
from pathlib import Path

from convcalc.sizes import check_sizes
from convcalc.solve import solve

ROOT = Path(__file__).resolve().parent.parent


def best_of(runs: int, function) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    for name, sizes in (("resnet50", range(32, 1025)), ("unet_small", range(1, 1025))):
        spec = ROOT / "specs" / f"{name}.yaml"
        check_sizes(spec, range(1, 3))  # build the validators once, as the CLI's load does
        seconds = best_of(3, lambda spec=spec, sizes=sizes: check_sizes(spec, sizes))
        print(
            f"sizes {name:<11} {len(sizes):>5} candidates in {seconds:6.3f} s: "
            f"{len(sizes) / seconds:8,.0f} sizes/s (best of 3, spec loading included)"
        )
    seconds = best_of(5, lambda: solve(224, 112))
    print(
        f"solve 224 → 112, nothing fixed ({len(solve(224, 112))} answers): {seconds * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
