"""The documentation stays true: its examples load and the README shows real output."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

import convcalc
from convcalc.cli import cli

from .conftest import ROOT

DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _yaml_blocks(path):
    text = path.read_text(encoding="utf-8")
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.S)


EXAMPLES = [
    pytest.param(block, id=f"{path.name}-{i}")
    for path in DOC_FILES
    for i, block in enumerate(_yaml_blocks(path))
]


@pytest.mark.parametrize("block", EXAMPLES)
def test_every_yaml_example_analyses(block):
    assert convcalc.analyze(block).rows


def test_readme_example_output_is_real():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"\$ convcalc shape specs/mnist_cnn.yaml\n(.*?)```", readme, flags=re.S)
    assert match, "the README's example is missing"
    result = CliRunner().invoke(cli, ["shape", str(ROOT / "specs" / "mnist_cnn.yaml")])
    assert match.group(1) == result.stdout


def test_readme_spec_is_the_shipped_spec():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = _yaml_blocks(ROOT / "README.md")[0]
    shipped = (ROOT / "specs" / "mnist_cnn.yaml").read_text(encoding="utf-8")
    assert block.replace("# specs/mnist_cnn.yaml\n", "") in shipped
    # CI installs with the README's set-up command, every extra the tests use included
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    install = re.search(r"pip install -c constraints\.txt -e '\.\[([\w,]+)\]'", ci)
    assert install and install.group(0) in readme
    extras = set(install.group(1).split(","))
    assert {"dev", "train", "tensorboard", "serve", "onnx"} <= extras


def test_readme_error_example_is_real(write_spec):
    path = write_spec(
        "name: bad\ninput: [1, 28, 28]\nlayers:\n"
        "  - {type: conv2d, name: conv1, out_channels: 8, kernal_size: 3}\n  - relu\n",
        name="bad.yaml",
    )
    result = CliRunner().invoke(cli, ["shape", str(path)])
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = re.search(r"\$ convcalc shape bad.yaml\n(.*?)\n```", readme, flags=re.S).group(1)
    assert result.stderr.strip() == shown.replace("bad.yaml", str(path))


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = (
        re.search(r"## Set up.*?```bash\n(.*?)```", readme, flags=re.S)
        .group(1)
        .strip()
        .splitlines()
    )
    browser = (
        re.search(r"headless Chromium.*?```bash\n(.*?)```", readme, flags=re.S)
        .group(1)
        .strip()
        .splitlines()
    )
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [
        line for line in ci.splitlines() if line and not line.startswith(("#", "set ", "cd "))
    ]
    assert commands == browser + setup


def test_readme_python_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    exec(compile(block, "README.md", "exec"), {})


def test_readme_training_example_is_real(tmp_path):
    """The README's `convcalc train` run, rerun: same lines, metrics equal up to the
    last digits a different CPU could change (timings and memory aside)."""
    from convcalc.training import train

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = re.search(r"\$ convcalc train (specs/.*?)\n(.*?)```", readme, flags=re.S)
    assert shown, "the README's training example is missing"
    assert shown.group(1) == "specs/mnist_cnn.yaml --data digits --epochs 10"
    lines: list[str] = []
    train(ROOT / "specs/mnist_cnn.yaml", "digits", epochs=10, out=tmp_path, echo=lines.append)

    def key(line: str) -> str:
        return line.split(";")[0] if line.startswith("best") else line.split(":")[0]

    real = {key(line): line for line in lines}
    number = re.compile(r"\d+\.\d+")
    for line in shown.group(2).splitlines():
        if line == "..." or line.startswith(("throughput", "memory")):
            continue
        assert key(line) in real, f"the README shows a line the run does not print: {line}"
        if line.startswith("epoch"):
            expected = [float(v) for v in number.findall(line)][:3]
            measured = [float(v) for v in number.findall(real[key(line)])][:3]
            assert measured == pytest.approx(expected, abs=0.02), line
        elif not line.startswith("best"):
            assert real[key(line)] == line


@pytest.mark.parametrize(
    "command",
    [
        "convcalc solve --in 224 --out 112 --kernel 3",
        "convcalc sizes specs/unet_small.yaml --range 60:66",
    ],
)
def test_readme_design_examples_are_real(command, monkeypatch):
    monkeypatch.chdir(ROOT)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = re.search(re.escape(f"$ {command}\n") + r"(.*?)```", readme, flags=re.S)
    assert shown, f"the README does not show {command}"
    result = CliRunner().invoke(cli, command.split()[1:])
    assert result.stdout == shown.group(1)


@pytest.mark.parametrize(
    "command",
    [
        "convcalc shape specs/alexnet.yaml --explain --depth 2",
        "convcalc maps specs/edge_filters.yaml --image digits:0 --filters edges --layers "
        "conv1,relu1 -o maps.png",
    ],
)
def test_readme_excerpts_are_real(command, monkeypatch, tmp_path):
    """Examples shown in part (with ...): every line shown is a line the command prints."""
    monkeypatch.chdir(ROOT)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = re.search(re.escape(f"$ {command}\n") + r"(.*?)```", readme, flags=re.S)
    assert shown, f"the README does not show {command}"
    arguments = [a if a != "maps.png" else str(tmp_path / "maps.png") for a in command.split()[1:]]
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 0
    printed = (result.stdout + result.stderr).replace(str(tmp_path / "maps.png"), "maps.png")
    for line in shown.group(1).splitlines():
        if line != "...":
            assert line in printed.splitlines(), line


def test_readme_cost_excerpt_is_real():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = "convcalc shape specs/resnet18.yaml --traffic --device-profile t4 --depth 1"
    excerpt = re.search(rf"\$ {re.escape(command)}\n(.*?)```", readme, flags=re.S).group(1)
    args = command.split()[1:]
    args[1] = str(ROOT / args[1])
    output = CliRunner().invoke(cli, args).stdout.splitlines()
    lines = [line for line in excerpt.splitlines() if line != "..."]
    assert lines and all(line in output for line in lines)


def test_readme_budget_example_is_real(monkeypatch):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = "convcalc check specs/efficientnet_b0.yaml --budget params=5M --budget macs=600M"
    shown = re.search(rf"\$ {re.escape(command)}\n(.*?)\n```", readme, flags=re.S).group(1)
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(cli, command.split()[1:])
    assert result.exit_code == 1 and result.stderr.strip() == shown
