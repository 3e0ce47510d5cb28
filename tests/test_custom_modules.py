"""convcalc.torch_modules against torchvision, whose classes they stand in for: the same
numbers out of the same weights, and ConvNeXt's block written as a spec."""

from __future__ import annotations

import pytest
import torch

import convcalc
from convcalc import torch_modules as custom


@pytest.fixture(scope="module")
def torchvision(torchvision_models):
    import torchvision.ops

    return torchvision_models, torchvision.ops


def test_layernorm2d_is_torchvisions(torchvision):
    models, _ = torchvision
    theirs = models.convnext.LayerNorm2d(6, eps=1e-6)
    ours = custom.LayerNorm2d(6)
    with torch.no_grad():
        theirs.weight.normal_()
        theirs.bias.normal_()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 6, 5, 7)
    assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_stochastic_depth_is_torchvisions(torchvision, mode, p):
    _, ops = torchvision
    x = torch.randn(8, 3, 4, 4)
    for ours in (custom.StochasticDepth(p, mode), custom.DropPath(p, mode)):
        theirs = ops.StochasticDepth(p, mode)
        torch.manual_seed(0)
        expected = theirs(x)
        torch.manual_seed(0)
        assert torch.equal(ours(x), expected)
        assert torch.equal(ours.eval()(x), theirs.eval()(x))


def test_permute_is_torchvisions(torchvision):
    _, ops = torchvision
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(custom.Permute([0, 2, 3, 1])(x), ops.Permute([0, 2, 3, 1])(x))


def test_convnext_block_as_a_spec(torchvision):
    """torchvision's CNBlock: depthwise 7×7, LayerNorm channels-last, an MLP, layer scale and
    stochastic depth, plus the input."""
    models, _ = torchvision
    dim = 16
    block = models.convnext.CNBlock(dim, layer_scale=0.5, stochastic_depth_prob=0.1).eval()
    spec = {
        "input": [dim, 14, 14],
        "batch_size": 2,
        "layers": [
            {
                "type": "residual",
                "layers": [
                    {"type": "conv2d", "out_channels": dim, "kernel_size": 7, "padding": 3,
                     "groups": dim},
                    {"type": "permute", "order": [0, 2, 3, 1]},
                    {"type": "layernorm", "normalized_shape": [dim], "eps": 1e-6},
                    {"type": "linear", "in_features": dim, "out_features": 4 * dim},
                    "gelu",
                    {"type": "linear", "in_features": 4 * dim, "out_features": dim},
                    {"type": "permute", "order": [0, 3, 1, 2]},
                    {"type": "layerscale", "init_value": 0.5},
                    {"type": "stochasticdepth", "p": 0.1},
                ],
            }
        ],
    }  # fmt: skip
    report = convcalc.analyze(spec)
    assert report.totals.params == sum(p.numel() for p in block.parameters())
    ours = convcalc.build_module(spec).eval()
    with torch.no_grad():
        # (a module's own parameters come before its children's: layer_scale goes last)
        weights = [*block.block.parameters(), block.layer_scale]
        for mine, theirs in zip(ours.parameters(), weights, strict=True):
            mine.copy_(theirs.reshape(mine.shape))  # layer_scale is [C, 1, 1], gamma [C]
    x = torch.randn(report.input_shape)
    with torch.no_grad():
        assert torch.equal(ours(x), block(x))
        assert tuple(block(x).shape) == report.output_shape
