"""torchvision's model zoo imported (``from_torch``, eval mode, on the meta device: no
weights are allocated) and held to torchvision's published numbers and to torch.

For each model: the spec's parameters are the weights' published ``num_params`` less
the parameters of submodules the forward never calls (reported, with their count), its
MACs are ``FlopCounterMode``'s FLOPs / 2 and match the published GFLOPS (``_ops``, to
the three decimals published), and its outputs have torch's shapes. The full sweep is
``pytest -m zoo``; a subset covering every construct (residuals, shared concatenations,
squeeze-excitation gates, split and channel shuffle, permute / layer norm / layer scale,
several outputs) runs always.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import convcalc
from convcalc.errors import ModelImportError
from convcalc.torch_import import UnusedParametersWarning, from_torch, import_model

CLASSIFICATION = [
    "alexnet",
    *(f"convnext_{s}" for s in ("tiny", "small", "base", "large")),
    *(f"densenet{n}" for n in (121, 161, 169, 201)),
    *(f"efficientnet_b{i}" for i in range(8)),
    *(f"efficientnet_v2_{s}" for s in ("s", "m", "l")),
    "googlenet",
    "inception_v3",
    *(f"mnasnet{w}" for w in ("0_5", "0_75", "1_0", "1_3")),
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    *(f"regnet_x_{s}" for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")),
    *(f"regnet_y_{s}" for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")),
    "regnet_y_128gf",
    *(f"resnet{n}" for n in (18, 34, 50, 101, 152)),
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    *(f"shufflenet_v2_x{w}" for w in ("0_5", "1_0", "1_5", "2_0")),
    "squeezenet1_0",
    "squeezenet1_1",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "wide_resnet50_2",
    "wide_resnet101_2",
]
SEGMENTATION = [
    "fcn_resnet50",
    "deeplabv3_resnet50",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
]
TRANSFORMERS = ["vit_b_16", "swin_t", "swin_v2_t", "maxvit_t"]

# every construct once: residuals, shared concatenations, SE gates, split and shuffle,
# permute / layer norm / layer scale, several outputs
SUBSET = [
    "resnet18",
    "densenet121",
    "efficientnet_b0",
    "mobilenet_v3_small",
    "shufflenet_v2_x0_5",
    "convnext_tiny",
    "lraspp_mobilenet_v3_large",
]

# Submodules the forward never calls in eval mode, with their parameters.
UNUSED = {
    "inception_v3": {"AuxLogits": 3_326_696},
    "googlenet": {"aux1": 3_188_968, "aux2": 3_191_016},
}


@contextlib.contextmanager
def _regnet_widths_on_cpu():
    """RegNet computes its block widths with tensors and reads them back (.tolist()),
    which the meta device cannot: that arithmetic runs on the CPU, the model on meta."""
    from torchvision.models import regnet

    original = regnet.BlockParams.from_init_params

    def on_cpu(*args, **kwargs):
        with torch.device("cpu"):
            return original(*args, **kwargs)

    regnet.BlockParams.from_init_params = on_cpu
    try:
        yield
    finally:
        regnet.BlockParams.from_init_params = original


def _build(models, name: str):
    builder = models.get_model_builder(name)
    weights = models.get_model_weights(name).DEFAULT
    kwargs = {}
    if name in SEGMENTATION:
        # the published weights have the auxiliary classifier (LR-ASPP has none)
        kwargs = {"weights_backbone": None}
        if name != "lraspp_mobilenet_v3_large":
            kwargs["aux_loss"] = True
    elif name in ("googlenet", "inception_v3"):
        kwargs = {"aux_logits": True, "init_weights": False}
    with torch.device("meta"), _regnet_widths_on_cpu():
        model = builder(weights=None, **kwargs).eval()
    size = weights.transforms().crop_size if hasattr(weights.transforms(), "crop_size") else None
    size = size[0] if isinstance(size, (list, tuple)) else size
    if name in SEGMENTATION:
        size = 520
    return model, weights, int(size)


def _torch_counts(model, shape):
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        out = model(torch.zeros(1, *shape, device="meta"))
    outputs = list(out.values()) if isinstance(out, dict) else [out]
    return counter.get_total_flops() // 2, [tuple(o.shape) for o in outputs]


def check(models, name: str) -> None:
    model, weights, size = _build(models, name)
    shape = (3, size, size)
    imported = import_model(model, shape)
    report = convcalc.analyze(imported.network)
    published = weights.meta["num_params"]
    unused = UNUSED.get(name, {})
    assert imported.unused == unused
    # torchvision publishes GoogLeNet's count without its auxiliary classifiers
    counted = {} if name == "googlenet" else unused
    assert report.totals.params == published - sum(counted.values())
    macs, outputs = _torch_counts(model, shape)
    assert report.totals.macs == macs
    got = list(report.outputs.values()) if len(report.outputs) > 1 else [report.output_shape]
    assert [tuple(s) for s in got] == outputs
    # the published GFLOPS (MACs, in fact) are rounded to three decimals
    assert round(report.totals.macs / 1e9, 3) == pytest.approx(weights.meta["_ops"], abs=1e-3)


@pytest.mark.parametrize("name", SUBSET)
def test_zoo_subset(torchvision_models, name):
    check(torchvision_models, name)


@pytest.mark.zoo
@pytest.mark.parametrize("name", [n for n in CLASSIFICATION + SEGMENTATION if n not in SUBSET])
def test_zoo(torchvision_models, name):
    check(torchvision_models, name)


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[] if n == "vit_b_16" else pytest.mark.zoo) for n in TRANSFORMERS],
)
def test_transformers_are_refused_in_one_sentence_or_imported_exactly(torchvision_models, name):
    model, weights, size = _build(torchvision_models, name)
    try:
        network = from_torch(model, (3, size, size))
    except ModelImportError as error:
        message = str(error)
        assert len(message.splitlines()) == 1 and "cannot be expressed in a spec" in message
        assert ".py:" in message.split(": ")[0]  # the model's file and line
        return
    report = convcalc.analyze(network)
    assert report.totals.params == weights.meta["num_params"]
    assert report.totals.macs == _torch_counts(model, (3, size, size))[0]


def test_unused_submodules_are_reported_with_their_count(torchvision_models):
    model, _, _ = _build(torchvision_models, "googlenet")
    with pytest.warns(UnusedParametersWarning, match=r"aux1 \(\d[\d,]*\), aux2"):
        from_torch(model, (3, 64, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_torch(model.conv1, (3, 32, 32))  # everything used: no warning
