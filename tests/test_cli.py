"""The command line, through click's CliRunner, and as real processes."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import convcalc
from convcalc.cli import cli

from .conftest import SPECS_DIR

ALEXNET = str(SPECS_DIR / "alexnet.yaml")


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_shape_table_is_the_report():
    result = run("shape", ALEXNET)
    assert result.exit_code == 0
    assert result.stdout == convcalc.analyze(ALEXNET).render("table")
    assert "Total params:         61,100,840" in result.stdout
    assert "FLOPs = 2 × MACs" in result.stdout


def test_shape_json_is_to_dict():
    result = run("shape", ALEXNET, "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads(json.dumps(convcalc.analyze(ALEXNET).to_dict()))


def test_shape_csv_has_one_row_per_layer():
    result = run("shape", ALEXNET, "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    report = convcalc.analyze(ALEXNET)
    assert len(rows) == len(report.rows)
    assert rows[1]["path"] == "layers.0.0" and rows[1]["output_shape"] == "1x64x55x55"
    assert sum(int(r["params"]) for r in rows if r["depth"] == "1") == 61_100_840


@pytest.mark.parametrize(("output_format", "marker"), [("markdown", "|:--"), ("github", "|----")])
def test_markdown_formats(output_format, marker):
    result = run("shape", ALEXNET, "--format", output_format)
    assert result.exit_code == 0
    assert marker in result.stdout
    assert "| Total params" in result.stdout


def test_shape_estimates_training_memory_for_an_optimizer():
    mnist = str(SPECS_DIR / "mnist_cnn.yaml")
    result = run("shape", mnist, "--optimizer", "adam", "--batch-size", "64", "-f", "json")
    assert result.exit_code == 0
    memory = json.loads(result.stdout)["training_memory"]
    params = 50_186 * 4
    saved = convcalc.analyze(mnist, batch_size=64).totals.saved_bytes  # held to torch elsewhere
    assert memory == {
        "optimizer": "adam",
        "batch_size": 64,
        "weights_bytes": params,
        "gradients_bytes": params,
        "optimizer_state_bytes": 2 * params,
        "activations_bytes": saved,
        "total_bytes": 4 * params + saved,
    }
    table = run("shape", mnist, "--optimizer", "sgd", "--batch-size", "64").stdout
    assert f"Training memory (sgd): {(3 * params + saved) / 1e6:,.2f} MB at batch 64" in table
    assert "optimizer state 0.20 MB" in table
    assert "training_memory" not in run("shape", mnist, "-f", "json").stdout


def test_depth_folds():
    result = run("shape", ALEXNET, "--depth", "1", "-f", "json")
    layers = json.loads(result.stdout)["layers"]
    assert [layer["path"] for layer in layers] == ["layers.0", "layers.1", "layers.2", "layers.3"]


def test_overrides():
    result = run(
        "shape",
        ALEXNET,
        "--input",
        "3,227,227",
        "--batch-size",
        "8",
        "--dtype",
        "float16",
        "-f",
        "json",
    )
    data = json.loads(result.stdout)
    assert data["input_shape"] == [8, 3, 227, 227]
    assert data["dtype"] == "float16"
    assert data["totals"]["param_bytes"] == 2 * 61_100_840
    assert data["layers"][1]["output_shape"] == [8, 64, 56, 56]


@pytest.mark.parametrize(
    "args",
    [
        ["shape"],
        ["shape", ALEXNET, "--format", "xml"],
        ["shape", ALEXNET, "--input", "3,abc"],
        ["shape", ALEXNET, "--input", "0,224,224"],
        ["shape", ALEXNET, "--depth", "0"],
        ["frobnicate"],
    ],
)
def test_bad_usage_exits_2(args):
    result = run(*args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("command", "path", "message"),
    [
        ("shape", "no-such-file.yaml", "no-such-file.yaml: no such file"),
        ("check", "no-such-file.yaml", "no-such-file.yaml: no such file"),
        ("verify", "no-such-file.yaml", "no-such-file.yaml: no such file"),
        ("shape", str(SPECS_DIR), "this is a directory, not a spec file"),
        ("draw", str(SPECS_DIR), "this is a directory, not a spec file"),
    ],
)
def test_a_spec_that_is_no_file_is_one_sentence(command, path, message):
    extra = ["-o", "x.svg"] if command == "draw" else []
    result = run(command, path, *extra)
    assert result.exit_code == 1
    assert result.stderr.strip().endswith(message) and len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.output


def test_bad_override_is_a_spec_error():
    result = run("shape", ALEXNET, "--input", "3,8,8")
    assert result.exit_code == 1
    assert "alexnet.yaml:12: layers.0.2: output size in H would be 0: " in result.stderr


def test_check_ok():
    result = run("check", ALEXNET)
    assert result.exit_code == 0
    assert "ok: 24 layers, output [1, 1000], 61,100,840 params, 714,188,480 MACs" in result.stdout


def test_check_prints_warnings_but_passes():
    result = run("check", str(SPECS_DIR / "alexnet_original.yaml"), "--input", "3,224,224")
    assert result.exit_code == 0
    assert "warning:" in result.stderr and "never covered" in result.stderr


def test_version_and_help():
    assert run("--version").stdout.startswith("convcalc, version")
    assert "shape" in run("--help").stdout


@pytest.mark.parametrize(
    "entry", [[str(Path(sys.executable).parent / "convcalc")], [sys.executable, "-m", "convcalc"]]
)
def test_real_process(entry):
    done = subprocess.run([*entry, "check", ALEXNET], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "61,100,840 params" in done.stdout


def test_real_process_error_has_no_traceback(write_spec):
    path = write_spec("input: [3, 8, 8]\nlayers:\n  - {type: conv2d, out_channels: 4}\n")
    done = subprocess.run(
        [sys.executable, "-m", "convcalc", "shape", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr == f"error: {path}:3: layers.0: missing required field 'kernel_size'\n"
    assert done.stdout == ""


def test_check_takes_several_specs_and_fails_if_any_fails(write_spec):
    bad = write_spec(
        "input: [1, 8, 8]\nlayers:\n  - {type: conv2d, out_channels: 4, kernel_size: 9}\n"
    )
    good = [str(p) for p in sorted(SPECS_DIR.glob("*.yaml"))[:3]]
    result = CliRunner().invoke(cli, ["check", *good])
    assert result.exit_code == 0, result.output
    assert result.stdout.count(": ok: ") == 3
    result = CliRunner().invoke(cli, ["check", good[0], str(bad), good[1]])
    assert result.exit_code == 1
    assert result.stdout.count(": ok: ") == 2
    assert "spec.yaml:3: layers.0: output size in H would be 0" in result.stderr
    assert "1 of 3 specs failed" in result.stderr


@pytest.mark.parametrize(
    ("blocked", "arguments", "message"),
    [
        ("numpy", ["train", "specs/mnist_cnn.yaml", "--data", "digits"], "needs numpy"),
        (
            "PIL",
            ["maps", "specs/mnist_cnn.yaml", "--image", "digits:0", "-o", "maps.png"],
            "needs Pillow",
        ),
    ],
)
def test_a_missing_extra_is_one_sentence(tmp_path, blocked, arguments, message):
    """Regression (issue 12): after `pip install .` train and maps crashed with
    ModuleNotFoundError; they name the extra to install."""
    script = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from convcalc.cli import main\n"
        f"sys.argv = ['convcalc', *{arguments!r}]\n"
        "main()\n"
    )
    root = Path(__file__).resolve().parent.parent
    arguments_in_root = [a if not a.startswith("specs/") else str(root / a) for a in arguments]
    script = script.replace(repr(arguments), repr(arguments_in_root))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert message in done.stderr and "pip install 'convcalc[train]'" in done.stderr
