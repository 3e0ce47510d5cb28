"""Speed and memory of `convcalc verify` (issue 3 target: VGG16 at batch 256 on the meta
device under 10 s wall and 1.5 GiB peak, torch import included), next to a real CPU
forward pass of the same model at batch 8. Prints figures; asserts nothing.

    python benchmarks/bench_verify.py
"""

from __future__ import annotations

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


def run(command: list[str]) -> tuple[float, float]:
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=ENVIRONMENT)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed")
    return elapsed, usage.ru_maxrss / 1024


def main() -> None:
    convcalc = shutil.which("convcalc") or str(Path(sys.executable).parent / "convcalc")
    vgg = str(ROOT / "specs" / "vgg16.yaml")
    run([sys.executable, "-c", "import torch"])  # warm the file cache
    torch_wall, torch_peak = run([sys.executable, "-c", "import torch"])
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


if __name__ == "__main__":
    main()
