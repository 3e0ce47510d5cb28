"""What the importers (``torch_import`` from torch.export, ``onnx_import`` from ONNX
files) share: writing another framework's graph as spec layers."""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["count", "first_line", "plain", "reshape_layer", "snake"]


def reshape_layer(
    before: tuple[int, ...], after: tuple[int, ...], first: int = 0
) -> dict[str, Any] | None:
    """The ``flatten`` or ``unflatten`` layer (as spec data) that turns ``before`` into
    ``after`` without touching dimensions below ``first``; None when neither does (or
    nothing changes). The importers write reshapes with it.

    >>> reshape_layer((1, 64, 7, 7), (1, 3136))
    {'type': 'flatten', 'start_dim': 1, 'end_dim': -1}
    >>> reshape_layer((1, 768), (1, 768, 1, 1))
    {'type': 'unflatten', 'dim': 1, 'unflattened_size': [768, 1, 1]}
    """
    if before == after:
        return None
    merged = len(before) - len(after)
    if merged > 0:
        for start in range(first, len(after)):
            end = start + merged
            if (
                before[:start] == after[:start]
                and math.prod(before[start : end + 1]) == after[start]
                and before[end + 1 :] == after[start + 1 :]
            ):
                return {"type": "flatten", "start_dim": start, "end_dim": end - len(before)}
    elif merged < 0:
        k = 1 - merged
        for dim in range(first, len(before)):
            sizes = after[dim : dim + k]
            if (
                before[:dim] == after[:dim]
                and math.prod(sizes) == before[dim]
                and before[dim + 1 :] == after[dim + k :]
            ):
                return {"type": "unflatten", "dim": dim, "unflattened_size": list(sizes)}
    return None


def plain(value: Any) -> Any:
    """Tuples as lists, a list of equal values as one value, numpy scalars as numbers.

    >>> plain((3, 3)), plain([1, 2]), plain(((2, 2),))
    (3, [1, 2], 2)
    """
    if isinstance(value, (tuple, list)):
        items = [plain(v) for v in value]
        return items[0] if items and all(v == items[0] for v in items) else items
    if hasattr(value, "item"):
        return value.item()
    return value


def count(n: int, word: str) -> str:
    """``n word`` or ``n words``.

    >>> count(1, "layer"), count(3, "layer")
    ('1 layer', '3 layers')
    """
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def snake(name: str) -> str:
    """A CamelCase name in snake_case.

    >>> snake("BatchNormalization")
    'batch_normalization'
    """
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name if it has none)."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
