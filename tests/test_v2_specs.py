"""The spec v2 example specs held to torch: five torchvision models (parameters, MACs from
FlopCounterMode, the published GFLOPS, the output shape), a YOLO-style detector against the
same network as a plain ``torch.nn.Module``, the flat U-Net against the nested one, and
``convcalc.verify`` on every one of them."""

from __future__ import annotations

import pytest

import convcalc
import convcalc.verify
from convcalc.loader import load_spec
from convcalc.spec import Network

from .conftest import SPECS_DIR

torch = pytest.importorskip("torch")
nn = torch.nn

# spec file stem -> torchvision model name
TORCHVISION = {
    "efficientnet_b0": "efficientnet_b0",
    "mobilenet_v3_large": "mobilenet_v3_large",
    "convnext_tiny": "convnext_tiny",
    "shufflenet_v2": "shufflenet_v2_x1_0",
    "densenet121": "densenet121",
}
V2_SPECS = [*TORCHVISION, "yolo_neck", "unet_flat"]


def _count(module, *inputs):
    """Parameters, MACs (FlopCounterMode's FLOPs / 2) and the outputs at batch 1."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        out = module(*inputs)
    params = sum(p.numel() for p in module.parameters())
    return params, counter.get_total_flops() // 2, out


@pytest.mark.parametrize("stem", sorted(TORCHVISION))
def test_equals_torchvision(stem, torchvision_models):
    name = TORCHVISION[stem]
    report = convcalc.analyze(SPECS_DIR / f"{stem}.yaml")
    meta = torchvision_models.get_model_weights(name).DEFAULT.meta
    with torch.device("meta"):
        model = torchvision_models.get_model(name).eval()
    params, macs, out = _count(model, torch.zeros(1, 3, 224, 224, device="meta"))
    assert report.totals.params == meta["num_params"] == params
    assert report.totals.macs == macs
    # the published "GFLOPS" count multiply-accumulates, to three decimals
    assert round(report.totals.macs / 1e9, 3) == meta["_ops"]
    assert report.output_shape == tuple(out.shape) == (1, 1000)


class _Conv(nn.Sequential):
    def __init__(self, cin: int, out: int, k: int = 1, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, out, k, stride, k // 2, bias=False), nn.BatchNorm2d(out), nn.SiLU()
        )


class _C2f(nn.Module):
    def __init__(self, cin: int, c: int, shortcut: bool) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.cv1 = _Conv(cin, c)
        self.m = nn.Sequential(_Conv(c // 2, c // 2, 3), _Conv(c // 2, c // 2, 3))
        self.cv2 = _Conv(3 * (c // 2), c)

    def forward(self, x):
        a, b = self.cv1(x).chunk(2, 1)
        m = self.m(b)
        return self.cv2(torch.cat([a, b, m + b if self.shortcut else m], 1))


class _SPPF(nn.Module):
    def __init__(self, cin: int, c: int) -> None:
        super().__init__()
        self.cv1 = _Conv(cin, c // 2)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.cv2 = _Conv(4 * (c // 2), c)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        y3 = self.pool(y2)
        return self.cv2(torch.cat([x, y1, y2, y3], 1))


class YoloNeck(nn.Module):
    """specs/yolo_neck.yaml as plain torch."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_Conv(3, 16, 3, 2), _Conv(16, 32, 3, 2), _C2f(32, 32, True))
        self.stage3 = nn.Sequential(_Conv(32, 64, 3, 2), _C2f(64, 64, True))
        self.stage4 = nn.Sequential(_Conv(64, 128, 3, 2), _C2f(128, 128, True))
        self.stage5 = nn.Sequential(_Conv(128, 256, 3, 2), _C2f(256, 256, True), _SPPF(256, 256))
        self.up = nn.Upsample(scale_factor=2)
        self.h4 = _C2f(256 + 128, 128, False)
        self.p3 = _C2f(128 + 64, 64, False)
        self.down3 = _Conv(64, 64, 3, 2)
        self.p4 = _C2f(64 + 128, 128, False)
        self.down4 = _Conv(128, 128, 3, 2)
        self.p5 = _C2f(128 + 256, 256, False)

    def forward(self, x):
        c3 = self.stage3(self.stem(x))
        c4 = self.stage4(c3)
        c5 = self.stage5(c4)
        h4 = self.h4(torch.cat([self.up(c5), c4], 1))
        p3 = self.p3(torch.cat([self.up(h4), c3], 1))
        p4 = self.p4(torch.cat([self.down3(p3), h4], 1))
        p5 = self.p5(torch.cat([self.down4(p4), c5], 1))
        return p3, p4, p5


def test_yolo_neck_equals_its_torch_module():
    report = convcalc.analyze(SPECS_DIR / "yolo_neck.yaml")
    params, macs, outs = _count(YoloNeck().eval(), torch.zeros(1, 3, 320, 320))
    assert (report.totals.params, report.totals.macs) == (params, macs) == (2_156_752, 574_668_800)
    assert report.outputs == {name: tuple(out.shape) for name, out in zip(("p3", "p4", "p5"), outs)}


def test_flat_unet_equals_the_nested_one():
    flat = convcalc.analyze(SPECS_DIR / "unet_flat.yaml")
    nested = convcalc.analyze(SPECS_DIR / "unet_small.yaml")
    path = "largest_activation_path"  # the same cat, at another path
    totals = {k: v for k, v in flat.totals.to_dict().items() if k != path}
    assert totals == {k: v for k, v in nested.totals.to_dict().items() if k != path}
    assert (totals["params"], totals["macs"]) == (237_186, 77_791_232)
    assert flat.output_shape == nested.output_shape == (1, 2, 64, 64)
    assert flat.row("skip1").output_shape == (1, 32, 64, 64)
    assert flat.row("skip3").output_shape == (1, 128, 16, 16)


@pytest.mark.parametrize("stem", V2_SPECS)
def test_verify(stem):
    # every row's shape, params, buffers and MACs, and the last exact receptive field
    report = convcalc.verify.verify(SPECS_DIR / f"{stem}.yaml")
    assert report.ok, report.first_difference()
    assert any(layer.check("receptive field") for layer in report.layers)


def test_block_specs_round_trip():
    """A Network with parameterised blocks survives model_dump (verify narrows specs so)."""
    network = load_spec(SPECS_DIR / "efficientnet_b0.yaml")
    again = Network.model_validate(network.model_dump(exclude_unset=True, by_alias=True))
    assert convcalc.analyze(again).totals == convcalc.analyze(network).totals
