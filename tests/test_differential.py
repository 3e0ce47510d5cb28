"""Property-based differential tests: random layers and networks, torch as the referee.

For random arguments and input shapes, either torch accepts the layer and the
calculator gives the same output shape, parameters, buffers and MACs, or torch
refuses and the calculator refuses too, with its own error (never a crash).
Set HYPOTHESIS_PROFILE=thorough (or pass --hypothesis-profile=thorough) for more.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import convcalc
from convcalc.layers import Leaf
from convcalc.spec import LAYER_TYPES

# Single-input leaves (merges and splits have their own tests, on random graphs).
LEAVES = sorted(
    name
    for name, cls in LAYER_TYPES.items()
    if issubclass(cls, Leaf) and cls.__module__ != "convcalc.merges"
)

# Layers that take inputs of any rank (beyond the batch and the channels).
ANY_RANK = (
    "prelu", "mish", "softplus", "selu", "celu", "hardtanh", "hardshrink", "softshrink",
    "softsign", "tanhshrink", "logsigmoid", "unflatten", "channelshuffle", "permute", "mean",
    "layerscale", "stochasticdepth", "droppath",
)  # fmt: skip
# torch reads [*, C, H, W]: other ranks are not a batch of [C, H, W] (see compare_with_torch).
RANK_FOUR = ("pixelshuffle", "pixelunshuffle")
PAD_FAMILIES = ("ZeroPad", "ConstantPad", "ReflectionPad", "ReplicationPad", "CircularPad")

small = st.integers(1, 4)


def sizes(dims: int, low: int = 1, high: int = 5):
    return st.one_of(
        st.integers(low, high), st.lists(st.integers(low, high), min_size=dims, max_size=dims)
    )


def _dims(kind: str) -> int:
    return int(kind[-2]) if kind[-2:] in ("1d", "2d", "3d") else 2


@st.composite
def layer_and_shape(draw):
    kind = draw(st.sampled_from(LEAVES))
    dims = _dims(kind)
    rank = dims + 2
    if kind in (
        "linear",
        "flatten",
        "softmax",
        "logsoftmax",
        "dropout",
        "elu",
        "gelu",
        "layernorm",
        *ANY_RANK,
    ):
        rank = draw(st.integers(2, 4))
    if draw(st.integers(0, 9)) == 0:  # sometimes the wrong number of dimensions
        rank = draw(st.integers(2, 5))
    channels = draw(st.integers(1, 6))
    spatial = draw(st.lists(st.integers(1, 12), min_size=rank - 2, max_size=rank - 2))
    shape = (draw(st.integers(1, 3)), channels, *spatial)
    spec: dict = {"type": kind}
    family = LAYER_TYPES[kind].__name__
    if family in ("Conv", "ConvTranspose"):
        groups = draw(st.sampled_from([1, 1, 2, 3]))
        spec["out_channels"] = groups * draw(small)
        spec["kernel_size"] = draw(sizes(dims))
        spec["stride"] = draw(sizes(dims, 1, 3))
        spec["dilation"] = draw(sizes(dims, 1, 3))
        spec["groups"] = groups
        spec["bias"] = draw(st.booleans())
        if family == "Conv":
            spec["padding"] = draw(st.one_of(sizes(dims, 0, 4), st.sampled_from(["same", "valid"])))
            spec["padding_mode"] = draw(
                st.sampled_from(["zeros", "reflect", "replicate", "circular"])
            )
        else:
            spec["padding"] = draw(sizes(dims, 0, 3))
            spec["output_padding"] = draw(sizes(dims, 0, 2))
    elif family in ("MaxPool", "AvgPool"):
        spec["kernel_size"] = draw(sizes(dims))
        if draw(st.booleans()):
            spec["stride"] = draw(sizes(dims, 1, 4))
        spec["padding"] = draw(sizes(dims, 0, 2))
        spec["ceil_mode"] = draw(st.booleans())
        if family == "MaxPool":
            spec["dilation"] = draw(sizes(dims, 1, 3))
        else:
            spec["count_include_pad"] = draw(st.booleans())
            if dims > 1 and draw(st.booleans()):
                spec["divisor_override"] = draw(st.integers(1, 5))
    elif family == "AdaptivePool":
        spec["output_size"] = draw(
            st.one_of(
                st.integers(1, 6),
                st.lists(st.one_of(st.none(), st.integers(1, 6)), min_size=dims, max_size=dims),
            )
        )
    elif family in ("BatchNorm", "InstanceNorm"):
        spec["affine"] = draw(st.booleans())
        spec["track_running_stats"] = draw(st.booleans())
    elif family == "GroupNorm":
        spec["num_groups"] = draw(st.integers(1, 4))
        spec["affine"] = draw(st.booleans())
    elif family == "LayerNorm":
        trailing = draw(st.integers(0, len(shape) - 1))
        if trailing:
            spec["normalized_shape"] = list(shape[len(shape) - trailing :])
        spec["elementwise_affine"] = draw(st.booleans())
        spec["bias"] = draw(st.booleans())
    elif family == "LocalResponseNorm":
        spec["size"] = draw(st.integers(1, 5))
    elif family == "Softmax":
        spec["dim"] = draw(st.integers(-4, 4))
    elif family == "Dropout":
        spec["p"] = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    elif family == "Flatten":
        spec["start_dim"] = draw(st.integers(-4, 3))
        spec["end_dim"] = draw(st.integers(-4, 3))
    elif family == "Linear":
        spec["out_features"] = draw(small)
        spec["bias"] = draw(st.booleans())
        if len(shape) > 2:
            spec["in_features"] = shape[-1]
    elif family == "Upsample":
        spatial_dims = len(shape) - 2
        mode = draw(
            st.sampled_from(
                ["nearest", "linear", "bilinear", "bicubic", "trilinear", "area", "nearest-exact"]
            )
        )
        spec["mode"] = mode
        if draw(st.booleans()):
            spec["size"] = draw(sizes(max(spatial_dims, 1), 1, 9))
        else:
            spec["scale_factor"] = draw(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0]))
        if mode in ("linear", "bilinear", "bicubic", "trilinear") and draw(st.booleans()):
            spec["align_corners"] = draw(st.booleans())
    elif family in PAD_FAMILIES:
        low, high = (-1, 3) if family == "ZeroPad" else (-2, 6)
        spec["padding"] = draw(
            st.one_of(
                st.integers(low, high),
                st.lists(st.integers(low, high), min_size=2 * dims, max_size=2 * dims),
            )
        )
        if family == "ConstantPad":
            spec["value"] = draw(st.sampled_from([0, -1.5, 2.0]))
    elif family == "PReLU":
        spec["num_parameters"] = draw(st.sampled_from([1, channels, draw(st.integers(1, 6))]))
        spec["init"] = draw(st.sampled_from([0.0, 0.25, -1.0]))
    elif family in ("Mish", "SELU", "CELU", "Hardtanh"):
        spec["inplace"] = draw(st.booleans())
        if family == "Hardtanh":
            spec["min_val"], spec["max_val"] = draw(st.sampled_from([(-1, 1), (0, 6), (2, 1)]))
        if family == "CELU":
            spec["alpha"] = draw(st.sampled_from([0.5, 1.0, 2.0]))
    elif family == "Softplus":
        spec["beta"] = draw(st.sampled_from([0.5, 1.0, 2.0]))
        spec["threshold"] = draw(st.sampled_from([1.0, 20.0]))
    elif family == "Shrink":
        spec["lambd"] = draw(st.sampled_from([-0.5, 0.0, 0.5, 2.0]))
    elif family == "Unflatten":
        spec["dim"] = draw(st.integers(-4, 3))
        spec["unflattened_size"] = draw(
            st.lists(st.sampled_from([-1, 1, 2, 3, 4, 6]), min_size=1, max_size=3)
        )
    elif family == "PixelShuffle":
        spec["upscale_factor"] = draw(st.integers(1, 3))
    elif family == "PixelUnshuffle":
        spec["downscale_factor"] = draw(st.integers(1, 3))
    elif family == "ChannelShuffle":
        spec["groups"] = draw(st.integers(1, 4))
    elif family == "Permute":
        spec["order"] = draw(
            st.one_of(
                st.permutations(range(len(shape))),
                st.lists(st.integers(-4, 4), min_size=1, max_size=5),
            )
        )
    elif family == "Mean":
        spec["dim"] = draw(
            st.one_of(st.integers(-4, 4), st.lists(st.integers(-4, 4), min_size=1, max_size=3))
        )
        spec["keepdim"] = draw(st.booleans())
    elif family == "LayerNorm2d":
        spec["elementwise_affine"] = draw(st.booleans())
        spec["bias"] = draw(st.booleans())
    elif family == "LayerScale":
        spec["init_value"] = draw(st.sampled_from([1e-6, 1.0]))
    elif family == "StochasticDepth":
        spec["p"] = draw(st.sampled_from([0.0, 0.2, 1.0]))
        spec["mode"] = draw(st.sampled_from(["row", "batch"]))
    return spec, shape


def _torch_result(spec: dict, shape: tuple[int, ...]):
    """torch's numbers, or None when torch refuses the layer or the input."""
    from convcalc.torch_bridge import torch_layer

    layer = LAYER_TYPES[spec["type"]].model_validate(spec)
    try:
        module = torch_layer(layer, shape).eval()  # torch.nn's, or convcalc.torch_modules'
        counter = FlopCounterMode(display=False)
        with warnings.catch_warnings(), counter, torch.no_grad():
            warnings.simplefilter("ignore")
            output = module(torch.randn(shape))
    except (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError):
        return None
    if output.numel() == 0:
        return None  # torch returns an empty tensor for some zero-size outputs
    return {
        "output_shape": tuple(output.shape),
        "params": sum(p.numel() for p in module.parameters()),
        "buffers": sum(b.numel() for b in module.buffers()),
        "macs": counter.get_total_flops() // 2,
    }


