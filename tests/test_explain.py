"""``convcalc shape --explain``: every formula, evaluated, gives the number the calculator
reports (which the layer tests hold to torch)."""

from __future__ import annotations

import json
import math
import re

import pytest
from click.testing import CliRunner

import convcalc
from convcalc.cli import cli

from .conftest import SPECS_DIR
from .test_layers_vs_torch import CASES

RESULT = re.compile(r"^(.*) = ([\d,]+)(?: \(.*\))?$")


def evaluate(expression: str) -> float:
    """A formula as the explanation writes it (·, −, ⌊⌋, ⌈⌉) as a number."""
    python = (
        expression.replace("·", "*").replace("−", "-").replace("⌊", "floor(").replace("⌋", ")")
        .replace("⌈", "ceil(").replace("⌉", ")")
    )  # fmt: skip
    return eval(python, {"__builtins__": {}, "floor": math.floor, "ceil": math.ceil})


def check(row) -> int:
    """Check each line of a row's explanation against the row; the number checked."""
    checked = 0
    spatial = dict(zip(("D", "H", "W")[-(len(row.output_shape) - 2) :], row.output_shape[2:]))
    if len(row.output_shape) == 3:
        spatial = {"L": row.output_shape[2]}
    for line in row.explanation:
        name, _, rest = line.partition(": ")
        if name in spatial and ("output_size" in rest or "(size)" in rest):
            assert int(rest.split()[0]) == spatial[name], line
            checked += 1
            continue
        if rest.startswith("0 (") and name == "params":  # affine: false
            assert row.params == 0
            checked += 1
            continue
        if rest.startswith("0 (") and name in ("bytes read", "bytes written"):  # views
            assert getattr(row, name.replace(" ", "_")) == 0, line
            checked += 1
            continue
        if ", minus 1 as the last window" in rest:  # ceil_mode's correction
            first, _, second = rest.partition(
                ", minus 1 as the last window would start in the padding = "
            )
            expression, _, raw = first.rpartition(" = ")
            assert evaluate(expression) == int(raw) and int(second) == int(raw) - 1
            rest = f"{int(second)} = {second}"
        match = RESULT.match(rest)
        assert match, line
        expression, value = match.group(1), int(match.group(2).replace(",", ""))
        assert evaluate(expression) == value, line
        expected = {
            "params": row.params,
            "MACs": row.macs,
            "buffers": row.buffers,
            "bytes read": row.bytes_read,
            "bytes written": row.bytes_written,
        }.get(name)
        if expected is None and name in spatial:
            expected = spatial[name]
        if expected is None and name.startswith("dimensions"):
            expected = math.prod(row.output_shape) // math.prod(
                [
                    d
                    for i, d in enumerate(row.output_shape)
                    if i != int(name.split()[1].split("–")[0])
                ]
            )
        assert value == expected, line
        checked += 1
    return checked


@pytest.mark.parametrize(("spec", "shape"), CASES, ids=lambda v: str(v))
def test_every_formula_gives_the_calculators_number(spec, shape):
    report = convcalc.analyze(
        {"input": list(shape[1:]), "batch_size": shape[0], "layers": [spec]}, explain=True
    )
    row = report.rows[0]
    checked = check(row)
    if row.type.startswith(("conv", "maxpool", "avgpool", "adaptive", "upsample", "zeropad")):
        assert checked >= len(row.output_shape) - 2  # one line per spatial dimension at least
    if row.params:
        assert any(line.startswith("params: ") for line in row.explanation)


