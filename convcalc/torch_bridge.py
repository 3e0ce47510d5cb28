"""Spec layers as real ``torch.nn`` modules. The only module that imports torch.

Spec type names are ``torch.nn`` class names and spec fields are constructor
arguments, so a leaf is built generically: the class by name, the fields as
keyword arguments, plus the sizes the calculator inferred (``in_channels`` …).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from convcalc.errors import ConvCalcError
from convcalc.layers import Leaf

__all__ = ["TorchNotInstalledError", "import_torch", "torch_arguments", "torch_layer"]

# Fields that are convcalc's own, not constructor arguments.
_SPEC_ONLY = {"type", "name", "trainable", "line"}

# Arguments the calculator infers from the incoming shape when a spec leaves them out.
_INFERRED: dict[str, Callable[[tuple[int, ...]], Any]] = {
    "in_channels": lambda shape: shape[1],
    "num_features": lambda shape: shape[1],
    "num_channels": lambda shape: shape[1],
    "in_features": lambda shape: shape[-1],
    "normalized_shape": lambda shape: list(shape[1:]),
}


class TorchNotInstalledError(ConvCalcError):
    """A command needs PyTorch and it is not installed."""


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
    """Constructor keyword arguments for ``layer`` receiving ``input_shape``."""
    arguments = {
        field: getattr(layer, field)
        for field in type(layer).model_fields
        if field not in _SPEC_ONLY and field in layer.model_fields_set | _required(layer)
    }
    for field, infer in _INFERRED.items():
        if field in type(layer).model_fields and arguments.get(field) is None:
            arguments[field] = infer(input_shape)
    return arguments


def _required(layer: Leaf) -> set[str]:
    return {name for name, info in type(layer).model_fields.items() if info.is_required()}


def torch_layer(layer: Leaf, input_shape: tuple[int, ...]) -> Any:
    """The ``torch.nn`` module for one leaf layer."""
    torch = import_torch()
    cls = getattr(torch.nn, layer.torch_name, None)
    if cls is None:
        raise ConvCalcError(
            f"torch {torch.__version__} has no torch.nn.{layer.torch_name}; upgrade torch"
        )
    module = cls(**torch_arguments(layer, input_shape))  # type: ignore[no-untyped-call,unused-ignore]
    if not layer.trainable:
        module.requires_grad_(False)
    return module
