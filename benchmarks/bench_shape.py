"""Speed and memory of `convcalc shape` and of analysing deep specs.

Prints figures; asserts nothing. Targets (issue 2): `convcalc shape specs/alexnet.yaml`
under 0.3 s wall and 60 MiB peak; a 10,000-layer spec analysed in under 1 s, with a cost
that grows linearly with depth.

    python benchmarks/bench_shape.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# As a user runs it: Python caches bytecode (some sandboxes turn that off).
ENVIRONMENT = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_process(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident MiB of one run of a command."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENVIRONMENT
    )
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed")
    return elapsed, usage.ru_maxrss / 1024


def measure(commands: dict[str, list[str]], runs: int) -> None:
    """Run the commands round-robin, so that load on a shared machine hits them alike."""
    for command in commands.values():
        run_process(command)  # warm the file cache and .pyc files
    results: dict[str, list[tuple[float, float]]] = {label: [] for label in commands}
    for _ in range(runs):
        for label, command in commands.items():
            results[label].append(run_process(command))
    floor = None
    for label, figures in results.items():
        walls = [wall for wall, _ in figures]
        peak = max(rss for _, rss in figures)
        median = statistics.median(walls)
        if label.startswith("python: import"):
            floor = median
        ratio = (
            f"   {median / floor:4.2f}× the import floor"
            if floor and label.startswith("convcalc")
            else ""
        )
        print(
            f"{label:<48} median {median:6.3f} s   "
            f"min {min(walls):6.3f} s   peak {peak:5.1f} MiB{ratio}"
        )


def chain(layers: int) -> dict:
    """A spec of `layers` conv/relu/batchnorm layers on a small input."""
    body = []
    for i in range(layers):
        kind = i % 3
        if kind == 0:
            body.append({"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1})
        elif kind == 1:
            body.append({"type": "batchnorm2d"})
        else:
            body.append("relu")
    return {"name": f"chain{layers}", "input": [3, 32, 32], "layers": body}


def deep_specs() -> None:
    import yaml

    import convcalc

    convcalc.analyze(chain(30))  # build the validators once, as the CLI's first spec does
    print("\nanalyse(dict) of a conv/batchnorm/relu chain, in process (best of 3):")
    for layers in (1_000, 2_500, 5_000, 10_000, 20_000):
        spec = chain(layers)
        best = min(_timed(lambda spec=spec: convcalc.analyze(spec)) for _ in range(3))
        print(f"  {layers:>6} layers: {best:6.3f} s   {best / layers * 1e6:6.1f} µs per layer")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "deep.yaml"
        for layers in (2_500, 5_000):  # a YAML file holds at most 50,000 values (loader)
            path.write_text(yaml.safe_dump(chain(layers)), encoding="utf-8")
            best = min(_timed(lambda: convcalc.analyze(path)) for _ in range(3))
            print(
                f"  {layers:,} layers from a YAML file (load + validate + analyse): {best:6.3f} s"
            )
        repeat = {
            "input": [3, 32, 32],
            "layers": [
                {
                    "type": "repeat",
                    "times": 5_000,
                    "layers": [
                        {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
                        "relu",
                    ],
                }
            ],
        }
        best = min(_timed(lambda: convcalc.analyze(repeat)) for _ in range(3))
        print(f"  repeat 5,000 × 2 layers (15,001 rows): {best:6.3f} s")


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    convcalc_script = shutil.which("convcalc") or str(Path(sys.executable).parent / "convcalc")
    python = sys.executable
    print(f"{runs} runs each, after one warm-up run; {os.cpu_count()} cores\n")
    alexnet, resnet50 = str(ROOT / "specs/alexnet.yaml"), str(ROOT / "specs/resnet50.yaml")
    measure(
        {
            "python -c pass": [python, "-c", "pass"],
            # The floor: the four libraries the core needs, and pydantic's first model.
            "python: import click, pydantic, yaml, tabulate": [
                python,
                "-c",
                "import click, tabulate, yaml; from pydantic import BaseModel\n"
                "class A(BaseModel):\n    x: int\nA(x=1)",
            ],
            "convcalc shape specs/alexnet.yaml": [convcalc_script, "shape", alexnet],
            "convcalc shape specs/resnet50.yaml": [convcalc_script, "shape", resnet50],
            "convcalc shape specs/efficientnet_b0.yaml (v2)": [
                convcalc_script,
                "shape",
                str(ROOT / "specs/efficientnet_b0.yaml"),
            ],
            "convcalc shape specs/alexnet.yaml -f json": [
                convcalc_script,
                "shape",
                alexnet,
                "-f",
                "json",
            ],
        },
        runs,
    )
    deep_specs()


if __name__ == "__main__":
    main()
