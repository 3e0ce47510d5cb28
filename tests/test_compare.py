"""``convcalc compare``: totals and per-block deltas equal the two analyses' differences."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import convcalc
from convcalc.cli import cli
from convcalc.compare import compare

from .conftest import SPECS_DIR

R18, R50 = str(SPECS_DIR / "resnet18.yaml"), str(SPECS_DIR / "resnet50.yaml")


def test_totals_are_the_analyses_differences():
    data = compare(R18, R50).to_dict()
    a, b = convcalc.analyze(R18).totals, convcalc.analyze(R50).totals
    for field in ("params", "trainable_params", "macs", "param_bytes", "activation_bytes"):
        entry = data["totals"][field]
        assert (entry["a"], entry["b"]) == (getattr(a, field), getattr(b, field))
        assert entry["delta"] == getattr(b, field) - getattr(a, field)
        assert entry["relative"] == pytest.approx(entry["delta"] / entry["a"])
    # the published receptive fields of the last feature maps
    assert data["receptive_field"]["a"]["size"] == [435, 435]
    assert data["receptive_field"]["b"]["size"] == [427, 427]


def test_blocks_pair_by_name_then_by_path_and_type():
    data = compare(R18, R50).to_dict()
    blocks = {entry["block"]: entry for entry in data["blocks"]}
    layer3 = blocks["layers.6 (layer3)"]
    assert layer3["a"]["params"] == convcalc.analyze(R18).row("layer3").params
    assert layer3["b"]["params"] == convcalc.analyze(R50).row("layer3").params
    assert blocks["layers.2"]["a"]["type"] == blocks["layers.2"]["b"]["type"] == "relu"
    before = {
        "input": [3, 32, 32],
        "layers": [{"type": "conv2d", "name": "stem", "out_channels": 8, "kernel_size": 3}, "relu"],
    }
    after = {
        "input": [3, 32, 32],
        "layers": [
            {"type": "conv2d", "name": "stem", "out_channels": 16, "kernel_size": 3},
            "batchnorm2d",
            "relu",
        ],
    }
    pairs = [
        (e["block"], e["a"] is not None, e["b"] is not None)
        for e in compare(before, after).to_dict()["blocks"]
    ]
    assert pairs == [
        ("layers.0 (stem)", True, True),
        ("layers.1", True, False),  # relu in A, batchnorm2d in B: not the same layer
        ("layers.1", False, True),
        ("layers.2", False, True),
    ]


def test_cli_table_and_markdown():
    result = CliRunner().invoke(cli, ["compare", R18, R50])
    assert result.exit_code == 0
    assert (
        "Params" in result.stdout and "+13,867,520" in result.stdout and "+118.6%" in result.stdout
    )
    assert "435×435 (stride 32)" in result.stdout
    markdown = CliRunner().invoke(cli, ["compare", R18, R50, "--format", "markdown"])
    assert markdown.exit_code == 0
    assert markdown.stdout.startswith(f"**A: {R18} (resnet18), B: {R50} (resnet50)**")
    assert "|:--" in markdown.stdout
    data = json.loads(CliRunner().invoke(cli, ["compare", R18, R50, "-f", "json"]).stdout)
    assert data["output_shape"] == {"a": [1, 1000], "b": [1, 1000]}


def test_overrides_apply_to_both():
    data = json.loads(
        CliRunner().invoke(cli, ["compare", R18, R50, "--input", "3,64,64", "-f", "json"]).stdout
    )
    assert data["totals"]["macs"]["a"] == convcalc.analyze(R18, input=[3, 64, 64]).totals.macs
    assert data["totals"]["macs"]["b"] == convcalc.analyze(R50, input=[3, 64, 64]).totals.macs
