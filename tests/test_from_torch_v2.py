"""from_torch on model code as people write it: Ultralytics' C2f (``list(x.chunk(2, 1))``,
a loop appending to it, one ``torch.cat``), a layer-scale parameter used directly, a
squeeze-excitation gate, several outputs, frozen layers and the meta device."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import convcalc
from convcalc.errors import ModelImportError
from convcalc.torch_import import from_torch


def torch_numbers(model: nn.Module, shape: tuple[int, ...]):
    counter = FlopCounterMode(display=False)
    model.eval()
    with counter, torch.no_grad():
        output = model(torch.zeros(1, *shape))
    outputs = output if isinstance(output, (tuple, list)) else (output,)
    return (
        sum(p.numel() for p in model.parameters()),
        counter.get_total_flops() // 2,
        [tuple(o.shape) for o in outputs],
    )


class Conv(nn.Module):
    """Ultralytics' Conv: conv, batch norm, SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1 = Conv(c, c, 3)
        self.cv2 = Conv(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    """Ultralytics' C2f, as written there."""

    def __init__(self, c1: int, c2: int, n: int = 2, shortcut: bool = True) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def test_ultralytics_c2f_imports_as_written():
    model = C2f(16, 32, n=2)
    spec = from_torch(model, (16, 20, 20))
    report = convcalc.analyze(spec)
    params, macs, outputs = torch_numbers(model, (16, 20, 20))
    assert (report.totals.params, report.totals.macs) == (params, macs)
    assert [report.output_shape] == outputs
    layers = {layer.name: layer for layer in spec.layers}
    (chunk,) = [layer for layer in spec.layers if layer.type == "chunk"]
    assert chunk.chunks == 2 and chunk.dim == 1
    (cat,) = [layer for layer in spec.layers if layer.type == "cat"]
    assert cat.from_ == [f"{chunk.name}.0", f"{chunk.name}.1", "m.0.add", "m.1.add"]
    assert layers["m.0.add"].from_ == [f"{chunk.name}.1", "m.0.cv2.act"]
    assert layers["m.0.cv1.conv"].from_ == f"{chunk.name}.1"  # y[-1]


class LayerScaleBlock(nn.Module):
    """``x + self.gamma * y``: a layer-scale parameter used directly."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.gamma = nn.Parameter(torch.full((c, 1, 1), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.conv(x)


def test_a_layer_scale_parameter_is_a_layer():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), LayerScaleBlock(8), nn.ReLU())
    spec = from_torch(model, (3, 12, 12))
    report = convcalc.analyze(spec)
    params, macs, outputs = torch_numbers(model, (3, 12, 12))
    assert (report.totals.params, report.totals.macs, [report.output_shape]) == (
        params,
        macs,
        outputs,
    )
    types = [(layer.type, layer.name) for layer in spec.layers]
    assert types == [
        ("conv2d", "0"),
        ("conv2d", "1.conv"),
        ("layerscale", "1.mul"),
        ("add", "1.add"),
        ("relu", "2"),
    ]


def test_a_parameter_used_otherwise_is_refused_naming_the_line():
    class Biased(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.shift = nn.Parameter(torch.zeros(4, 5, 5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) * self.shift

    with pytest.raises(ModelImportError, match=r"test_from_torch_v2\.py:\d+: mul \(.*shift"):
        from_torch(Biased(), (3, 7, 7))


class SEAndTwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Conv2d(8, 2, 1)
        self.fc2 = nn.Conv2d(2, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        x = x * gate
        return x, self.head(x)


def test_squeeze_excitation_gate_and_two_outputs():
    model = SEAndTwoOutputs()
    spec = from_torch(model, (3, 8, 8))
    report = convcalc.analyze(spec)
    params, macs, outputs = torch_numbers(model, (3, 8, 8))
    assert (report.totals.params, report.totals.macs) == (params, macs)
    assert [tuple(s) for s in report.outputs.values()] == outputs
    assert spec.outputs == ["mul", "head"]
    (mul,) = [layer for layer in spec.layers if layer.type == "mul"]
    assert mul.from_ == ["stem", "sigmoid"]


def test_frozen_layers_and_the_meta_device():
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(6, 5))
    for p in model[0].parameters():
        p.requires_grad_(False)
    spec = from_torch(model, (3, 8, 8))
    assert [layer.trainable for layer in spec.layers] == [False, True, True]
    report = convcalc.analyze(spec)
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert report.totals.trainable_params == report.totals.params - 8 * 3 * 9 - 8