def _calculator_result(spec: dict, shape: tuple[int, ...]):
    try:
        report = convcalc.analyze(
            {"input": list(shape[1:]), "batch_size": shape[0], "layers": [spec]}
        )
    except convcalc.ConvCalcError as error:
        return None, str(error)
    row = report.rows[0]
    return {
        "output_shape": row.output_shape,
        "params": row.params,
        "buffers": row.buffers,
        "macs": row.macs,
    }, None


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(layer_and_shape())
def test_random_layer_agrees_with_torch(case):
    spec, shape = case
    note(f"spec={spec} shape={shape}")
    compare_with_torch(spec, shape)


def compare_with_torch(spec: dict, shape: tuple[int, ...]) -> None:
    """Both accept with equal numbers, or both refuse (the calculator cleanly)."""
    calculated, message = _calculator_result(spec, shape)
    layer_class = LAYER_TYPES[spec["type"]]
    dims = int(spec["type"][-2]) if spec["type"][-2:] in ("1d", "2d", "3d") else 0
    if spec["type"] in RANK_FOUR:
        dims = 2
    if dims and layer_class.__name__ != "Dropout" and len(shape) != dims + 2:
        # torch reads other ranks as one unbatched sample (or as spatial dimensions
        # only); convcalc shapes are always [N, C, *spatial], so the two do not
        # describe the same tensor. The calculator must still answer cleanly.
        assert calculated is not None or message
        return
    try:
        expected = _torch_result(spec, shape)
    except Exception:  # the spec did not validate: it cannot be given to torch as is
        assert calculated is None
        return
    if expected is None:
        assert calculated is None, (
            f"torch refuses {spec} on {shape}, the calculator gives {calculated}"
        )
    else:
        assert calculated is not None, (
            f"torch accepts {spec} on {shape}; the calculator says: {message}"
        )
        assert calculated == expected


