"""Every bad input, hostile or not, through `convcalc check` and `convcalc shape` as real
processes (issue 12 targets: answered in under 1 s and 200 MiB, exit 1, a message under
2 KB, no traceback). Prints wall time, peak memory (ru_maxrss), message size, exit code
and whether a traceback appeared, per input and command, then the maxima; asserts
nothing. A line ending in ``<-`` misses a target.

The inputs: the bad specs of tests/test_errors.py (CASES) and of tests/test_fuzz.py
(FOUND, PROCESS_CASES), any spec file under tests/ whose name says it is bad, and
hostile files made here: billion laughs, a 10**9 repeat, lists nested 100,000 deep,
blocks nested and multiplied, a 50 MB line, binary garbage, an endless device, an empty
file, a directory and a missing file.

    python benchmarks/bench_bad_inputs.py
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENT = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
TARGET_SECONDS, TARGET_MIB, TARGET_BYTES = 1.0, 200.0, 2048


def laughs(levels: int) -> str:
    """A 'billion laughs': ``levels`` levels of aliases, nine each, under layers."""
    lines = ["input: [3, 8, 8]", "x-0: &l0 [relu, relu, relu, relu, relu, relu, relu, relu, relu]"]
    for i in range(1, levels + 1):
        lines.append(f"x-{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join([*lines, f"layers: *l{levels}"]) + "\n"


def block_laughs(levels: int) -> str:
    """The same through blocks: each uses the next one ten times, by bare name."""
    blocks = [f"  b{i}: {{layers: [{', '.join([f'b{i + 1}'] * 10)}]}}" for i in range(levels)]
    blocks.append(f"  b{levels}: {{layers: [relu]}}")
    return "version: 2\ninput: [3, 8, 8]\nblocks:\n" + "\n".join(blocks) + "\nlayers: [b0]\n"


def block_chain(length: int) -> str:
    """Blocks nested ``length`` deep, each inside a sequential of the one before."""
    blocks = [
        f"  b{i}: {{layers: [{{type: sequential, layers: [b{i + 1}]}}]}}" for i in range(length)
    ]
    blocks.append(f"  b{length}: {{layers: [relu]}}")
    return "version: 2\ninput: [3, 8, 8]\nblocks:\n" + "\n".join(blocks) + "\nlayers: [b0]\n"


def hostile(directory: Path) -> dict[str, Path]:
    """Hostile inputs written into ``directory``: name -> path."""
    head = "input: [3, 8, 8]\nlayers: "
    texts: dict[str, str | bytes] = {
        "billion laughs, 7 levels": laughs(7),
        "billion laughs, 9 levels": laughs(9),
        "billion laughs through blocks, 9 levels": block_laughs(9),
        "repeat times 10**9": head + "[{type: repeat, times: 1000000000, layers: [relu]}]\n",
        "lists nested 100,000 deep": head + "[" * 100_000 + "]" * 100_000 + "\n",
        "sequentials nested 5,000 deep": head
        + "[{type: sequential, layers: " * 5000
        + "[relu]"
        + "}]" * 5000
        + "\n",
        "blocks nested 1,000 deep": block_chain(1000),
        "a 50 MB line": head + "[" + "relu, " * (50_000_000 // 6) + "relu]\n",
        "4 MB of values (under the byte limit)": head
        + "[{type: conv2d, out_channels: 3, kernel_size: ["
        + "1," * 2_000_000
        + "1]}]\n",
        "binary garbage, 1 MB": random.Random(12).randbytes(1_000_000),
        "an empty file": "",
    }
    paths = {}
    for index, (name, text) in enumerate(texts.items()):
        path = directory / f"hostile{index}.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        paths[name] = path
    (directory / "a-directory.yaml").mkdir()
    paths["a directory"] = directory / "a-directory.yaml"
    paths["a missing file"] = directory / "no-such-spec.yaml"
    if Path("/dev/zero").exists():
        paths["an endless device (/dev/zero)"] = Path("/dev/zero")
    return paths


def from_tests(directory: Path) -> dict[str, Path]:
    """The bad specs the tests hold inline (and any bad spec file under tests/)."""
    sys.path.insert(0, str(ROOT))
    from tests.test_errors import CASES
    from tests.test_fuzz import FOUND, PROCESS_CASES  # FOUND_VALID: answered, not refused

    texts: dict[str, str | bytes] = {f"test_errors {k}": v[0] for k, v in sorted(CASES.items())}
    texts.update({f"test_fuzz {k}": v for k, v in sorted(FOUND.items())})
    texts.update(
        {f"test_fuzz process {k}": raw for k, (raw, code) in PROCESS_CASES.items() if code}
    )
    paths = {}
    for index, (name, text) in enumerate(texts.items()):
        path = directory / f"test{index}.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        paths[name] = path
    for path in sorted((ROOT / "tests").rglob("*.y*ml")):
        if any(word in path.name for word in ("bad", "invalid", "broken", "error")):
            paths[str(path.relative_to(ROOT))] = path
    return paths


def run(command: list[str]) -> tuple[float, float, int, int, bool]:
    """Wall seconds, peak MiB, stderr bytes, exit code and whether a traceback appeared."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=ENVIRONMENT)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    traceback = b"Traceback" in stdout or b"Traceback" in stderr
    code = os.waitstatus_to_exitcode(status)
    return elapsed, usage.ru_maxrss / 1024, len(stderr), code, traceback


