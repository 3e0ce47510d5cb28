"""Speed of `convcalc import-onnx`, next to `convcalc import-torch` of the same models.

Prints figures; asserts nothing. Target (issue 15): `convcalc import-onnx` of the
ResNet-50 and EfficientNet-B0 files under 1.5 s wall, the onnx import included.

The two files are torchvision's models (random weights) exported here with torch's ONNX
exporter (`torch.onnx.export(..., dynamo=True)`), into a temporary folder. Also timed,
once: `convcalc export specs/resnet50.yaml --to onnx`, the other direction.

Then every bad file of the issue through `convcalc import-onnx` (targets: one sentence
naming the file, exit 1, under 1 s, bounded memory): text, random bytes, an empty file, a
truncated and a corrupted ResNet-50, an external-data model without its data file, a
symbolic input without `--input`, an op outside the supported set, two inputs of unknown
shape, weights declared at 10**12 elements without data, a constant of 10**12 elements
computed from 12 bytes, a directory, a missing file.

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


def bad_files(folder: Path, resnet: Path) -> dict[str, Path]:
    """Bad inputs written into ``folder``: name -> path."""
    import random

    import numpy
    import onnx
    from onnx import TensorProto, helper

    def save(name: str, nodes: list, inputs: list, initializers: list | tuple = ()) -> Path:
        graph = helper.make_graph(
            nodes,
            name,
            inputs,
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            list(initializers),
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        path = folder / f"{name}.onnx"
        onnx.save(model, str(path))
        return path

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    symbolic = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, "H", "W"]) for n in "xz"
    ]
    raw = resnet.read_bytes()
    files: dict[str, Path] = {}
    for name, data in {
        "a YAML spec named .onnx": b"input: [3, 8, 8]\nlayers: [relu]\n",
        "random bytes, 20 MB": random.Random(15).randbytes(20_000_000),
        "an empty file": b"",
        "ResNet-50 cut in half": raw[: len(raw) // 2],
        "ResNet-50 with its first 1 KB overwritten": raw[:16]
        + random.Random(3).randbytes(1024)
        + raw[1040:],
    }.items():
        path = folder / f"bad{len(files)}.onnx"
        path.write_bytes(data)
        files[name] = path

    def declared(name: str, dims: list[int]) -> onnx.TensorProto:
        """A float initialiser with dimensions and no data."""
        return onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)

    weight = declared("w", [8, 3, 3, 3])
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="missing.bin")
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="/conv/Conv")
    files["external data file missing"] = save("external", [conv], [x], [weight])
    relu = helper.make_node("Relu", ["x"], ["y"], name="/relu/Relu")
    files["symbolic input, no --input"] = save("symbolic", [relu], symbolic[:1])
    erf = helper.make_node("Erf", ["x"], ["y"], name="/mlp/Erf")
    files["an op outside the set (Erf)"] = save("erf", [erf], [x])
    add = helper.make_node("Add", ["x", "z"], ["y"], name="/add/Add")
    files["two inputs of unknown shape"] = save("two", [add], symbolic)
    huge = declared("w", [1_000_000, 1_000_000])
    matmul = helper.make_node("MatMul", ["x", "w"], ["y"], name="/fc/MatMul")
    flat = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1_000_000])
    files["weights of 10**12 elements, no data"] = save("huge", [matmul], [flat], [huge])
    scalars = [
        onnx.numpy_helper.from_array(numpy.array(v, dtype=numpy.float32), k)
        for k, v in (("a", 0), ("b", 1e12), ("d", 1))
    ]
    one = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 1])
    ranged = [
        helper.make_node("Range", ["a", "b", "d"], ["c"], name="/fill/Range"),
        helper.make_node("Add", ["x", "c"], ["y"], name="/add/Add"),
    ]
    files["a Range of 10**12 elements from 12 bytes"] = save("range", ranged, [one], scalars)
    (folder / "a-directory.onnx").mkdir()
    files["a directory"] = folder / "a-directory.onnx"
    files["a missing file"] = folder / "no-such-model.onnx"
    return files


def bad_inputs(convcalc: str, folder: Path) -> None:
    """Each bad file once through import-onnx: wall, peak, exit code, the message."""
    # written by another process: a child's peak memory (ru_maxrss) starts from its
    # parent's at the fork, so this one stays small
    listing = subprocess.run(
        [sys.executable, __file__, "--write-bad", str(folder)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    print(f"\n{'bad input':<44} {'wall':>7} {'peak':>10} exit  message")
    worst = [0.0, 0.0]
    for line in listing.splitlines():
        label, path = line.split("\t")
        start = time.perf_counter()
        process = subprocess.Popen(
            [convcalc, "import-onnx", path, "-o", os.devnull],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=ENVIRONMENT,
        )
        assert process.stderr is not None
        message = process.stderr.read().decode(errors="replace")
        _, status, usage = os.wait4(process.pid, 0)
        wall, peak = time.perf_counter() - start, usage.ru_maxrss / 1024
        code = os.waitstatus_to_exitcode(status)
        worst = [max(worst[0], wall), max(worst[1], peak)]
        lines = message.strip().splitlines()
        shown = (lines[0] if lines else "(none)").replace(str(Path(path).parent) + os.sep, "")
        flag = "" if code == 1 and len(lines) == 1 and wall < 1 else "  <-"
        print(f"{label:<44} {wall:5.2f} s {peak:6.1f} MiB {code:4}  {shown[:110]}{flag}")
    print(f"max: {worst[0]:.2f} s, {worst[1]:.1f} MiB (targets: exit 1, one line, < 1 s)")


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
    parser.add_argument("--write-bad", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.write_bad:  # the child process that writes the bad files
        bad = arguments.write_bad / "bad"
        bad.mkdir()
        for label, path in bad_files(bad, arguments.write_bad / "resnet50.onnx").items():
            print(f"{label}\t{path}")
        return
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
        bad_inputs(convcalc, folder)


if __name__ == "__main__":
    main()
