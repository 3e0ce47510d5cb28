"""Specs as real ``torch.nn`` modules. The only module that imports torch, and only
when one of its functions is called.

Spec type names are ``torch.nn`` class names and spec fields are constructor
arguments, so a leaf is built generically: the class by name, the fields as keyword
arguments, plus the sizes the calculator inferred (``in_channels`` …). Submodule
names are the report's paths: ``layers.5.body.0`` is ``model.layers[5].body[0]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

from convcalc.analysis import analyze
from convcalc.errors import ConvCalcError, Problem, ShapeError, TorchNotInstalledError
from convcalc.layers import Leaf
from convcalc.loader import load_spec, with_overrides
from convcalc.spec import Block, Concat, LayerSpec, Network, Repeat, Residual, Sequential

__all__ = [
    "INFERRED_FIELDS",
    "SPEC_ONLY_FIELDS",
    "build_module",
    "import_torch",
    "torch_arguments",
    "torch_layer",
]

# Fields that are convcalc's own, not constructor arguments.
SPEC_ONLY_FIELDS = {"type", "name", "trainable", "line", "from_"}

# Arguments the calculator infers from the incoming shape when a spec leaves them out.
INFERRED_FIELDS: dict[str, Callable[[tuple[int, ...]], Any]] = {
    "in_channels": lambda shape: shape[1],
    "num_features": lambda shape: shape[1],
    "num_channels": lambda shape: shape[1],
    "in_features": lambda shape: shape[-1],
    "normalized_shape": lambda shape: list(shape[1:]),
}


def import_torch() -> Any:
    """``torch``, or a clear error saying how to install it."""
    try:
        import torch
    except ImportError:
        raise TorchNotInstalledError(
            "this needs PyTorch, which is not installed: pip install 'convcalc[torch]'"
        ) from None
    return torch


def torch_arguments(layer: Leaf, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Constructor keyword arguments for ``layer`` receiving ``input_shape``.

    Only the fields the spec sets are passed (torch's defaults are the spec's), plus
    the inferred sizes.
    """
    fields = type(layer).model_fields
    given = layer.model_fields_set | {n for n, info in fields.items() if info.is_required()}
    arguments = {
        field: getattr(layer, field)
        for field in fields
        if field not in SPEC_ONLY_FIELDS and field in given
    }
    for field, infer in INFERRED_FIELDS.items():
        if field in fields and arguments.get(field) is None:
            arguments[field] = infer(input_shape)
    return arguments


def torch_layer(layer: Leaf, input_shape: tuple[int, ...]) -> Any:
    """The ``torch.nn`` module for one leaf layer."""
    torch = import_torch()
    if layer.custom_module:
        from convcalc import torch_modules

        cls = getattr(torch_modules, layer.torch_name)
    else:
        cls = getattr(torch.nn, layer.torch_name, None)
    if cls is None:
        raise ConvCalcError(
            f"torch {torch.__version__} has no torch.nn.{layer.torch_name}; upgrade torch"
        )
    module = cls(**torch_arguments(layer, input_shape))
    if not layer.trainable:
        module.requires_grad_(False)
    return module


@cache
def _module_classes() -> dict[str, type]:
    """The small container modules, defined once torch is imported."""
    torch = import_torch()
    nn = torch.nn

    class SpecNetwork(nn.Module):  # type: ignore[misc,name-defined]
        """A convcalc spec as a torch module: ``self.layers`` holds the layers in order."""

        def __init__(self, layers: Any, name: str) -> None:
            super().__init__()
            self.layers = layers
            self.spec_name = name

        def forward(self, x: Any) -> Any:
            return self.layers(x)

    class Residual(nn.Module):  # type: ignore[misc,name-defined]
        """``body(x) + shortcut(x)``; an empty shortcut is the identity."""

        def __init__(self, body: Any, shortcut: Any) -> None:
            super().__init__()
            self.body = body
            self.shortcut = shortcut

        def forward(self, x: Any) -> Any:
            return self.body(x) + self.shortcut(x)

    class Concat(nn.Module):  # type: ignore[misc,name-defined]
        """Branches on the same input, concatenated along channels (empty = identity)."""

        def __init__(self, branches: Any) -> None:
            super().__init__()
            self.branches = branches

        def forward(self, x: Any) -> Any:
            return torch.cat([branch(x) for branch in self.branches], dim=1)

    return {"SpecNetwork": SpecNetwork, "Residual": Residual, "Concat": Concat}


def build_module(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Network,
    *,
    input: Sequence[int] | None = None,
    batch_size: int | None = None,
) -> Any:
    """The spec as a ``torch.nn.Module`` whose submodule names are the report's paths.

    Build it under ``with torch.device("meta"):`` to allocate no memory.
    """
    torch = import_torch()
    network = load_spec(spec)
    if input is not None or batch_size is not None:
        network = with_overrides(network, input=input, batch_size=batch_size)
    report = analyze(network)  # validates the shapes and gives every layer's input shape
    shapes = {row.path: row.input_shape for row in report.rows}
    classes = _module_classes()
    builder = _Builder(torch, classes, shapes, network)
    layers = builder.sequence(network.layers, "layers")
    return classes["SpecNetwork"](layers, network.name)


class _Builder:
    def __init__(
        self,
        torch: Any,
        classes: dict[str, type],
        shapes: dict[str, tuple[int, ...]],
        network: Network,
    ) -> None:
        self.nn = torch.nn
        self.classes = classes
        self.shapes = shapes
        self.network = network

    def sequence(self, layers: Sequence[LayerSpec], prefix: str) -> Any:
        return self.nn.Sequential(
            *(self.layer(layer, f"{prefix}.{index}") for index, layer in enumerate(layers))
        )

    def layer(self, layer: LayerSpec, path: str) -> Any:
        if isinstance(layer, Leaf):
            try:
                return torch_layer(layer, self.shapes[path])
            except ConvCalcError as error:
                raise ShapeError(self.problem(str(error), layer, path)) from None
            except (TypeError, ValueError, RuntimeError) as error:
                message = f"torch cannot build {layer.torch_name}: {error}"
                raise ShapeError(self.problem(message, layer, path)) from None
        module = self.block(layer, path)
        if not layer.trainable:
            module.requires_grad_(False)
        return module

    def block(self, block: Block, path: str) -> Any:
        if isinstance(block, Sequential):
            return self.sequence(block.layers, path)
        if isinstance(block, Repeat):
            if len(block.layers) == 1:
                return self.sequence(block.layers * block.times, path)
            return self.nn.Sequential(
                *(self.sequence(block.layers, f"{path}.{copy}") for copy in range(block.times))
            )
        if isinstance(block, Residual):
            return self.classes["Residual"](
                self.sequence(block.layers, f"{path}.body"),
                self.sequence(block.shortcut, f"{path}.shortcut"),
            )
        if isinstance(block, Concat):
            return self.classes["Concat"](
                self.nn.ModuleList(
                    self.sequence(branch, f"{path}.branches.{i}")
                    for i, branch in enumerate(block.branches)
                )
            )
        raise TypeError(f"unknown block {type(block).__name__}")

    def problem(self, message: str, layer: LayerSpec, path: str) -> Problem:
        return Problem(message, self.network.source, layer.line, path, layer.name)