def write_inputs(directory: Path) -> None:
    """Write every input into ``directory`` and print ``name<TAB>path`` lines."""
    for label, path in {**hostile(directory), **from_tests(directory)}.items():
        print(f"{label}\t{path}")


def main() -> None:
    convcalc = shutil.which("convcalc") or str(Path(sys.executable).parent / "convcalc")
    with tempfile.TemporaryDirectory() as name:
        # Written by another process: a child's peak memory (ru_maxrss) starts from its
        # parent's at the fork, so this one stays small.
        listing = subprocess.run(
            [sys.executable, __file__, "--write", name],
            capture_output=True,
            text=True,
            check=True,
            env=ENVIRONMENT,
        ).stdout
        inputs = dict(line.split("\t") for line in listing.splitlines())
        run([convcalc, "--help"])  # warm the file cache
        wall, peak, _, _, _ = run([convcalc, "--help"])
        print(f"{'floor: convcalc --help (interpreter + import)':60} {wall:5.2f} s {peak:6.1f} MiB")
        worst = [0.0, 0.0, 0]
        codes: dict[int, int] = {}
        tracebacks = 0
        for label, path in inputs.items():
            for command in ("check", "shape"):
                wall, peak, size, code, traceback = run([convcalc, command, str(path)])
                worst = [max(worst[0], wall), max(worst[1], peak), max(worst[2], size)]
                codes[code] = codes.get(code, 0) + 1
                tracebacks += traceback
                missed = (
                    wall >= TARGET_SECONDS
                    or peak >= TARGET_MIB
                    or size >= TARGET_BYTES
                    or code != 1
                    or traceback
                )
                print(
                    f"{label[:52]:52} {command:7} {wall:5.2f} s {peak:6.1f} MiB {size:6d} B "
                    f"exit {code}{'  traceback' if traceback else ''}{'  <-' if missed else ''}"
                )
    exits = ", ".join(f"{count} × exit {code}" for code, count in sorted(codes.items()))
    print(
        f"max: {worst[0]:.2f} s, {worst[1]:.1f} MiB, message {worst[2]} B; {exits}; "
        f"{tracebacks} tracebacks (targets: < {TARGET_SECONDS:g} s, < {TARGET_MIB:g} MiB, "
        f"< {TARGET_BYTES} B, exit 1, none)"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        write_inputs(Path(sys.argv[2]))
    else:
        main()
