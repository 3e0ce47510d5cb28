"""convcalc verify: torch as the referee for every spec, and the failure paths."""

from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
import sys
from fractions import Fraction

import pytest
from click.testing import CliRunner

import convcalc
from convcalc.cli import cli
from convcalc.layers import Conv
from convcalc.loader import load_spec, with_overrides
from convcalc.verify import _FieldMeter, measure_receptive_field, verify

from .conftest import SPEC_FILES, SPECS_DIR

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.stem)
def test_every_example_spec_verifies(path):
    report = verify(path)
    assert report.ok, report.first_difference()
    assert any(layer.check("receptive field") for layer in report.layers)


def test_verify_cli_table_and_json():
    result = CliRunner().invoke(cli, ["verify", str(SPECS_DIR / "mnist_cnn.yaml")])
    assert result.exit_code == 0, result.output
    assert "all 45 checks passed" in result.stdout
    result = CliRunner().invoke(cli, ["verify", str(SPECS_DIR / "mnist_cnn.yaml"), "-f", "json"])
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["first_difference"] is None
    assert data["totals"][0] == {"what": "params", "calculator": 50186, "torch": 50186, "ok": True}


def test_verify_on_cpu_with_frozen_layers_and_blocks():
    spec = {
        "input": [3, 16, 16],
        "batch_size": 2,
        "layers": [
            {
                "type": "conv2d",
                "out_channels": 8,
                "kernel_size": 3,
                "padding": 1,
                "trainable": False,
            },
            {
                "type": "concat",
                "branches": [[], [{"type": "conv2d", "out_channels": 4, "kernel_size": 1}]],
            },
            {
                "type": "residual",
                "layers": [
                    {
                        "type": "conv2d",
                        "out_channels": 12,
                        "kernel_size": 3,
                        "padding": "same",
                        "dilation": 2,
                    },
                    "batchnorm2d",
                ],
            },
            {
                "type": "repeat",
                "times": 2,
                "layers": [{"type": "maxpool2d", "kernel_size": 2, "ceil_mode": True}, "relu"],
            },
        ],
    }
    report = verify(spec, device="cpu", every_field=True)
    assert report.ok, report.first_difference()
    measured = [layer.path for layer in report.layers if layer.check("receptive field")]
    assert "layers.2" in measured and "layers.3.1.0" in measured


def test_a_wrong_calculator_is_caught(monkeypatch):
    real = Conv.infer

    def off_by_one(self, shape):
        result = real(self, shape)
        return type(result)(
            **{**{f: getattr(result, f) for f in result.__slots__}, "params": result.params + 1}
        )

    monkeypatch.setattr(Conv, "infer", off_by_one)
    report = verify(SPECS_DIR / "mnist_cnn.yaml")
    assert not report.ok
    assert report.first_difference() == (
        "layers.0 (conv1), conv2d: trainable params is 321 by the calculator but 320 in torch"
    )
    result = CliRunner().invoke(cli, ["verify", str(SPECS_DIR / "mnist_cnn.yaml")])
    assert result.exit_code == 1
    assert "mismatch: layers.0 (conv1), conv2d: trainable params is 321" in result.stderr


def test_measured_field_is_independent_of_the_formula():
    # kernel 4 'same' pads 1 left, 2 right; dilation 2 spans 7: by hand r = 4 + 6 = 10.
    network = convcalc.load_spec(
        {
            "input": [1, 40],
            "layers": [
                {"type": "conv1d", "out_channels": 1, "kernel_size": 4, "padding": "same"},
                {"type": "conv1d", "out_channels": 1, "kernel_size": 4, "dilation": 2, "stride": 3},
            ],
        }
    )
    measured = measure_receptive_field(network, "layers.1")
    assert measured.sizes == ((40,),)
    assert measured.field.to_dict() == {"size": [10], "stride": [3], "padding": [1]}
    assert measured.calculator == measured.field


def test_cuda_without_cuda_is_a_clear_error():
    result = CliRunner().invoke(
        cli, ["verify", str(SPECS_DIR / "mnist_cnn.yaml"), "--device", "cuda"]
    )
    assert result.exit_code == 1
    assert result.stderr == "error: --device cuda: CUDA is not available on this machine\n"


def test_without_torch_the_command_says_how_to_install_it():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from convcalc.cli import main\n"
        f"sys.argv = ['convcalc', 'verify', {str(SPECS_DIR / 'mnist_cnn.yaml')!r}]\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert done.stderr == (
        "error: this needs PyTorch, which is not installed: pip install 'convcalc[torch]'\n"
    )


def test_build_module_names_follow_the_report():
    report = convcalc.analyze(SPECS_DIR / "resnet18.yaml")
    module = convcalc.build_module(SPECS_DIR / "resnet18.yaml")
    names = {name for name, _ in module.named_modules()}
    assert {row.path for row in report.rows} <= names


