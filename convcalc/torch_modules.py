"""torch modules for the layer families torch.nn lacks (``Leaf.custom_module``).

Imported only by ``torch_bridge`` when such a layer is built. Each class is
self-contained (it uses only ``torch`` and ``nn``): ``convcalc export --to pytorch``
copies its source into the exported file, which imports nothing but torch.
Constructor arguments are the spec's fields, as for torch.nn classes.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DropPath", "LayerNorm2d", "LayerScale", "Mean", "Permute", "StochasticDepth"]


class Permute(nn.Module):
    """``torch.permute`` as a layer: ``order`` is torch's ``dims``."""

    def __init__(self, order: list[int]) -> None:
        super().__init__()
        self.order = list(order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.order)


class Mean(nn.Module):
    """``torch.mean`` over ``dim`` as a layer."""

    def __init__(self, dim: int | list[int], keepdim: bool = False) -> None:
        super().__init__()
        self.dim = dim if isinstance(dim, int) else list(dim)
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mean(x, dim=self.dim, keepdim=self.keepdim)


class LayerNorm2d(nn.Module):
    """Layer norm over the channels of [N, C, H, W] at each position (ConvNeXt's)."""

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-6,
        elementwise_affine: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
        else:
            self.register_parameter("weight", None)
        if elementwise_affine and bias:
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, (self.num_channels,), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class LayerScale(nn.Module):
    """A learnable scale per channel of [N, C, ...]: x · gamma (ConvNeXt's layer scale)."""

    def __init__(self, num_channels: int, init_value: float = 1e-6) -> None:
        super().__init__()
        self.init_value = init_value
        self.gamma = nn.Parameter(torch.full((num_channels,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(-1, *[1] * (x.dim() - 2))


class StochasticDepth(nn.Module):
    """Drops whole samples ("row") or the whole batch ("batch") with probability p in
    training, scaling the rest by 1 / (1 − p); the identity at inference (as
    torchvision.ops.StochasticDepth)."""

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0 or mode not in ("row", "batch"):
            raise ValueError(f"p must be in [0, 1] and mode 'row' or 'batch', got {p}, {mode}")
        self.p = p
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        size = [x.shape[0]] + [1] * (x.ndim - 1) if self.mode == "row" else [1] * x.ndim
        noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(1.0 - self.p)
        if self.p < 1.0:
            noise.div_(1.0 - self.p)
        return x * noise


class DropPath(StochasticDepth):
    """StochasticDepth under its other name (timm's)."""


class Add(nn.Module):
    """``a + b + …`` (spec v2 ``add``), with torch's broadcasting."""

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = inputs[0]
        for x in inputs[1:]:
            out = out + x
        return out


class Mul(nn.Module):
    """``a * b * …`` (spec v2 ``mul``), with torch's broadcasting: a gate is
    ``x * sigmoid(fc(pool(x)))``."""

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = inputs[0]
        for x in inputs[1:]:
            out = out * x
        return out


class Cat(nn.Module):
    """``torch.cat`` of the inputs along ``dim`` (spec v2 ``cat``)."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.cat(inputs, dim=self.dim)


class Split(nn.Module):
    """``torch.split`` (spec v2 ``split``): a tuple of pieces."""

    def __init__(self, split_size_or_sections: int | list[int], dim: int = 1) -> None:
        super().__init__()
        self.split_size_or_sections = split_size_or_sections
        self.dim = dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(x, self.split_size_or_sections, dim=self.dim)


class Chunk(nn.Module):
    """``torch.chunk`` (spec v2 ``chunk``): a tuple of pieces."""

    def __init__(self, chunks: int, dim: int = 1) -> None:
        super().__init__()
        self.chunks = chunks
        self.dim = dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.chunk(x, self.chunks, dim=self.dim)
