"""Speed and memory of `convcalc verify`. Prints figures; asserts nothing.

1. Issue 3's target: VGG16 at batch 256 on the meta device under 10 s wall and 1.5 GiB
   peak, torch import included, next to a real CPU forward pass of the same model at
   batch 8.
2. Issue 12's target: `convcalc verify SPEC` (meta device, with the receptive field
   measured) of every spec in specs/, DenseNet-121 included, under 10 s each on 2 cores.
   One table row per spec: wall seconds and the peak resident memory of the process.

    python benchmarks/bench_verify.py            # both
    python benchmarks/bench_verify.py --specs    # the table only
    python benchmarks/bench_verify.py --specs --all   # with --all (every layer's field)

The machine may be shared: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENT = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

CPU_FORWARD = """
import time, torch, convcalc
start = time.perf_counter()
model = convcalc.build_module({spec!r}).eval()
with torch.no_grad():
    model(torch.zeros(8, 3, 224, 224))
print(f"{{time.perf_counter() - start:.2f}}")
"""


def run(command: list[str], timeout: float | None = None) -> tuple[float, float, int]:
    """Wall seconds, peak resident MiB and exit code of one command (killed at
    ``timeout`` seconds: exit code -9)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENVIRONMENT
    )
    deadline = None if timeout is None else start + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if deadline is not None and time.perf_counter() > deadline:
            process.kill()
            _, status, usage = os.wait4(process.pid, 0)
            break
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    return elapsed, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def convcalc_command() -> str:
    return shutil.which("convcalc") or str(Path(sys.executable).parent / "convcalc")


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def vgg16() -> None:
    convcalc = convcalc_command()
    vgg = str(ROOT / "specs" / "vgg16.yaml")
    run([sys.executable, "-c", "import torch"])  # warm the file cache
    torch_wall, torch_peak, _ = run([sys.executable, "-c", "import torch"])
    print(
        f"python -c 'import torch'                      {torch_wall:6.2f} s  {torch_peak:7.1f} MiB"
    )
    runs = [run([convcalc, "verify", vgg, "--batch-size", "256"]) for _ in range(3)]
    wall = min(r[0] for r in runs)
    peak = max(r[1] for r in runs)
    print(
        f"convcalc verify vgg16 --batch-size 256 (meta)  {wall:6.2f} s  {peak:7.1f} MiB"
        "  (best of 3)"
    )
    cpu = [run([sys.executable, "-c", CPU_FORWARD.format(spec=vgg)]) for _ in range(2)]
    cpu_wall = min(r[0] for r in cpu)
    cpu_peak = max(r[1] for r in cpu)
    print(
        f"real CPU forward of vgg16 at batch 8           {cpu_wall:6.2f} s  {cpu_peak:7.1f} MiB"
        "  (best of 2)"
    )
    print(f"ratio verify(meta, batch 256) / CPU forward(batch 8): {wall / cpu_wall:.2f}")


def spec_table(every_field: bool, timeout: float, repeat: int) -> None:
    """`convcalc verify` of every spec in specs/, receptive field included."""
    convcalc = convcalc_command()
    run([sys.executable, "-c", "import torch"])  # warm the file cache
    flag = ["--all"] if every_field else []
    command = " ".join(["convcalc verify SPEC", *flag])
    print(f"{command} (meta device; best of {repeat}); {load()}")
    print(f"{'spec':<22} {'seconds':>8} {'peak MiB':>9}  exit")
    slowest = 0.0
    for path in sorted((ROOT / "specs").glob("*.yaml")):
        runs = [run([convcalc, "verify", str(path), *flag], timeout) for _ in range(repeat)]
        wall = min(r[0] for r in runs)
        peak = max(r[1] for r in runs)
        code = max(r[2] for r in runs)
        slowest = max(slowest, wall)
        shown = f"> {timeout:.0f}" if code == -9 else f"{wall:.2f}"
        print(f"{path.stem:<22} {shown:>8} {peak:9.1f}  {code}")
    print(f"slowest: {slowest:.2f} s (target: under 10 s each); {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", action="store_true", help="only the table of specs/")
    parser.add_argument("--all", action="store_true", help="verify --all (every field)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per spec (best kept)")
    arguments = parser.parse_args()
    if not arguments.specs:
        vgg16()
        print()
    spec_table(arguments.all, arguments.timeout, arguments.repeat)


if __name__ == "__main__":
    main()