@pytest.mark.parametrize("path", sorted(SPECS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_spec_explains_itself(path):
    for row in convcalc.analyze(path, explain=True).rows:
        check(row)


def test_the_issues_example():
    row = convcalc.analyze(SPECS_DIR / "alexnet.yaml", explain=True).row("layers.0.0")
    assert row.explanation[:3] == (
        "H: ⌊(224 + 2·2 − 1·(11−1) − 1) / 4⌋ + 1 = 55",
        "W: ⌊(224 + 2·2 − 1·(11−1) − 1) / 4⌋ + 1 = 55",
        "params: (11·11·3/1)·64 + 64 = 23,296",
    )


def test_the_formulas_torch_applies_in_special_cases():
    def explain(layer, shape):
        report = convcalc.analyze({"input": list(shape), "layers": [layer]}, explain=True)
        return report.rows[0].explanation

    assert explain(
        {"type": "maxpool2d", "kernel_size": 2, "ceil_mode": True, "padding": 1}, [1, 5, 5]
    )[0] == (
        "H: ⌈(5 + 2·1 − 1·(2−1) − 1) / 2⌉ + 1 = 4, minus 1 as the last window would start in "
        "the padding = 3"
    )
    assert explain(
        {"type": "conv2d", "out_channels": 1, "kernel_size": 4, "padding": "same"}, [1, 9, 9]
    )[0] == ("H: ⌊(9 + 1 + 2 − 1·(4−1) − 1) / 1⌋ + 1 = 9 (padding 'same': 1 before, 2 after)")
    assert explain(
        {
            "type": "convtranspose2d",
            "out_channels": 2,
            "kernel_size": 3,
            "stride": 2,
            "padding": 1,
            "output_padding": 1,
        },
        [1, 7, 7],
    )[0] == ("H: (7 − 1)·2 − 2·1 + 1·(3−1) + 1 + 1 = 14")
    assert explain({"type": "adaptiveavgpool2d", "output_size": 5}, [1, 13, 13])[0] == (
        "H: 5 (output_size); window i covers ⌊i·13/5⌋ … ⌈(i+1)·13/5⌉ − 1, 3 or 4 wide"
    )


def test_cli_explain_puts_formulas_under_each_layer():
    mnist = str(SPECS_DIR / "mnist_cnn.yaml")
    lines = CliRunner().invoke(cli, ["shape", mnist, "--explain"]).stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("layers.0 (conv1)"))
    assert lines[first + 1 : first + 4] == [
        "    H: ⌊(28 + 2·1 − 1·(3−1) − 1) / 1⌋ + 1 = 28",
        "    W: ⌊(28 + 2·1 − 1·(3−1) − 1) / 1⌋ + 1 = 28",
        "    params: (3·3·1/1)·32 + 32 = 320",
    ]
    assert lines[first + 5 : first + 8] == [
        "    bytes read: (1·1·28·28 + 320)·4 = 4,416",
        "    bytes written: (1·32·28·28)·4 = 100,352"
        " (intensity 451,584 FLOPs / 104,768 B = 4.31 FLOP/B)",
        "layers.1          relu       [1, 32, 28, 28]"
        "                     --         --  3×3 (stride 1)",
    ]
    markdown = CliRunner().invoke(cli, ["shape", mnist, "--explain", "-f", "markdown"]).stdout
    assert "| Formulas" in markdown and "<br>W: ⌊(28" in markdown
    data = json.loads(CliRunner().invoke(cli, ["shape", mnist, "-f", "json", "--explain"]).stdout)
    assert data["layers"][7]["explanation"] == [
        "params: 3136·10 + 10 = 31,370",
        "MACs: 1·3136·10 = 31,360",
        "bytes read: (1·3136 + 31370)·4 = 138,024",
        "bytes written: (1·10)·4 = 40 (intensity 62,720 FLOPs / 138,064 B = 0.45 FLOP/B)",
    ]
    plain = json.loads(CliRunner().invoke(cli, ["shape", mnist, "-f", "json"]).stdout)
    assert plain["layers"][7]["explanation"] == []


def test_formulas_are_written_only_when_asked_for():
    """The text costs more than the arithmetic: a plain analysis leaves it out, and
    rendering with explain writes it."""
    plain = convcalc.analyze(SPECS_DIR / "alexnet.yaml")
    assert all(row.explanation == () for row in plain.rows)
    assert not plain.explained
    assert "params: (11·11·3/1)·64 + 64 = 23,296" in plain.render(explain=True)
