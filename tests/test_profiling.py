"""``convcalc profile`` and ``convcalc calibrate``: what they measure and how they say it.
(How close the estimate comes to the measurement is benchmarks/bench_cost.py's, never a
timed test.)"""

from __future__ import annotations

import json

import pytest
import scipy.stats
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

import convcalc
from convcalc.cli import cli
from convcalc.devices import FAMILIES, device_profile
from convcalc.profiling import calibrate, profile, rank_correlation

from .conftest import SPECS_DIR

RESIDUAL = {
    "name": "tiny_residual",
    "input": [4, 8, 8],
    "layers": [
        {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
        {
            "type": "residual",
            "layers": [{"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1}],
        },
        "relu",
        "flatten",
        {"type": "linear", "out_features": 3},
    ],
}


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(-3, 3)), min_size=3, max_size=30))
def test_rank_correlation_is_spearmans(pairs):
    xs, ys = [float(x) for x, _ in pairs], [float(y) for _, y in pairs]
    if len(set(xs)) == 1 or len(set(ys)) == 1:  # scipy: undefined (nan, with a warning)
        assert rank_correlation(xs, ys) == 0.0
    else:
        assert rank_correlation(xs, ys) == pytest.approx(scipy.stats.spearmanr(xs, ys).statistic)


def test_profile_times_every_layer_and_the_whole():
    result = profile(RESIDUAL, device_profile="t4", runs=2, warmup=1, batch_size=2)
    report = convcalc.analyze(RESIDUAL, batch_size=2)
    leaves = [row.path for row in report.rows if not row.is_block]
    assert [layer.path for layer in result.layers] == [
        "layers.0",
        "layers.1.body.0",
        "layers.1",  # the residual's add, after its body
        "layers.2",
        "layers.3",
        "layers.4",
    ]
    for layer in result.layers:
        # a data-sheet profile has no per-layer overhead: a view (flatten) costs nothing
        assert layer.estimated is not None and (layer.estimated > 0) == (layer.type != "flatten")
        if layer.path in leaves:
            assert layer.measured is not None and layer.measured > 0
            if layer.estimated:
                assert layer.ratio == pytest.approx(layer.measured / layer.estimated)
        else:
            assert layer.type == "add" and layer.measured is None and layer.ratio is None
    assert result.measured > 0 and result.batch_size == 2
    assert result.estimated == pytest.approx(report.estimate("t4").seconds)


def test_profile_json_has_the_issue_s_keys():
    runner = CliRunner()
    spec = str(SPECS_DIR / "mnist_cnn.yaml")
    args = ["profile", spec, "--runs", "2", "--warmup", "0", "--device-profile", "l4", "-f", "json"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"path", "estimated_ms", "measured_ms", "ratio"} <= set(data["layers"][0])
    assert {"estimated_ms", "measured_ms", "ratio", "throughput_per_s"} <= set(data["total"])
    assert len(data["layers"]) == 8 and data["device_profile"] == "l4"
    table = runner.invoke(cli, args[:-2]).stdout
    assert "Measured:" in table and "Estimated:" in table and "Rank correlation:" in table


def test_profile_without_a_profile_measures_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    spec = str(SPECS_DIR / "lenet5.yaml")
    result = CliRunner().invoke(cli, ["profile", spec, "--runs", "1", "--warmup", "0"])
    assert result.exit_code == 0, result.output
    assert "give --device-profile, or run `convcalc calibrate`" in result.stdout


def test_calibrate_writes_a_profile_that_estimates(tmp_path):
    path = tmp_path / "here.yaml"
    result = CliRunner().invoke(cli, ["calibrate", "--quick", "-o", str(path)])
    assert result.exit_code == 0, result.output
    assert f"wrote {path}" in result.stdout
    measured = device_profile(path)
    assert measured.peak["float32"] > 1e8 and measured.bandwidth > 1e8
    assert set(measured.efficiency) == set(FAMILIES)
    assert all(0 < factor <= 1 for factor in measured.efficiency.values())
    assert 0 < measured.overhead < 1e-2
    assert measured.source.startswith("measured by convcalc calibrate")
    cost = convcalc.analyze(SPECS_DIR / "lenet5.yaml").estimate(path)
    assert cost.seconds > len(cost.layers) * measured.overhead


def test_calibrate_default_path_is_what_profile_reads(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    profile_path = tmp_path / "convcalc" / "cpu.yaml"
    runner = CliRunner()
    assert runner.invoke(cli, ["calibrate", "--quick"]).exit_code == 0
    assert profile_path.exists()
    spec = str(SPECS_DIR / "lenet5.yaml")
    data = json.loads(
        runner.invoke(cli, ["profile", spec, "--runs", "1", "--warmup", "0", "-f", "json"]).stdout
    )
    assert data["device_profile"] == device_profile(profile_path).name


@pytest.mark.parametrize("command", [["calibrate"], ["profile", str(SPECS_DIR / "lenet5.yaml")]])
def test_cuda_without_cuda_is_one_sentence(command):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = CliRunner().invoke(cli, [*command, "--device", "cuda"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: --device cuda: CUDA is not available on this machine"


def test_calibrate_in_the_library_is_quick_and_complete():
    measured = calibrate(quick=True, repeats=3)
    assert set(measured.efficiency) == set(FAMILIES)
