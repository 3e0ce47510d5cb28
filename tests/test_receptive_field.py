"""Receptive fields: known values from Araujo et al. and by hand."""

from __future__ import annotations

import pytest

import convcalc

from .conftest import SPECS_DIR


def _field(spec_name: str, path: str) -> dict:
    report = convcalc.analyze(SPECS_DIR / f"{spec_name}.yaml")
    field = report.row(path).receptive_field
    assert field is not None
    return field.to_dict()


@pytest.mark.parametrize(
    ("spec_name", "path", "size", "stride"),
    [
        ("alexnet", "conv1", 11, 4),
        ("alexnet", "conv2", 51, 8),
        ("alexnet", "conv5", 163, 16),
        ("alexnet", "layers.0.12", 195, 32),  # pool5: Araujo et al. give 195
        ("vgg16", "conv5_3", 196, 16),
        ("vgg16", "layers.0.30", 212, 32),  # pool5: 212
        ("resnet18", "layers.7", 435, 32),  # end of layer4: 435
        ("resnet50", "layers.7", 427, 32),  # end of layer4 (v1.5): 427
        ("mnist_cnn", "conv2", 8, 2),
    ],
)
def test_known_receptive_fields(spec_name, path, size, stride):
    field = _field(spec_name, path)
    assert field["size"] == [size, size]
    assert field["stride"] == [stride, stride]


def test_padding_accumulates():
    report = convcalc.analyze(
        {
            "input": [1, 32, 32],
            "layers": [
                {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
                {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1},
                {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
            ],
        }
    )
    # r: 3, 5, 9; S: 1, 2, 2; P: 1, 2, 4
    assert [r.receptive_field.to_dict() for r in report.rows] == [
        {"size": [3, 3], "stride": [1, 1], "padding": [1, 1]},
        {"size": [5, 5], "stride": [2, 2], "padding": [2, 2]},
        {"size": [9, 9], "stride": [2, 2], "padding": [4, 4]},
    ]


@pytest.mark.parametrize(
    ("side", "first"), [(8, "layers.3"), (9, "layers.4"), (12, "layers.5"), (99, None)]
)
def test_a_field_larger_than_the_input_is_information_in_the_totals(side, first):
    """3×3 convs give fields 3, 5, 7, 9, 11, 13: the first larger than the input is named
    in the totals (and printed there), never a warning: every ImageNet network gets there."""
    conv = {"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1}
    report = convcalc.analyze({"input": [1, side, side], "layers": [conv] * 6})
    assert report.totals.field_covers_input_path == first
    assert report.warnings == ()
    assert report.totals.to_dict()["field_covers_input_path"] == first
    text = report.render()
    if first is None:
        assert "Whole-input field" not in text
    else:
        size = 3 + 2 * int(first.split(".")[1])
        assert (
            f"Whole-input field:    from {first} (field {size}×{size} > input {side}×{side})"
            in text
        )


@pytest.mark.parametrize("spec_name", ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0"])
def test_stock_imagenet_networks_have_no_warnings(spec_name):
    report = convcalc.analyze(SPECS_DIR / f"{spec_name}.yaml")
    assert report.warnings == ()
    assert report.totals.field_covers_input_path is not None


def test_residual_takes_the_union_and_warns_when_misaligned():
    spec = {
        "input": [1, 16],
        "layers": [
            {
                "type": "residual",
                "layers": [
                    {"type": "conv1d", "out_channels": 1, "kernel_size": 3, "padding": "same"}
                ],
            },
            {
                "type": "residual",
                "layers": [
                    {"type": "conv1d", "out_channels": 1, "kernel_size": 2, "padding": "same"}
                ],
            },
        ],
    }
    report = convcalc.analyze(spec)
    assert report.row("layers.0").receptive_field.to_dict() == {
        "size": [3],
        "stride": [1],
        "padding": [1],
    }
    # kernel 2 'same' pads 0 left, 1 right: centre shifted by half a pixel
    assert report.row("layers.1").receptive_field.to_dict()["size"] == [4]
    (warning,) = [w for w in report.warnings if w.path == "layers.1"]
    assert "not aligned" in warning.message and "0.5 px" in warning.message


def test_transposed_conv_and_upsample_give_fractional_strides():
    report = convcalc.analyze(
        {
            "input": [1, 8, 8],
            "layers": [
                {"type": "conv2d", "out_channels": 2, "kernel_size": 2, "stride": 2},
                {"type": "convtranspose2d", "out_channels": 1, "kernel_size": 2, "stride": 2},
                {"type": "upsample", "scale_factor": 2},
            ],
        }
    )
    assert report.row("layers.1").receptive_field.to_dict()["stride"] == [1, 1]
    assert report.row("layers.2").receptive_field.to_dict()["stride"] == [0.5, 0.5]


def test_no_field_without_spatial_dimensions():
    report = convcalc.analyze({"input": [784], "layers": [{"type": "linear", "out_features": 10}]})
    assert report.rows[0].receptive_field is None
