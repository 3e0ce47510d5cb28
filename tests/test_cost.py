"""Memory traffic per layer and the roofline estimate (convcalc.cost).

torch referees what the traffic counts assume: a layer whose output shares its input's
storage moves nothing (a view) or writes over its input (in place); any other layer reads
its input, parameters and buffers and writes a new output.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

import convcalc
from convcalc.cli import cli
from convcalc.cost import estimate
from convcalc.devices import DeviceProfile
from convcalc.torch_bridge import torch_layer

from .conftest import GOLDEN_DIR, SPECS_DIR
from .test_layers_vs_torch import CASES, _layer


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize(
    ("spec", "shape"),
    CASES,
    ids=lambda v: v["type"] if isinstance(v, dict) else "x".join(map(str, v)),
)
def test_traffic_follows_what_torch_allocates(spec, shape):
    layer = _layer(spec)
    result = layer.infer(shape)
    module = torch_layer(layer, shape).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        y = module(x)
    shares = y.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    in_place = getattr(module, "inplace", False) and y is x
    read = x.numel() + sum(p.numel() for p in module.parameters())
    read += sum(b.numel() for b in module.buffers())
    # a view reads and writes nothing; an in-place layer writes nothing new
    expected = (0, 0) if shares and not in_place else (read, 0 if in_place else y.numel())
    assert layer.traffic([shape], result) == expected
    assert (layer.family(shape) == "view") == (expected == (0, 0))


@pytest.mark.parametrize(
    ("conv", "family"),
    [
        ({"kernel_size": 3}, "conv"),
        ({"kernel_size": 1}, "pointwise"),
        ({"kernel_size": [1, 1], "stride": 2}, "pointwise"),
        ({"kernel_size": 3, "groups": 8}, "depthwise"),
        ({"kernel_size": 1, "groups": 8}, "depthwise"),
        ({"kernel_size": 3, "groups": 2}, "conv"),
        ({"kernel_size": 1, "groups": 2}, "conv"),
    ],
)
def test_conv_families(conv, family):
    spec = {"input": [8, 16, 16], "layers": [{"type": "conv2d", "out_channels": 8, **conv}]}
    assert convcalc.analyze(spec).rows[0].family == family


def test_traffic_by_hand():
    report = convcalc.analyze(
        {
            "input": [3, 10, 10],
            "batch_size": 2,
            "layers": [
                {"type": "conv2d", "out_channels": 8, "kernel_size": 3},  # -> 2·8·8·8
                {"type": "batchnorm2d"},
                {"type": "relu", "inplace": True},
                "flatten",
                {"type": "linear", "out_features": 5},
            ],
        }
    )
    conv, norm, relu, flatten, linear = report.rows
    assert (conv.bytes_read, conv.bytes_written) == ((2 * 3 * 10 * 10 + 8 * 27 + 8) * 4, 4096)
    assert conv.arithmetic_intensity == 2 * conv.macs / (conv.bytes_read + 4096)
    # the input, weight and bias, and the buffers: running mean, var and the step count
    assert norm.bytes_read == (1024 + 16 + 17) * 4 and norm.bytes_written == 4096
    assert (relu.bytes_read, relu.bytes_written) == (4096, 0)
    assert (flatten.bytes_read, flatten.bytes_written, flatten.family) == (0, 0, "view")
    assert linear.bytes_read == (1024 + 512 * 5 + 5) * 4 and linear.bytes_written == 40
    totals = report.totals
    assert totals.bytes_read == sum(row.bytes_read for row in report.rows)
    assert totals.bytes_written == sum(row.bytes_written for row in report.rows)


def test_a_residual_block_counts_its_add():
    report = convcalc.analyze(
        {
            "input": [4, 6, 6],
            "layers": [
                {
                    "type": "residual",
                    "layers": [
                        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}
                    ],
                }
            ],
        }
    )
    block, conv = report.rows
    add = 2 * 144 * 4, 144 * 4  # reads both operands, writes the sum
    assert block.bytes_read == conv.bytes_read + add[0]
    assert block.bytes_written == conv.bytes_written + add[1]
    cost = estimate(report, "t4")
    assert [(layer.path, layer.type, layer.bytes) for layer in cost] == [
        ("layers.0.body.0", "conv2d", conv.bytes_read + conv.bytes_written),
        ("layers.0", "add", sum(add)),
    ]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "unet_small", "yolo_neck"])
def test_the_estimate_moves_every_byte_the_totals_count(name):
    report = convcalc.analyze(SPECS_DIR / f"{name}.yaml")
    cost = estimate(report, "a100-sxm")
    assert sum(layer.bytes for layer in cost) == report.totals.bytes_read + (
        report.totals.bytes_written
    )
    assert sum(layer.flops for layer in cost) == report.totals.flops
    top = [row for row in report.rows if row.depth == 1]
    assert math.isclose(
        sum(cost.block_seconds(r) if r.is_block else cost.layer(r.path).seconds for r in top),
        cost.seconds,
    )


def test_the_roofline_by_hand():
    # 1 GFLOP/s and 1 GB/s: a layer takes max(FLOPs, bytes) nanoseconds
    device = DeviceProfile(
        name="unit",
        source="test",
        bandwidth="1GB/s",
        peak={"float32": "1GFLOP/s"},
        efficiency={"conv": 0.5},
        overhead="1us",
    )
    report = convcalc.analyze(
        {
            "input": [16, 32, 32],
            "layers": [
                {"type": "conv2d", "out_channels": 16, "kernel_size": 3, "padding": 1},
                "relu",
                "flatten",
            ],
        }
    )
    conv, relu, flatten = estimate(report, device)
    _, relu_row, _ = report.rows
    assert conv.flops == 2 * 16 * 32 * 32 * 9 * 16 and conv.bound == "compute"
    assert conv.seconds == pytest.approx(conv.flops / 1e9 / 0.5 + 1e-6)
    assert relu.bound == "memory" and relu.flops == 0
    assert relu.seconds == pytest.approx(
        (relu_row.bytes_read + relu_row.bytes_written) / 1e9 + 1e-6
    )
    assert flatten.bound == "overhead" and flatten.seconds == pytest.approx(1e-6)
    cost = estimate(report, device)
    assert cost.dominant(1) == [conv]
    assert cost.throughput == pytest.approx(1 / cost.seconds)


def test_a_dtype_the_device_lacks_is_one_sentence():
    with pytest.raises(convcalc.ConvCalcError, match="gives no peak rate for float64"):
        convcalc.analyze(SPECS_DIR / "lenet5.yaml", dtype="float64").estimate("t4")


def test_shape_with_traffic_and_a_device_profile(regen_golden):
    runner = CliRunner()
    spec = str(SPECS_DIR / "resnet18.yaml")
    args = ["shape", spec, "--depth", "2", "--traffic", "--device-profile", "t4"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    golden = GOLDEN_DIR / "resnet18_traffic_t4.txt"
    if regen_golden:
        golden.write_text(result.stdout)
    assert result.stdout == golden.read_text()
    data = json.loads(runner.invoke(cli, [*args, "-f", "json"]).stdout)
    assert data["estimate"]["device_profile"] == "t4"
    assert data["estimate"]["total"]["estimated_ms"] == pytest.approx(
        sum(layer["estimated_ms"] for layer in data["estimate"]["layers"])
    )
    assert all("bytes_read" in row for row in data["layers"])
    csv = runner.invoke(cli, [*args, "-f", "csv"]).stdout.splitlines()
    assert csv[0].endswith("bytes_read,bytes_written,arithmetic_intensity,estimated_ms,bound")


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ("h100", "unknown device profile 'h100' (did you mean 'h100-sxm'?)"),
        ("nothing.yaml", "nothing.yaml: cannot read the device profile"),
    ],
)
def test_a_bad_device_profile_is_one_line(profile, message):
    result = CliRunner().invoke(
        cli, ["shape", str(SPECS_DIR / "lenet5.yaml"), "--device-profile", profile]
    )
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_devices_lists_the_shipped_profiles():
    result = CliRunner().invoke(cli, ["devices"])
    assert result.exit_code == 0
    for name in ("h100-sxm", "a100-sxm", "l4", "t4", "rtx-4090", "jetson-orin", "raspberry-pi-5"):
        assert name in result.stdout
    data = json.loads(CliRunner().invoke(cli, ["devices", "-f", "json"]).stdout)
    assert {profile["name"] for profile in data} >= {"t4", "raspberry-pi-5"}
