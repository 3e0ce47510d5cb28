"""``convcalc sizes``: for every candidate size, the same answer ``analyze`` gives."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

import convcalc
from convcalc.cli import cli
from convcalc.sizes import check_sizes

from .conftest import SPECS_DIR

DROPPED = "never covered by a window"


def analyze_size(spec, size: int, shape=None):
    """(status, path, message) as the full calculator answers for this size (in every
    spatial dimension, or on this whole sample shape)."""
    network = convcalc.load_spec(spec)
    if shape is None:
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


# A small C3D: 16 frames of 112×112; the first pool keeps the frames, as C3D's does.
C3D = {
    "name": "c3d_small",
    "input": [3, 16, 112, 112],
    "layers": [
        {"type": "conv3d", "out_channels": 8, "kernel_size": 3, "padding": 1},
        "relu",
        {"type": "maxpool3d", "kernel_size": [1, 2, 2]},
        {"type": "conv3d", "out_channels": 16, "kernel_size": 3, "padding": 1},
        "relu",
        {"type": "maxpool3d", "kernel_size": 2},
        {"type": "conv3d", "out_channels": 32, "kernel_size": 3, "padding": 1},
        "relu",
        {"type": "maxpool3d", "kernel_size": 2},
        {"type": "adaptiveavgpool3d", "output_size": 1},
        "flatten",
        {"type": "linear", "out_features": 10},
    ],
}
ONE_D = {
    "input": [4, 100],
    "layers": [
        {"type": "conv1d", "out_channels": 8, "kernel_size": 5},
        {"type": "maxpool1d", "kernel_size": 2},
    ],
}


@pytest.mark.parametrize(
    ("vary", "template"),
    [
        ("H,W", (3, 16, None, None)),
        (["h", "w"], (3, 16, None, None)),
        ("D", (3, None, 112, 112)),
        ("W", (3, 16, 112, None)),
        ("D,H,W", (3, None, None, None)),
        (None, (3, None, None, None)),
    ],
)
def test_a_3d_sweep_keeps_the_dimensions_not_named(vary, template):
    report = check_sizes(C3D, range(1, 41), vary=vary)
    assert report.input == template
    for check in report.checks:
        shape = report.input_shape(check.size)
        assert [n for n, t in zip(shape, template) if t is not None] == [
            t for t in template if t is not None
        ]
        assert (check.status, check.path, check.message) == analyze_size(C3D, check.size, shape), (
            check.size
        )
        if check.status == "ok":
            assert check.output_shape == convcalc.analyze(C3D, input=shape).output_shape


def test_c3d_with_its_16_frames_needs_multiples_of_8():
    """Three 2× pools in H and W: any multiple of 8 passes, and nothing else."""
    report = check_sizes(C3D, range(1, 65), vary="H,W")
    assert report.valid == list(range(8, 65, 8))
    assert all(report.input_shape(size)[1] == 16 for size in report.valid)


def test_the_fixed_frames_are_the_ones_answered_for():
    """A kernel spanning all 16 frames: with the frames fixed, every S from 3 (the 3×3
    window) passes; sweeping the frames too, nothing below 16 does."""
    spec = {
        "input": [3, 16, 32, 32],
        "layers": [{"type": "conv3d", "out_channels": 4, "kernel_size": [16, 3, 3]}],
    }
    assert check_sizes(spec, range(1, 21), vary="H,W").valid == list(range(3, 21))
    assert check_sizes(spec, range(1, 21)).valid == list(range(16, 21))


def test_a_3d_sweep_in_the_cli(write_spec):
    path = write_spec(yaml.safe_dump(C3D))
    result = CliRunner().invoke(cli, ["sizes", str(path), "--range", "14:17", "--vary", "H,W"])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == "c3d_small: input [1, 3, 16, S, S]"
    data = json.loads(
        CliRunner()
        .invoke(cli, ["sizes", str(path), "--range", "16", "--vary", "H,W", "-f", "json"])
        .stdout
    )
    assert data["input"] == [3, 16, "S", "S"] and data["valid"] == [16]


@pytest.mark.parametrize("name", ["lenet5", "unet_small"])
def test_naming_every_dimension_is_the_default(name):
    spec = SPECS_DIR / f"{name}.yaml"
    assert check_sizes(spec, range(1, 70), vary="H,W") == check_sizes(spec, range(1, 70))


@pytest.mark.parametrize(
    ("spec", "vary", "message"),
    [
        (C3D, "T", "cannot vary T: choose D, H or W of the [C, D, H, W] input"),
        (C3D, "C", "cannot vary C, the channels: choose D, H or W of the [C, D, H, W] input"),
        (C3D, "H,X", "cannot vary X: choose D, H or W of the [C, D, H, W] input"),
        (C3D, "H,", "name the dimensions to vary among D, H, W, with commas"),
        (ONE_D, "H", "cannot vary H: choose L of the [C, L] input"),
        (ONE_D, "L,W", "cannot vary W: choose L of the [C, L] input"),
        (
            {"input": [1, 28, 28], "layers": ["relu"]},
            "D",
            "cannot vary D: choose H or W of the [C, H, W] input",
        ),
    ],
)
def test_a_bad_choice_of_dimensions_is_one_sentence(write_spec, spec, vary, message):
    path = write_spec(yaml.safe_dump(spec))
    result = CliRunner().invoke(cli, ["sizes", str(path), "--vary", vary])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"error: {message}\n"
