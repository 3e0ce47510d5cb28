"""The spec format: bare names, case, anchors and merge keys, paths, inference, blocks."""

from __future__ import annotations

import subprocess
import sys

import pytest

import convcalc

from .conftest import SPECS_DIR


def test_bare_names_and_case_insensitive_types():
    net = convcalc.load_spec(
        "input: [3, 8, 8]\nlayers:\n  - ReLU\n"
        "  - {type: Conv2d, out_channels: 2, kernel_size: 1}\n  - FLATTEN\n"
    )
    assert [layer.type for layer in net.layers] == ["relu", "conv2d", "flatten"]
    assert net.layers[1].line == 4


def test_anchors_aliases_and_merge_keys():
    text = """
name: reuse
input: [3, 16, 16]
x-conv: &conv {type: conv2d, kernel_size: 3, padding: 1, bias: false}
x-block: &block
  type: residual
  layers: [{<<: *conv, out_channels: 3}, batchnorm2d, relu]
layers:
  - {<<: *conv, out_channels: 3, name: stem}
  - *block
  - *block
"""
    report = convcalc.analyze(text)
    assert report.row("stem").params == 3 * 3 * 3 * 3
    assert [row.path for row in report.rows if row.depth == 1] == [
        "layers.0",
        "layers.1",
        "layers.2",
    ]
    assert report.row("layers.2.body.0").params == 81


def test_paths_follow_the_torch_module_names():
    report = convcalc.analyze(
        {
            "input": [4, 8, 8],
            "layers": [
                {"type": "sequential", "name": "stage", "layers": ["relu", "relu"]},
                {"type": "residual", "layers": ["relu"], "shortcut": ["identity"]},
                {"type": "concat", "branches": [["relu"], []]},
                {"type": "repeat", "times": 2, "layers": ["relu"]},
                {"type": "repeat", "times": 2, "layers": ["relu", "tanh"]},
            ],
        }
    )
    assert [(row.path, row.type, row.depth) for row in report.rows] == [
        ("layers.0", "sequential", 1),
        ("layers.0.0", "relu", 2),
        ("layers.0.1", "relu", 2),
        ("layers.1", "residual", 1),
        ("layers.1.body.0", "relu", 2),
        ("layers.1.shortcut.0", "identity", 2),
        ("layers.2", "concat", 1),
        ("layers.2.branches.0.0", "relu", 2),
        ("layers.3", "repeat", 1),
        ("layers.3.0", "relu", 2),
        ("layers.3.1", "relu", 2),
        ("layers.4", "repeat", 1),
        ("layers.4.0", "sequential", 2),
        ("layers.4.0.0", "relu", 3),
        ("layers.4.0.1", "tanh", 3),
        ("layers.4.1", "sequential", 2),
        ("layers.4.1.0", "relu", 3),
        ("layers.4.1.1", "tanh", 3),
    ]
    assert report.row("layers.2").output_shape == (1, 8, 8, 8)


def test_repeat_reinfers_channels_per_copy():
    report = convcalc.analyze(
        {
            "input": [3, 8, 8],
            "layers": [
                {
                    "type": "repeat",
                    "times": 3,
                    "layers": [{"type": "conv2d", "out_channels": 16, "kernel_size": 1}],
                }
            ],
        }
    )
    assert [row.params for row in report.rows[1:]] == [3 * 16 + 16, 16 * 16 + 16, 16 * 16 + 16]


def test_densenet_concat_grows_channels():
    layer = {
        "type": "concat",
        "branches": [[], [{"type": "conv2d", "out_channels": 32, "kernel_size": 3, "padding": 1}]],
    }
    report = convcalc.analyze({"input": [64, 8, 8], "layers": [layer, layer, layer]})
    assert report.output_shape == (1, 64 + 3 * 32, 8, 8)


def test_trainable_false_freezes_parameters():
    report = convcalc.analyze(
        {
            "input": [3, 8, 8],
            "layers": [
                {
                    "type": "sequential",
                    "trainable": False,
                    "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 3}],
                },
                "flatten",
                {"type": "linear", "out_features": 2},
            ],
        }
    )
    assert report.totals.params == 112 + 290
    assert report.totals.trainable_params == 290
    assert report.totals.non_trainable_params == 112


def test_declared_channels_are_checked_and_accepted():
    report = convcalc.analyze(
        {
            "input": [3, 8, 8],
            "layers": [
                {"type": "conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 3},
                {"type": "batchnorm2d", "num_features": 4},
            ],
        }
    )
    assert report.totals.params == 3 * 3 * 3 * 4 + 4 + 8


def test_dtype_and_batch_size():
    report = convcalc.analyze(
        {
            "input": [3, 8, 8],
            "batch_size": 4,
            "dtype": "float64",
            "layers": [{"type": "conv2d", "out_channels": 2, "kernel_size": 1}],
        }
    )
    assert report.input_shape == (4, 3, 8, 8)
    assert report.rows[0].output_bytes == 4 * 2 * 8 * 8 * 8
    assert report.rows[0].macs == 4 * 2 * 8 * 8 * 3


def test_warnings_for_dropped_and_skipped_pixels():
    report = convcalc.analyze(
        {"input": [1, 10, 10], "layers": [{"type": "maxpool2d", "kernel_size": 2, "stride": 3}]}
    )
    messages = [w.message for w in report.warnings]
    assert any("the last 2 rows (H) and 2 columns (W)" in m for m in messages)
    assert any("skips input pixels" in m and "1 of every 3 in H" in m for m in messages)


def test_softmax_without_dim_warns():
    report = convcalc.analyze({"input": [10], "layers": ["softmax"]})
    assert "no dim given" in report.warnings[0].message


def test_loading_the_spec_never_imports_torch():
    code = (
        "import sys, convcalc\n"
        f"convcalc.analyze({str(SPECS_DIR / 'resnet50.yaml')!r}).render('table')\n"
        "from convcalc.cli import cli\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'onnx' not in sys.modules, 'onnx was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("path", sorted(SPECS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_spec_is_valid(path):
    assert convcalc.analyze(path).rows


def test_public_api():
    assert sorted(convcalc.__all__) == sorted(
        [
            "DEVICES",
            "Comparison",
            "ConvCalcError",
            "DataError",
            "DeviceProfile",
            "DeviceProfileError",
            "Estimate",
            "FitReport",
            "LayerEstimate",
            "LayerRow",
            "ModelImportError",
            "Network",
            "Problem",
            "Report",
            "ShapeError",
            "SpecError",
            "SpecSyntaxError",
            "SpecValidationError",
            "SpecWarning",
            "Totals",
            "TorchNotInstalledError",
            "TrainingError",
            "__version__",
            "analyze",
            "build_module",
            "compare",
            "from_onnx",
            "from_torch",
            "load_spec",
            "calibrate",
            "device_profile",
            "estimate",
            "fit",
            "profile",
        ]
    )
    for name in convcalc.__all__:
        assert hasattr(convcalc, name)


def test_a_scalar_output_analyses():
    """A mean over every dimension gives a 0-d tensor, as torch does (found by hypothesis)."""
    import torch

    report = convcalc.analyze({"input": [1], "layers": [{"type": "mean", "dim": [0, 1]}]})
    assert report.output_shape == tuple(torch.zeros(1, 1).mean(dim=[0, 1]).shape) == ()