# -- whole networks ------------------------------------------------------------------------


@st.composite
def conv(draw, keep_size: bool = False):
    layer = {
        "type": "conv2d",
        "out_channels": draw(st.integers(1, 6)),
        "kernel_size": draw(st.sampled_from([1, 3, 5])),
    }
    if keep_size:
        layer["padding"] = "same"
        layer["dilation"] = draw(st.integers(1, 2))
    else:
        layer["stride"] = draw(st.integers(1, 2))
        layer["padding"] = draw(st.integers(0, 2))
    return layer


@st.composite
def stage(draw):
    kind = draw(st.sampled_from(["conv", "pool", "residual", "concat", "repeat", "pointwise"]))
    if kind == "conv":
        return draw(conv())
    if kind == "pool":
        return {
            "type": draw(st.sampled_from(["maxpool2d", "avgpool2d"])),
            "kernel_size": 2,
            "ceil_mode": draw(st.booleans()),
        }
    if kind == "pointwise":
        return draw(
            st.sampled_from(
                ["relu", "batchnorm2d", {"type": "groupnorm", "num_groups": 1}, "gelu", "identity"]
            )
        )
    if kind == "residual":
        body = draw(st.lists(conv(keep_size=True), min_size=1, max_size=2))
        channels = body[-1]["out_channels"]
        shortcut = [{"type": "conv2d", "out_channels": channels, "kernel_size": 1}]
        return {"type": "residual", "layers": [*body, "relu"], "shortcut": shortcut}
    if kind == "concat":
        branches = draw(
            st.lists(
                st.one_of(st.just([]), st.lists(conv(keep_size=True), min_size=1, max_size=2)),
                min_size=1,
                max_size=3,
            )
        )
        return {"type": "concat", "branches": branches}
    return {
        "type": "repeat",
        "times": draw(st.integers(1, 3)),
        "layers": draw(st.lists(conv(keep_size=True), min_size=1, max_size=2)),
    }


