"""The example specs: published totals, rows that add up, and golden tables."""

from __future__ import annotations

import json

import pytest

import convcalc
from convcalc.formatting import FORMATS

from .conftest import GOLDEN_DIR, SPEC_FILES, SPECS_DIR

# Published totals at 224×224, batch 1 (torchvision's model docs and its
# "GFLOPS" column, which counts multiply-accumulates).
PUBLISHED = {
    "alexnet": (61_100_840, 714_188_480),
    "vgg16": (138_357_544, 15_470_264_320),
    "resnet18": (11_689_512, 1_814_073_344),
    "resnet50": (25_557_032, 4_089_184_256),
    "mobilenet_v2": (3_504_872, 300_774_272),
    # spec v2 (tests/test_v2_specs.py holds them to torchvision's models and FlopCounterMode)
    "efficientnet_b0": (5_288_548, 385_814_752),
    "mobilenet_v3_large": (5_483_032, 216_589_760),
    "convnext_tiny": (28_589_128, 4_455_531_264),
    "shufflenet_v2": (2_278_604, 144_907_992),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_totals(name):
    report = convcalc.analyze(SPECS_DIR / f"{name}.yaml")
    assert (report.totals.params, report.totals.macs) == PUBLISHED[name]
    assert report.output_shape == (1, 1000)


def test_mnist_cnn():
    report = convcalc.analyze(SPECS_DIR / "mnist_cnn.yaml")
    assert report.totals.params == 50_186
    assert report.row("layers.6").output_shape == (1, 7 * 7 * 64)
    assert report.output_shape == (1, 10)


def test_original_alexnet_needs_227():
    report = convcalc.analyze(SPECS_DIR / "alexnet_original.yaml")
    assert report.row("conv1").output_shape == (1, 96, 55, 55)
    # grouped conv2: (5·5·96/2)·256 + 256
    assert report.row("conv2").params == 5 * 5 * 48 * 256 + 256
    assert not [w for w in report.warnings if "never covered" in w.message]
    at_224 = convcalc.analyze(SPECS_DIR / "alexnet_original.yaml", input=[3, 224, 224])
    assert at_224.row("conv1").output_shape == (1, 96, 54, 54)
    (warning,) = [w for w in at_224.warnings if w.path == "layers.0"]
    assert "the last 1 row (H) and 1 column (W) of its 224×224 input" in warning.message


def test_lenet5():
    report = convcalc.analyze(SPECS_DIR / "lenet5.yaml")
    assert report.totals.params == 61_706
    assert [r.output_shape for r in report.rows[:6]] == [
        (1, 6, 28, 28),
        (1, 6, 28, 28),
        (1, 6, 14, 14),
        (1, 16, 10, 10),
        (1, 16, 10, 10),
        (1, 16, 5, 5),
    ]


def _children(report, row):
    """Rows one level below ``row`` inside it."""
    index = report.rows.index(row)
    children = []
    for other in report.rows[index + 1 :]:
        if other.depth <= row.depth:
            break
        if other.depth == row.depth + 1:
            children.append(other)
    return children


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.stem)
def test_rows_sum_to_totals(path):
    report = convcalc.analyze(path)
    top = [row for row in report.rows if row.depth == 1]
    leaves = [row for row in report.rows if not row.is_block]
    for rows in (top, leaves):
        assert sum(r.params for r in rows) == report.totals.params
        assert sum(r.trainable_params for r in rows) == report.totals.trainable_params
        assert sum(r.macs for r in rows) == report.totals.macs
        assert sum(r.buffers for r in rows) == report.totals.buffers
    for block in (row for row in report.rows if row.is_block):
        children = _children(report, block)
        assert sum(c.params for c in children) == block.params
        assert sum(c.macs for c in children) == block.macs
    assert report.totals.param_bytes == 4 * report.totals.params


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.stem)
def test_golden_table(path, regen_golden):
    text = convcalc.analyze(path).render("table")
    golden = GOLDEN_DIR / f"{path.stem}.txt"
    if regen_golden:
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


@pytest.mark.parametrize("output_format", FORMATS)
def test_every_format_renders(output_format):
    text = convcalc.analyze(SPECS_DIR / "resnet18.yaml").render(output_format, depth=2)
    assert "layers.4" in text


def test_json_is_report_to_dict():
    report = convcalc.analyze(SPECS_DIR / "alexnet.yaml")
    data = json.loads(report.render("json"))
    assert data == json.loads(json.dumps(report.to_dict()))
    assert set(data) >= {"name", "input_shape", "layers", "totals", "warnings"}
    assert set(data["totals"]) >= {
        "params",
        "trainable_params",
        "non_trainable_params",
        "buffers",
        "macs",
        "flops",
        "param_bytes",
        "activation_bytes",
    }
    first = data["layers"][0]
    assert set(first) >= {
        "path",
        "name",
        "type",
        "depth",
        "input_shape",
        "output_shape",
        "params",
        "trainable_params",
        "macs",
        "output_bytes",
        "receptive_field",
    }
    assert data["totals"]["flops"] == 2 * data["totals"]["macs"]
    conv1 = next(layer for layer in data["layers"] if layer["name"] == "conv1")
    assert conv1["receptive_field"] == {"size": [11, 11], "stride": [4, 4], "padding": [2, 2]}
    assert data["layers"][-1]["receptive_field"] is None


def test_depth_folds_blocks():
    report = convcalc.analyze(SPECS_DIR / "resnet50.yaml")
    folded = json.loads(report.render("json", depth=1))
    assert [layer["depth"] for layer in folded["layers"]] == [1] * len(folded["layers"])
    assert folded["totals"] == report.totals.to_dict()
    assert sum(layer["params"] for layer in folded["layers"]) == report.totals.params
