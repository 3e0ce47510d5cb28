"""Speed of `convcalc import-onnx`, next to `convcalc import-torch` of the same models.

Prints figures; asserts nothing. Target (issue 15): `convcalc import-onnx` of the
ResNet-50 and EfficientNet-B0 files under 1.5 s wall, the onnx import included.

The two files are torchvision's models (random weights) exported here with torch's ONNX
exporter (`torch.onnx.export(..., dynamo=True)`), into a temporary folder. Also timed,
once: `convcalc export specs/resnet50.yaml --to onnx`, the other direction.

    python benchmarks/bench_onnx.py [--runs 9]
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
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("resnet50", "efficientnet_b0")
TARGET_SECONDS = 1.5

# As a user runs it: Python caches bytecode (some sandboxes turn that off).
ENVIRONMENT = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

# The torchvision wheel is a CUDA build whose compiled ops do not load beside the CPU
# torch: `import torchvision` fails at torchvision::nms unless the two op schemas are
# defined first (the `torchvision_models` fixture of tests/conftest.py does the same).
TORCHVISION_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_KEEP: list[object] = []

# The same trick for the `convcalc import-torch` processes: a factory module that
# defines the schemas, then hands on torchvision's factories.
FACTORY_MODULE = f"""\
import torch

_library = torch.library.Library("torchvision", "DEF")
for _schema in {TORCHVISION_OPS!r}:
    _library.define(_schema)

from torchvision.models import {", ".join(MODELS)}  # noqa: E402
"""


def torchvision_models():
    import torch

    if not _KEEP:
        library = torch.library.Library("torchvision", "DEF")
        for schema in TORCHVISION_OPS:
            library.define(schema)
        _KEEP.append(library)
    import torchvision.models

    return torchvision.models


def export_files(folder: Path) -> dict[str, Path]:
    """torchvision's models as ONNX files in ``folder``, by name."""
    import torch

    models = torchvision_models()
    files = {}
    for name in MODELS:
        model = getattr(models, name)(weights=None).eval()
        path = folder / f"{name}.onnx"
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (torch.randn(1, 3, 224, 224),), None, dynamo=True, verbose=False
            )
            program.save(path, external_data=False)
        elapsed = time.perf_counter() - start
        size = path.stat().st_size / 2**20
        print(f"exported {name} with torch.onnx.export: {elapsed:5.1f} s, {size:5.1f} MiB")
        files[name] = path
    return files


def run_process(command: list[str], cwd: Path | None = None) -> tuple[float, float]:
    """Wall seconds and peak resident MiB of one run of a command."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENVIRONMENT,
        cwd=cwd,
    )
    assert process.stderr is not None
    error = process.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        first = next((line for line in error.splitlines() if line.strip()), "no message")
        raise RuntimeError(first)
    return elapsed, usage.ru_maxrss / 1024


def measure(commands: dict[str, list[str]], runs: int, cwd: Path) -> None:
    """Run the commands round-robin, so that load on a shared machine hits them alike."""
    failed: dict[str, str] = {}
    for label, command in commands.items():
        try:
            run_process(command, cwd)  # warm the file cache and .pyc files
        except RuntimeError as error:
            failed[label] = str(error)
    results: dict[str, list[tuple[float, float]]] = {
        label: [] for label in commands if label not in failed
    }
    for _ in range(runs):
        for label in results:
            results[label].append(run_process(commands[label], cwd))
    print(f"\n{'command':<58} {'median':>8} {'min':>8} {'peak':>10}")
    for label in commands:
        if label in failed:
            print(f"{label:<58} failed: {failed[label]}")
            continue
        walls = [wall for wall, _ in results[label]]
        peak = max(rss for _, rss in results[label])
        median = statistics.median(walls)
        verdict = ""
        if "import-onnx" in label:
            verdict = "  ok" if median < TARGET_SECONDS else f"  over {TARGET_SECONDS} s"
        print(f"{label:<58} {median:6.3f} s {min(walls):6.3f} s {peak:6.1f} MiB{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--export-to", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.export_to:  # the child process that exports the files
        export_files(arguments.export_to)
        return
    runs = arguments.runs
    convcalc = shutil.which("convcalc") or str(Path(sys.executable).parent / "convcalc")
    python = sys.executable
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        # exported in a child process: a child's peak memory starts at its parent's, so
        # this process stays small (no torch) for the figures below to be the commands'
        subprocess.run([python, __file__, "--export-to", str(folder)], check=True)
        files = {model: folder / f"{model}.onnx" for model in MODELS}
        (folder / "tv_factories.py").write_text(FACTORY_MODULE, encoding="utf-8")
        ENVIRONMENT["PYTHONPATH"] = os.pathsep.join(
            [str(folder), *filter(None, [ENVIRONMENT.get("PYTHONPATH")])]
        )
        start = time.perf_counter()
        try:
            run_process(
                [convcalc, "export", str(ROOT / "specs/resnet50.yaml"), "--to", "onnx",
                 "-o", str(folder / "spec_resnet50.onnx")],
                folder,
            )  # fmt: skip
            print(
                "convcalc export specs/resnet50.yaml --to onnx: "
                f"{time.perf_counter() - start:5.1f} s (once)"
            )
        except RuntimeError as error:
            print(f"convcalc export specs/resnet50.yaml --to onnx failed: {error}")
        print(f"\n{runs} runs each, after one warm-up run; {os.cpu_count()} cores")
        commands: dict[str, list[str]] = {
            "python -c pass": [python, "-c", "pass"],
            "python: import onnx": [python, "-c", "import onnx"],
        }
        for model in MODELS:
            commands[f"convcalc import-onnx {model}.onnx"] = [
                convcalc, "import-onnx", str(files[model]), "-o", os.devnull,
            ]  # fmt: skip
        for model in MODELS:
            commands[f"convcalc import-torch torchvision.models:{model}"] = [
                convcalc, "import-torch", f"tv_factories:{model}", "--input", "3,224,224",
                "-o", os.devnull,
            ]  # fmt: skip
        measure(commands, runs, folder)
    print(f"\ntarget: import-onnx under {TARGET_SECONDS} s wall (issue 15)")


if __name__ == "__main__":
    main()
