"""``convcalc sizes``: for every candidate size, the same answer ``analyze`` gives."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import convcalc
from convcalc.cli import cli
from convcalc.sizes import check_sizes

from .conftest import SPECS_DIR

DROPPED = "never covered by a window"


def analyze_size(spec, size: int):
    """(status, path, message) as the full calculator answers for this size."""
    network = convcalc.load_spec(spec)
    shape = [network.input[0]] + [size] * (len(network.input) - 1)
    try:
        report = convcalc.analyze(network, input=shape)
    except convcalc.ShapeError as error:
        return "error", error.first.path, error.first.message
    dropped = [w for w in report.warnings if DROPPED in w.message]
    if dropped:
        return "drops", dropped[0].path, dropped[0].message
    return "ok", None, ""


@pytest.mark.parametrize(
    ("name", "sizes"),
    [
        ("unet_small", range(1, 70)),
        ("alexnet", range(50, 260)),
        ("alexnet_original", range(60, 240)),
        ("mnist_cnn", range(1, 60)),
        ("lenet5", range(1, 60)),
        ("resnet18", range(1, 80)),
        ("mobilenet_v2", range(1, 40)),
        ("vgg16", range(1, 70)),
    ],
)
def test_every_size_answers_as_analyze_does(name, sizes):
    spec = SPECS_DIR / f"{name}.yaml"
    report = check_sizes(spec, sizes)
    assert [c.size for c in report.checks] == list(sizes)
    for check in report.checks:
        expected = analyze_size(spec, check.size)
        assert (check.status, check.path, check.message) == expected, check.size
        if check.status == "ok":
            assert (
                check.output_shape
                == convcalc.analyze(
                    spec, input=[report.channels] + [check.size] * report.dims
                ).output_shape
            )


def test_unet_needs_multiples_of_eight():
    report = check_sizes(SPECS_DIR / "unet_small.yaml", range(1, 129))
    assert report.valid == list(range(8, 129, 8))
    assert report.smallest == 8 and report.step == 8
    assert report.summary() == (
        "16 of the sizes from 1 to 128 pass without an error or dropped pixels: every "
        "multiple of 8 from 8 to 128; the smallest is 8"
    )


def test_a_shortcut_may_drop_pixels_but_a_body_may_not():
    strided = {"type": "conv2d", "out_channels": 4, "kernel_size": 1, "stride": 2}
    covering = {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1}

    def residual(body, shortcut):
        return {
            "input": [4, 8, 8],
            "layers": [{"type": "residual", "layers": [body], "shortcut": [shortcut]}],
        }

    # ResNet's downsampling: the 1×1 stride-2 shortcut misses pixels the body sees
    assert check_sizes(residual(covering, strided), range(2, 12)).valid == list(range(2, 12))
    swapped = check_sizes(residual(strided, covering), range(2, 12))
    assert swapped.valid == [3, 5, 7, 9, 11]  # (a stride that skips pixels is `shape`'s warning)
    assert {(c.status, c.path) for c in swapped.checks if c.size % 2 == 0} == {
        ("drops", "layers.0.body.0")
    }


def test_cli_and_json(tmp_path):
    unet = str(SPECS_DIR / "unet_small.yaml")
    result = CliRunner().invoke(cli, ["sizes", unet, "--range", "60:66"])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[1] == (
        "1 of the sizes from 60 to 66 passes without an error or dropped pixels: 64; "
        "the smallest is 64"
    )
    assert "60–63  error     layers.2.branches.1.3.branches.1.3 (skip3)" in result.stdout
    data = json.loads(
        CliRunner().invoke(cli, ["sizes", unet, "--range", "8:16", "-f", "json"]).stdout
    )
    assert data["valid"] == [8, 16] and data["input"] == [1, "S", "S"]
    assert data["sizes"][1]["status"] == "error" and data["sizes"][1]["name"] == "skip1"


def test_no_spatial_dimension_is_an_error(write_spec):
    path = write_spec("input: [10]\nlayers:\n  - {type: linear, out_features: 2}\n")
    result = CliRunner().invoke(cli, ["sizes", str(path)])
    assert result.exit_code == 1
    assert "has no spatial dimension to vary" in result.stderr
