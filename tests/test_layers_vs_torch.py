"""Every leaf layer type: the calculator's numbers against real torch.nn layers.

torch is the referee: output shape from a forward pass, parameters and buffers
from the module, MACs from torch.utils.flop_counter.FlopCounterMode (FLOPs / 2).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from convcalc.layers import Leaf
from convcalc.spec import LAYER_TYPES
from convcalc.torch_bridge import torch_layer

# (layer as written in a spec, input shape with batch)
CASES = [
    ({"type": "conv1d", "out_channels": 4, "kernel_size": 3}, (2, 3, 10)),
    ({"type": "conv1d", "out_channels": 4, "kernel_size": 4, "padding": "same"}, (1, 2, 9)),
    (
        {"type": "conv2d", "out_channels": 64, "kernel_size": 11, "stride": 4, "padding": 2},
        (1, 3, 224, 224),
    ),
    (
        {
            "type": "conv2d",
            "out_channels": 8,
            "kernel_size": [3, 1],
            "stride": [2, 1],
            "padding": [1, 0],
        },
        (1, 4, 9, 7),
    ),
    (
        {"type": "conv2d", "out_channels": 6, "kernel_size": 3, "groups": 3, "bias": False},
        (2, 6, 8, 8),
    ),
    (
        {"type": "conv2d", "out_channels": 6, "kernel_size": 3, "dilation": 2, "padding": "same"},
        (1, 3, 10, 11),
    ),
    (
        {"type": "conv2d", "out_channels": 6, "kernel_size": 4, "dilation": 3, "padding": "same"},
        (1, 3, 10, 11),
    ),
    ({"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": "valid"}, (1, 1, 5, 5)),
    (
        {
            "type": "conv2d",
            "out_channels": 2,
            "kernel_size": 3,
            "padding": 2,
            "padding_mode": "reflect",
        },
        (1, 1, 5, 5),
    ),
    (
        {
            "type": "conv2d",
            "out_channels": 2,
            "kernel_size": 3,
            "padding": 5,
            "padding_mode": "circular",
        },
        (1, 1, 5, 5),
    ),
    (
        {
            "type": "conv2d",
            "out_channels": 2,
            "kernel_size": 3,
            "padding": 7,
            "padding_mode": "replicate",
        },
        (1, 1, 5, 5),
    ),
    (
        {"type": "conv3d", "out_channels": 4, "kernel_size": [3, 3, 1], "stride": 2, "padding": 1},
        (1, 2, 7, 8, 9),
    ),
    (
        {"type": "convtranspose1d", "out_channels": 3, "kernel_size": 4, "stride": 2, "padding": 1},
        (1, 2, 7),
    ),
    (
        {
            "type": "convtranspose2d",
            "out_channels": 4,
            "kernel_size": 3,
            "stride": 2,
            "padding": 1,
            "output_padding": 1,
        },
        (2, 6, 7, 7),
    ),
    (
        {
            "type": "convtranspose2d",
            "out_channels": 4,
            "kernel_size": 3,
            "stride": 1,
            "dilation": 2,
            "output_padding": 1,
            "groups": 2,
        },
        (1, 6, 5, 5),
    ),
    (
        {
            "type": "convtranspose3d",
            "out_channels": 2,
            "kernel_size": 2,
            "stride": 2,
            "bias": False,
        },
        (1, 3, 3, 4, 5),
    ),
    ({"type": "maxpool1d", "kernel_size": 3, "stride": 2, "padding": 1}, (1, 2, 10)),
    ({"type": "maxpool2d", "kernel_size": 3, "stride": 2}, (1, 64, 55, 55)),
    (
        {"type": "maxpool2d", "kernel_size": 2, "stride": 2, "padding": 1, "ceil_mode": True},
        (1, 1, 5, 5),
    ),
    (
        {"type": "maxpool2d", "kernel_size": 2, "stride": 3, "padding": 1, "ceil_mode": True},
        (1, 1, 7, 7),
    ),
    (
        {"type": "maxpool2d", "kernel_size": 4, "stride": 4, "padding": 2, "ceil_mode": True},
        (1, 1, 9, 9),
    ),
    ({"type": "maxpool2d", "kernel_size": 3, "dilation": 2, "stride": 1}, (1, 1, 10, 10)),
    ({"type": "maxpool3d", "kernel_size": 2}, (1, 2, 4, 5, 6)),
    ({"type": "avgpool1d", "kernel_size": 3, "ceil_mode": True}, (1, 2, 10)),
    ({"type": "avgpool2d", "kernel_size": 2}, (1, 6, 28, 28)),
    (
        {
            "type": "avgpool2d",
            "kernel_size": 3,
            "stride": 2,
            "padding": 1,
            "count_include_pad": False,
            "divisor_override": 2,
        },
        (1, 2, 9, 9),
    ),
    ({"type": "avgpool3d", "kernel_size": [1, 2, 2], "ceil_mode": True}, (1, 2, 3, 5, 5)),
    ({"type": "adaptiveavgpool1d", "output_size": 4}, (1, 3, 10)),
    ({"type": "adaptiveavgpool2d", "output_size": 6}, (1, 256, 13, 13)),
    ({"type": "adaptiveavgpool2d", "output_size": [None, 3]}, (1, 2, 5, 7)),
    ({"type": "adaptiveavgpool3d", "output_size": 1}, (1, 2, 3, 4, 5)),
    ({"type": "adaptivemaxpool1d", "output_size": 3}, (1, 2, 7)),
    ({"type": "adaptivemaxpool2d", "output_size": [2, 3]}, (1, 2, 5, 7)),
    ({"type": "adaptivemaxpool3d", "output_size": 2}, (1, 1, 4, 4, 4)),
    ({"type": "batchnorm1d"}, (4, 16)),
    ({"type": "batchnorm1d", "affine": False}, (4, 16, 5)),
    ({"type": "batchnorm2d"}, (2, 64, 8, 8)),
    ({"type": "batchnorm2d", "track_running_stats": False}, (2, 8, 4, 4)),
    ({"type": "batchnorm3d", "num_features": 3}, (2, 3, 2, 2, 2)),
    ({"type": "instancenorm1d"}, (2, 4, 6)),
    ({"type": "instancenorm2d", "affine": True, "track_running_stats": True}, (2, 4, 6, 6)),
    ({"type": "instancenorm3d", "affine": True}, (1, 2, 3, 3, 3)),
    ({"type": "groupnorm", "num_groups": 4}, (2, 8, 5, 5)),
    ({"type": "groupnorm", "num_groups": 2, "affine": False}, (2, 6, 5)),
    ({"type": "layernorm"}, (2, 4, 5, 5)),
    ({"type": "layernorm", "normalized_shape": 5, "bias": False}, (2, 4, 5, 5)),
    ({"type": "layernorm", "normalized_shape": [5, 5], "elementwise_affine": False}, (2, 4, 5, 5)),
    ({"type": "localresponsenorm", "size": 5}, (1, 8, 6, 6)),
    ({"type": "relu"}, (1, 3, 4, 4)),
    ({"type": "relu6", "inplace": True}, (1, 3, 4, 4)),
    ({"type": "leakyrelu", "negative_slope": 0.2}, (1, 3, 4)),
    ({"type": "elu", "alpha": 0.5}, (2, 5)),
    ({"type": "gelu", "approximate": "tanh"}, (2, 5)),
    ({"type": "silu"}, (1, 3, 4, 4)),
    ({"type": "sigmoid"}, (1, 3, 4, 4)),
    ({"type": "tanh"}, (1, 3, 4, 4)),
    ({"type": "hardswish"}, (1, 3, 4, 4)),
    ({"type": "hardsigmoid"}, (1, 3, 4, 4)),
    ({"type": "softmax", "dim": 1}, (2, 10)),
    ({"type": "logsoftmax", "dim": -1}, (2, 3, 10)),
    ({"type": "dropout", "p": 0.3}, (2, 10)),
    ({"type": "dropout1d"}, (2, 3, 10)),
    ({"type": "dropout2d", "p": 0.1}, (2, 3, 4, 4)),
    ({"type": "dropout3d"}, (1, 2, 3, 3, 3)),
    ({"type": "flatten"}, (2, 64, 7, 7)),
    ({"type": "flatten", "start_dim": 2}, (2, 64, 7, 7)),
    ({"type": "flatten", "start_dim": 0, "end_dim": 1}, (2, 64, 7, 7)),
    ({"type": "linear", "out_features": 10}, (3, 3136)),
    ({"type": "linear", "in_features": 7, "out_features": 4, "bias": False}, (2, 5, 7)),
    ({"type": "identity"}, (1, 3, 4, 4)),
    ({"type": "upsample", "scale_factor": 2}, (1, 3, 7, 7)),
    (
        {"type": "upsample", "scale_factor": 1.5, "mode": "bilinear", "align_corners": False},
        (1, 3, 5, 7),
    ),
    ({"type": "upsample", "size": [8, 9], "mode": "bicubic"}, (1, 1, 4, 4)),
    ({"type": "upsample", "size": 12, "mode": "linear", "align_corners": True}, (1, 2, 5)),
    ({"type": "upsample", "scale_factor": [1, 2, 0.5], "mode": "trilinear"}, (1, 1, 3, 4, 6)),
    ({"type": "upsample", "scale_factor": 0.5, "mode": "area"}, (1, 1, 7, 7)),
    ({"type": "upsample", "scale_factor": 3, "mode": "nearest-exact"}, (1, 1, 2, 3)),
    ({"type": "zeropad1d", "padding": [1, 2]}, (1, 2, 5)),
    ({"type": "zeropad2d", "padding": [1, 2, 3, 0]}, (1, 2, 5, 6)),
    ({"type": "zeropad2d", "padding": -1}, (1, 2, 5, 6)),
    ({"type": "zeropad3d", "padding": 1}, (1, 2, 3, 3, 3)),
    ({"type": "constantpad1d", "padding": [2, -1], "value": 1.5}, (1, 2, 5)),
    ({"type": "constantpad2d", "padding": 1, "value": -3}, (2, 3, 4, 4)),
    ({"type": "constantpad3d", "padding": [1, 0, 0, 2, -1, 1], "value": 0}, (1, 2, 3, 3, 3)),
    ({"type": "reflectionpad1d", "padding": 3}, (2, 3, 4)),
    ({"type": "reflectionpad2d", "padding": [1, 2, 0, 3]}, (1, 2, 4, 5)),
    ({"type": "reflectionpad2d", "padding": [-1, 2, 1, -2]}, (1, 2, 4, 5)),
    ({"type": "reflectionpad3d", "padding": 1}, (1, 2, 2, 3, 4)),
    ({"type": "replicationpad1d", "padding": [5, 0]}, (2, 3, 4)),
    ({"type": "replicationpad2d", "padding": [3, 1, 2, 4]}, (1, 2, 1, 2)),
    ({"type": "replicationpad3d", "padding": [1, -1, 0, 2, 2, 0]}, (1, 1, 2, 3, 4)),
    ({"type": "circularpad1d", "padding": [4, 1]}, (2, 3, 4)),
    ({"type": "circularpad2d", "padding": [1, -2, 2, 0]}, (1, 2, 3, 4)),
    ({"type": "circularpad3d", "padding": 1}, (1, 1, 2, 2, 2)),
    ({"type": "prelu"}, (2, 4, 5, 5)),
    ({"type": "prelu", "num_parameters": 4, "init": 0.1}, (2, 4, 5, 5)),
    ({"type": "prelu", "num_parameters": 6}, (3, 6)),
    ({"type": "mish"}, (2, 3, 4, 4)),
    ({"type": "mish", "inplace": True}, (2, 5)),
    ({"type": "softplus"}, (2, 3, 4, 4)),
    ({"type": "softplus", "beta": 2, "threshold": 5}, (2, 3, 7)),
    ({"type": "selu"}, (2, 3, 4, 4)),
    ({"type": "selu", "inplace": True}, (2, 3, 4)),
    ({"type": "celu", "alpha": 0.5}, (2, 3, 4, 4)),
    ({"type": "celu", "inplace": True}, (2, 7)),
    ({"type": "hardtanh"}, (2, 3, 4, 4)),
    ({"type": "hardtanh", "min_val": 0, "max_val": 6, "inplace": True}, (2, 3, 4)),
    ({"type": "hardshrink", "lambd": 1.5}, (2, 3, 4, 4)),
    ({"type": "softshrink"}, (2, 3, 4)),
    ({"type": "softsign"}, (2, 3, 4, 4)),
    ({"type": "tanhshrink"}, (2, 3, 4, 4)),
    ({"type": "logsigmoid"}, (2, 6)),
    ({"type": "unflatten", "dim": 1, "unflattened_size": [2, 3]}, (2, 6, 5)),
    ({"type": "unflatten", "dim": -1, "unflattened_size": [-1, 2, 2]}, (2, 3, 12)),
    ({"type": "unflatten", "dim": 0, "unflattened_size": [1, -1]}, (4, 3)),
    ({"type": "unflatten", "dim": 2, "unflattened_size": [5]}, (1, 2, 5, 4)),
    ({"type": "pixelshuffle", "upscale_factor": 2}, (2, 8, 3, 5)),
    ({"type": "pixelshuffle", "upscale_factor": 3}, (1, 9, 2, 2)),
    ({"type": "pixelshuffle", "upscale_factor": 1}, (1, 5, 2, 3)),
    ({"type": "pixelunshuffle", "downscale_factor": 2}, (2, 3, 6, 4)),
    ({"type": "pixelunshuffle", "downscale_factor": 3}, (1, 1, 3, 9)),
    ({"type": "channelshuffle", "groups": 2}, (2, 4, 5, 5)),
    ({"type": "channelshuffle", "groups": 3}, (1, 6, 7)),
    ({"type": "channelshuffle", "groups": 1}, (1, 3, 2, 2, 2)),
    ({"type": "permute", "order": [0, 2, 3, 1]}, (2, 3, 4, 5)),
    ({"type": "permute", "order": [0, -1, 1]}, (2, 3, 7)),
    ({"type": "permute", "order": [1, 0, 2, 3]}, (2, 3, 4, 5)),
    ({"type": "permute", "order": [0, 1, 2, 3]}, (2, 3, 4, 5)),
    ({"type": "mean", "dim": [2, 3]}, (2, 8, 5, 5)),
    ({"type": "mean", "dim": [-1, -2], "keepdim": True}, (2, 8, 5, 6)),
    ({"type": "mean", "dim": 1}, (2, 8, 5)),
    ({"type": "mean", "dim": 0, "keepdim": True}, (3, 4)),
    ({"type": "layernorm2d"}, (2, 8, 5, 5)),
    ({"type": "layernorm2d", "num_channels": 3, "eps": 1e-5, "bias": False}, (1, 3, 4, 6)),
    ({"type": "layernorm2d", "elementwise_affine": False}, (2, 4, 3, 3)),
    ({"type": "layerscale"}, (2, 8, 5, 5)),
    ({"type": "layerscale", "num_channels": 6, "init_value": 0.1}, (2, 6, 7)),
    ({"type": "layerscale"}, (3, 10)),
    ({"type": "stochasticdepth", "p": 0.2}, (4, 8, 5, 5)),
    ({"type": "stochasticdepth", "p": 0.5, "mode": "batch"}, (2, 3, 7)),
    ({"type": "stochasticdepth", "p": 0.0}, (2, 3, 4, 4)),
    ({"type": "stochasticdepth", "p": 1.0}, (2, 3, 4, 4)),
    ({"type": "droppath", "p": 0.1}, (2, 5)),
]


def _layer(spec: dict) -> Leaf:
    layer = LAYER_TYPES[spec["type"]].model_validate(spec)
    assert isinstance(layer, Leaf)
    return layer


def torch_numbers(module: torch.nn.Module, shape: tuple[int, ...]) -> dict:
    module.eval()
    x = torch.randn(shape)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        y = module(x)
    return {
        "output_shape": tuple(y.shape),
        "params": sum(p.numel() for p in module.parameters()),
        "buffers": sum(b.numel() for b in module.buffers()),
        "macs": counter.get_total_flops() // 2,
    }


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize(
    ("spec", "shape"),
    CASES,
    ids=lambda v: v["type"] if isinstance(v, dict) else "x".join(map(str, v)),
)
def test_layer_matches_torch(spec, shape):
    layer = _layer(spec)
    result = layer.infer(shape)
    expected = torch_numbers(torch_layer(layer, shape), shape)
    assert {
        "output_shape": result.output_shape,
        "params": result.params,
        "buffers": result.buffers,
        "macs": result.macs,
    } == expected


def test_every_leaf_type_has_a_case():
    covered = {spec["type"] for spec, _ in CASES}
    # merges and splits take or give several tensors: tests/test_graph.py holds them to torch
    leaves = {
        name
        for name, cls in LAYER_TYPES.items()
        if issubclass(cls, Leaf) and cls.__module__ != "convcalc.merges"
    }
    assert leaves - covered == set()


def test_conv_macs_formula_by_hand():
    # AlexNet conv1: 55·55 outputs × 64 channels × (11·11·3) multiply-accumulates each.
    layer = _layer(
        {"type": "conv2d", "out_channels": 64, "kernel_size": 11, "stride": 4, "padding": 2}
    )
    result = layer.infer((1, 3, 224, 224))
    assert result.macs == 55 * 55 * 64 * 11 * 11 * 3
    assert result.params == 11 * 11 * 3 * 64 + 64 == 23_296
    assert result.output_shape == (1, 64, 55, 55)
    assert math.prod(result.output_shape) == 193_600