def test_a_layer_torch_lacks_is_reported_by_layer(monkeypatch, write_spec):
    import torch

    monkeypatch.delattr(torch.nn, "ZeroPad1d")
    path = write_spec(
        "input: [2, 10]\nlayers:\n  - relu\n  - {type: zeropad1d, name: pad, padding: 1}\n"
    )
    result = CliRunner().invoke(cli, ["verify", str(path)])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {path}:4: layers.1 (pad): torch {torch.__version__} has no "
        "torch.nn.ZeroPad1d; upgrade torch\n"
    )


@pytest.mark.parametrize(
    "layers",
    [
        [
            {"type": "reflectionpad2d", "padding": [1, 2, 3, 0]},
            {"type": "conv2d", "out_channels": 4, "kernel_size": 3},
            {"type": "replicationpad2d", "padding": 2},
            {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "stride": 2},
            {"type": "circularpad2d", "padding": 1},
            {"type": "constantpad2d", "padding": [0, 1, 1, 0], "value": 0.5},
            {"type": "conv2d", "out_channels": 2, "kernel_size": 3},
        ],
        [
            # (after a pixelshuffle, as after upsampling, strides are fractional and
            # verify measures no receptive field)
            {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
            {"type": "pixelunshuffle", "downscale_factor": 2},
            {"type": "channelshuffle", "groups": 4},
            {"type": "prelu", "num_parameters": 16},
            "mish",
            "layernorm2d",
            "layerscale",
            {"type": "stochasticdepth", "p": 0.5},
            {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "stride": 2},
        ],
    ],
    ids=["pads", "shuffles"],
)
def test_padding_and_shuffling_layers_verify_with_their_receptive_fields(layers):
    report = verify({"input": [2, 20, 20], "layers": layers})
    assert report.ok, report.first_difference()
    assert report.layers[-1].check("receptive field") is not None


# -- the receptive-field search: bounded, on a narrowed copy, and truthful when it fails ------

_APPROXIMATE = (
    "after a layer of fractional stride (upsampling, a transposed convolution, uneven "
    "adaptive pooling) the calculator's field is an approximation, not one unit's"
)


def _reasons(report):
    return dict(note.split(": receptive field not measured: ") for note in report.notes)


def _footprint(spec, unit):
    """First and last input pixel (along the last dimension) whose value changes the
    output unit ``unit`` (of the channel-summed last layer) of the real module, with
    random positive weights: torch's word, independent of the measurement's copy."""
    torch.manual_seed(0)
    module = convcalc.build_module(spec).double().eval()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.uniform_(0.5, 1.5)
    report = convcalc.analyze(spec)
    x = torch.ones(report.input_shape, dtype=torch.float64, requires_grad=True)
    out = module(x)
    out[(0, slice(None), *unit)].sum().backward()
    line = x.grad[0].abs().sum(dim=0)
    while line.dim() > 1:
        line = line.sum(dim=0)
    hit = torch.nonzero(line).flatten().tolist()
    return hit[0], hit[-1]


def test_unet_every_field_is_measured_or_truly_an_approximation():
    """The issue's case: 13 rows said 'larger than any input tried' because the enlarged
    input (64 -> 96) was not a multiple of 8. Every row with an exact field is measured and
    equals the calculator's; every other row comes after a transposed convolution."""
    report = verify(SPECS_DIR / "unet_small.yaml", every_field=True)
    assert report.ok, report.first_difference()
    analysis = convcalc.analyze(SPECS_DIR / "unet_small.yaml")
    reasons = _reasons(report)
    for row in analysis.rows:
        field = row.receptive_field
        if field is None or max(row.output_shape[2:], default=1) == 1:
            continue
        exact = not any(
            isinstance(v, Fraction) for v in (*field.size, *field.stride, *field.padding)
        )
        check = report.layers[[layer.path for layer in report.layers].index(row.path)].check(
            "receptive field"
        )
        if exact:
            assert check is not None and check.ok, row.path
            assert row.path not in reasons
        else:
            assert check is None
            assert reasons[row.path] == _APPROXIMATE
    assert len(reasons) == 13


def test_an_upsampled_field_differs_from_unit_to_unit():
    """Why fields after upsampling are not compared: torch shows neighbouring units
    seeing different extents, which no one field u·S − P … describes."""
    spec = {
        "version": 2,
        "input": [1, 64],
        "layers": [
            {"type": "conv1d", "out_channels": 2, "kernel_size": 3, "stride": 2, "padding": 1},
            {"type": "upsample", "scale_factor": 2},
            {"type": "conv1d", "out_channels": 2, "kernel_size": 3, "padding": 1},
        ],
    }
    spans = [_footprint(spec, (unit,)) for unit in (30, 31, 32)]
    sizes = {end - start + 1 for start, end in spans}
    jumps = {b[0] - a[0] for a, b in itertools.pairwise(spans)}
    assert len(sizes) > 1 or len(jumps) > 1
    report = verify(spec, every_field=True)
    assert _reasons(report) == {"layers.1": _APPROXIMATE, "layers.2": _APPROXIMATE}
    assert report.layers[0].check("receptive field").ok


@pytest.fixture
def passes(monkeypatch):
    """The spatial sizes of every forward pass the field search makes."""
    made = []
    real = _FieldMeter._pass

    def counted(self, spatial, wanted):
        made.append(spatial)
        return real(self, spatial, wanted)

    monkeypatch.setattr(_FieldMeter, "_pass", counted)
    return made


def test_the_input_grows_by_the_total_stride_and_the_search_is_bounded(passes):
    """UNet at 40×40 needs a larger input for its bottom's 38-pixel field: it grows by
    multiples of 8 (the total stride), one dimension at a time, and one forward pass per
    dimension is enough."""
    network = with_overrides(load_spec(SPECS_DIR / "unet_small.yaml"), input=[1, 40, 40])
    path = "layers.2.branches.1.3.branches.1.3.branches.1.2"
    measured = measure_receptive_field(network, path)
    assert measured.field == measured.calculator
    assert measured.field.to_dict()["size"] == [38, 38]
    assert measured.channels == "1 channel"
    (height, width_there), (height_there, width) = measured.sizes
    assert (width_there, height_there) == (40, 40)  # the other dimension keeps its size
    assert height > 40 and width > 40 and height % 8 == 0 and width % 8 == 0
    assert len(passes) == 2
    convcalc.analyze(network, input=[1, height, 40])  # valid, as every size tried


def test_densenet_search_runs_one_pass_per_dimension(passes):
    """The issue's 14-minute case: DenseNet-121's last field (2071 pixels) is measured on
    the one-channel copy, on 2144×224 and 224×2144 inputs, in two forward passes."""
    report = verify(SPECS_DIR / "densenet121.yaml")
    assert report.ok, report.first_difference()
    check = report.layers[-4].check("receptive field")  # the final relu
    assert check.torch == {"size": [2071, 2071], "stride": [32, 32], "padding": [1021, 1021]}
    assert len(passes) == 2
    assert all(n % 32 == 0 and n <= 2071 + 4 * 32 for n in (passes[0][0], passes[1][1]))


def test_fixed_size_splits_are_measured_on_a_copy_divided_by_their_common_divisor():
    """A split of sizes [8, 24] cannot become one channel: the copy divides every channel
    count by 8 (the largest common divisor) and keeps the split's proportions."""
    spec = {
        "version": 2,
        "input": [3, 48, 48],
        "layers": [
            {"type": "conv2d", "out_channels": 32, "kernel_size": 3, "stride": 2, "padding": 1},
            {"type": "split", "name": "parts", "split_size_or_sections": [8, 24]},
            {"type": "conv2d", "from": "parts.1", "out_channels": 16, "kernel_size": 5,
             "padding": 2},
            {"type": "cat", "from": ["parts.0", "layers.2"]},
            {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "stride": 2},
        ],
    }  # fmt: skip
    measured = measure_receptive_field(spec, "layers.4")
    assert measured.channels == "channels / 8"
    assert measured.field == measured.calculator
    # by hand: conv (3, 2, 1); 5×5 conv on a piece (11, 2, 5); cat, the union (11, 2, 5);
    # 3×3 conv, stride 2: (11 + 2·2, 4, 5)
    assert measured.field.to_dict() == {"size": [15, 15], "stride": [4, 4], "padding": [5, 5]}
    # yolo_neck's C2f blocks split and chunk: divided by 16, not the full width
    assert measure_receptive_field(SPECS_DIR / "yolo_neck.yaml", "c5").channels == ("channels / 16")


def test_a_split_is_measured_over_all_its_pieces():
    """ShuffleNet's chunk after a channel shuffle: its first half holds channels of both
    branches, so the split's field is its input's (as the calculator reports it)."""
    report = verify(SPECS_DIR / "shufflenet_v2.yaml", every_field=True)
    assert report.ok, report.first_difference()
    assert not report.notes


def test_a_network_that_cannot_be_narrowed_is_measured_only_if_cheap():
    """Splits of sizes 3 and 5 out of 8 channels share no divisor: the copy keeps the full
    width, which is measured when a forward pass is cheap, and otherwise refused with the
    cost named."""
    spec = {
        "version": 2,
        "input": [1, 32, 32],
        "layers": [
            {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
            {"type": "split", "name": "parts", "split_size_or_sections": [3, 5]},
            {"type": "conv2d", "from": "parts.1", "out_channels": 3, "kernel_size": 3},
            {"type": "zeropad2d", "padding": 1},
            {"type": "add", "from": ["parts.0", "layers.3"]},
        ],
    }
    measured = measure_receptive_field(spec, "layers.4")
    assert measured.channels == "full width"
    assert measured.field == measured.calculator
    macs = convcalc.analyze(spec).totals.macs
    refused = measure_receptive_field(spec, "layers.4", max_macs=macs - 1)
    assert refused.field is None
    assert refused.reason == (
        f"on the 32×32 input it needs, the copy measured (full width) takes {macs:,} "
        f"multiply-accumulates, more than the {macs - 1:,} allowed"
    )


def test_a_field_beyond_the_pixel_limit_says_so_and_is_measured_within_it():
    spec = {
        "input": [1, 24, 24],
        "layers": [{"type": "conv2d", "out_channels": 1, "kernel_size": 5, "padding": 2}] * 12,
    }
    report = convcalc.analyze(spec)
    assert report.rows[-1].receptive_field.size == (49, 49)
    refused = measure_receptive_field(spec, "layers.11", max_pixels=50 * 24)
    assert refused.reason == (
        "its field (49 pixels along H) needs an input of more than 1,200 pixels"
    )
    measured = measure_receptive_field(spec, "layers.11")
    assert measured.field == measured.calculator
    assert math.prod(measured.sizes[0]) > 50 * 24  # it did need more


def test_an_input_the_spec_refuses_when_enlarged_is_named():
    """A branch of fixed size (adaptive pooling) concatenated with one that grows: no larger
    input is valid, and the reason is the calculator's own error at the size tried."""
    spec = {
        "version": 2,
        "input": [1, 16],
        "layers": [
            {"type": "adaptiveavgpool1d", "name": "fixed", "output_size": 8},
            {"type": "conv1d", "from": "input", "out_channels": 1, "kernel_size": 3,
             "stride": 2, "padding": 1},
            {"type": "cat", "from": ["fixed", "layers.1"]},
            {"type": "conv1d", "out_channels": 1, "kernel_size": 5, "padding": 2},
            {"type": "conv1d", "out_channels": 1, "kernel_size": 5, "padding": 2},
        ],
    }  # fmt: skip
    measured = measure_receptive_field(spec, "layers.4")
    assert measured.field is None
    refused = re.fullmatch(r"the input (\d+) is refused: (.*)", measured.reason)
    size = int(refused[1])
    assert size > 16 and (size - 16) % 2 == 0  # grown by the total stride, 2
    with pytest.raises(convcalc.ConvCalcError) as error:
        convcalc.analyze(spec, input=[1, size])
    assert refused[2] == str(error.value)


def test_a_field_after_adaptive_pooling_that_does_not_fit_says_why():
    spec = {
        "input": [1, 24, 24],
        "layers": [
            {"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1},
            {"type": "adaptiveavgpool2d", "output_size": 6},
            {"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1},
            {"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1},
        ],
    }
    measured = measure_receptive_field(spec, "layers.3")
    assert measured.reason == (
        "its field (22 pixels along H) comes within 1 pixel (the total stride) of the "
        "input's border, and its output does not grow with the input (adaptive pooling "
        "before it)"
    )
    # true: the middle unit (2 of 6) sees from 2·4 − 9 = −1, and a larger input still gives
    # a 6×6 output; the layer before, whose field fits, is measured
    assert convcalc.analyze(spec).rows[-1].receptive_field.padding == (9, 9)
    assert convcalc.analyze(spec, input=[1, 48, 48]).rows[-1].output_shape[2:] == (6, 6)
    before = measure_receptive_field(spec, "layers.2")
    assert before.field == before.calculator


def test_other_reasons_are_true():
    two_inputs = {
        "version": 2,
        "inputs": {"image": [1, 32, 32], "mask": [1, 32, 32]},
        "layers": [
            {"type": "conv2d", "name": "a", "out_channels": 2, "kernel_size": 3, "padding": 1},
            {"type": "conv2d", "from": "mask", "out_channels": 2, "kernel_size": 3},
            {"type": "zeropad2d", "name": "b", "padding": 1},
            {"type": "add", "from": ["a", "b"]},
        ],
    }
    assert measure_receptive_field(two_inputs, "b").reason == (
        "its output does not depend on the input 'image'"
    )
    assert measure_receptive_field(two_inputs, "layers.3").field is not None
    dilated = {
        "input": [1, 32, 32],
        "layers": [{"type": "maxpool2d", "kernel_size": 3, "dilation": 2, "padding": 1}],
    }
    assert measure_receptive_field(dilated, "layers.0").reason == (
        "dilated max pooling has no average-pooling stand-in to measure"
    )