@settings(max_examples=150)
@given(st.lists(stage(), min_size=1, max_size=5), st.integers(1, 3))
def test_random_network_verifies(stages, batch_size):
    from convcalc.verify import verify

    spec = {"input": [3, 24, 24], "batch_size": batch_size, "layers": stages}
    note(f"spec={spec}")
    try:
        convcalc.analyze(spec)
    except convcalc.ShapeError:
        return  # e.g. pooled below one pixel: covered by the layer test above
    report = verify(spec)
    assert report.ok, report.first_difference()


# Disagreements hypothesis found once, kept as plain regression cases.
REGRESSIONS = [
    ({"type": "dropout2d", "p": 0.0}, (1, 1)),  # torch accepts any rank (with a warning)
    ({"type": "groupnorm", "num_groups": 1, "affine": False}, (1, 1)),  # one value per group
    ({"type": "adaptiveavgpool1d", "output_size": [None]}, (1, 1, 1)),  # no null in 1d
    ({"type": "batchnorm1d", "affine": False, "track_running_stats": False}, (1, 1, 1)),
    ({"type": "instancenorm2d"}, (2, 3, 1, 1)),
    ({"type": "avgpool3d", "kernel_size": 2, "padding": 1}, (1, 1, 1, 1, 1)),
    # constant and circular padding crop first: not more than there is
    ({"type": "constantpad1d", "padding": [2, -2], "value": 0}, (1, 1, 1)),
    ({"type": "zeropad1d", "padding": [-5, 4]}, (1, 1, 4)),
    ({"type": "circularpad1d", "padding": [-5, 4]}, (1, 1, 4)),
    ({"type": "reflectionpad1d", "padding": [-5, 3]}, (1, 1, 4)),  # reflection does not
]


@pytest.mark.parametrize(("spec", "shape"), REGRESSIONS, ids=lambda v: str(v))
def test_regressions(spec, shape):
    compare_with_torch(spec, shape)


# Networks hypothesis found once, kept as plain regression cases.
NETWORK_REGRESSIONS = [
    # the output's edge unit sees padding added by the 1×1 convs: measured interior units only
    [
        {"type": "maxpool2d", "kernel_size": 2},
        {"type": "conv2d", "out_channels": 1, "kernel_size": 1, "padding": 2},
        {"type": "conv2d", "out_channels": 1, "kernel_size": 1, "stride": 2, "padding": 1},
        {"type": "conv2d", "out_channels": 1, "kernel_size": 3, "stride": 2},
        {"type": "maxpool2d", "kernel_size": 2},
    ],
]


@pytest.mark.parametrize("layers", NETWORK_REGRESSIONS, ids=lambda v: f"{len(v)} layers")
def test_network_regressions(layers):
    from convcalc.verify import verify

    report = verify({"input": [3, 24, 24], "layers": layers})
    assert report.ok, report.first_difference()
