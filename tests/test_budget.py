"""Budgets: limits in a spec (``budget:``) or on the command line (``--budget``) that
``check`` and ``shape`` hold the numbers to, one line per exceeded limit, exit 1."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

import convcalc
from convcalc.budget import Budget, budget_from_options, over_budget
from convcalc.cli import cli

from .conftest import SPECS_DIR

# EfficientNet-B0 as torchvision publishes it: 5,288,548 params, 385,814,752 MACs.
EFFICIENTNET = SPECS_DIR / "efficientnet_b0.yaml"


@pytest.mark.parametrize(
    ("budget", "exceeded"),
    [
        ({"params": "5M"}, ["params 5,288,548 exceeds the budget of 5,000,000 by 288,548 (5.8%)"]),
        ({"params": "5.3M"}, []),
        ({"params": "5Mi"}, ["params 5,288,548 exceeds the budget of 5,242,880 by 45,668 (0.9%)"]),
        ({"params": 5_288_548}, []),  # at the limit is within it
        ({"params": 5_288_547}, ["params 5,288,548 exceeds the budget of 5,288,547 by 1 (0.0%)"]),
        (
            {"macs": "385.8M"},
            ["macs 385,814,752 exceeds the budget of 385,800,000 by 14,752 (0.0%)"],
        ),
        ({"flops": "1G"}, []),
        ({"macs": "600M", "params": "6M"}, []),
    ],
)
def test_counts_against_published_totals(budget, exceeded):
    report = convcalc.analyze(EFFICIENTNET)
    assert [str(e) for e in over_budget(report, Budget.model_validate(budget))] == exceeded


def test_memory_and_latency_budgets():
    report = convcalc.analyze(EFFICIENTNET, batch_size=32)
    activations = report.totals.activation_bytes
    training = report.training_memory("adam").total
    latency = report.estimate("jetson-orin").seconds
    budget = Budget.model_validate(
        {
            "activation_memory": activations - 1,
            "training_memory": {"max": training, "optimizer": "adam"},
            "latency": {"device": "jetson-orin", "max": latency / 2},
        }
    )
    found = over_budget(report, budget)
    assert [e.quantity for e in found] == ["activation_memory", "latency"]
    assert found[0].value == activations and found[0].limit == activations - 1
    assert found[1].text.startswith("latency on jetson-orin ")
    assert "(100.0%)" in found[1].text
    tighter = Budget.model_validate({"training_memory": {"max": "1GiB", "optimizer": "sgd"}})
    (line,) = over_budget(report, tighter)
    assert line.text.startswith("training_memory (sgd, batch 32) ")
    assert line.limit == 2**30


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ({"paramz": "5M"}, "unknown quantity 'paramz' (did you mean 'params'?)"),
        ({"latency_ms": 20}, "unknown quantity 'latency_ms'"),
        ({"params": "-5M"}, "must be positive"),
        ({"params": 0}, "must be positive"),
        ({"params": "lots"}, "'lots' does not parse"),
        ({"params": True}, "must be a number"),
        ({"activation_memory": "3GB/s"}, "unknown unit 'GB/s'"),
        ({"latency": {"max": "20ms"}}, "device"),
        ({"latency": {"device": "t4", "max": "20 minutes"}}, "unknown unit 'minutes'"),
        ([1, 2], "a budget is a mapping"),
    ],
)
def test_bad_budgets_are_refused(budget, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        Budget.model_validate(budget)


def test_command_line_budgets():
    budget = budget_from_options(["params=5M", "latency=20ms@t4", "training_memory=8GiB@sgd"])
    assert budget is not None
    assert budget.params == 5_000_000
    assert budget.latency is not None and budget.latency.device == "t4"
    assert budget.training_memory is not None and budget.training_memory.optimizer == "sgd"
    assert budget_from_options([]) is None
    for bad in ("params", "params=", "latency=20ms"):
        with pytest.raises(ValueError, match="--budget"):
            budget_from_options([bad])


def test_check_gates_on_a_spec_budget(write_spec):
    path = write_spec(
        EFFICIENTNET.read_text() + "\nbudget: {params: 5M, macs: 600M, activation_memory: 1MiB}\n",
        name="efficient.yaml",
    )
    result = CliRunner().invoke(cli, ["check", str(path)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"error: {path}: budget: params 5,288,548 exceeds the budget of 5,000,000 "
        "by 288,548 (5.8%)",
        f"error: {path}: budget: activation_memory " + lines[1].split("activation_memory ", 1)[1],
    ]
    assert "Traceback" not in result.output
    ok = CliRunner().invoke(cli, ["check", str(path), "--budget", "params=6M"])
    assert ok.exit_code == 1 and "params" not in ok.stderr  # the command line wins


def test_shape_prints_the_table_then_fails_the_budget():
    result = CliRunner().invoke(cli, ["shape", str(EFFICIENTNET), "--budget", "macs=300M"])
    assert result.exit_code == 1
    assert "Total params:" in result.stdout
    assert result.stderr.strip() == (
        f"error: {EFFICIENTNET}: budget: macs 385,814,752 exceeds the budget of 300,000,000 "
        "by 85,814,752 (28.6%)"
    )
    passed = CliRunner().invoke(cli, ["check", str(EFFICIENTNET), "--budget", "macs=400M"])
    assert passed.exit_code == 0


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("paramz=5M", "unknown quantity 'paramz' (did you mean 'params'?)"),
        ("params=five", "'five' does not parse"),
        ("latency=20ms@h100", "unknown device profile 'h100' (did you mean 'h100-sxm'?)"),
        ("latency=20ms", "write latency=20ms@DEVICE"),
    ],
)
def test_bad_command_line_budgets_are_one_line(option, message):
    result = CliRunner().invoke(cli, ["check", str(EFFICIENTNET), "--budget", option])
    assert result.exit_code == 1
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_bad_budget_in_a_spec_names_the_file_and_line(write_spec):
    path = write_spec(
        "input: [1, 8, 8]\nlayers: [flatten]\nbudget:\n  params: 5M\n  paramz: 3\n",
        name="bad_budget.yaml",
    )
    with pytest.raises(convcalc.SpecValidationError) as caught:
        convcalc.analyze(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:") and "unknown quantity 'paramz'" in message
