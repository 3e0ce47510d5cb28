"""Integer arithmetic in block arguments (``out_channels: width * expand``), evaluated
safely: the text is parsed with ``ast`` and only numbers, the block's parameter names,
``+ - * / // % **``, parentheses and ``min``/``max`` are allowed. Never ``eval``.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ExpressionError", "evaluate", "is_expression"]


class ExpressionError(ValueError):
    """An expression that cannot be evaluated: the message says why."""


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {"min": min, "max": max}
_MAX_DIGITS = 30  # a power that would produce a larger number is refused
_MAX_VALUE = 2**63 - 1  # nor may any step give a number larger than this (int64's largest)
_MAX_LENGTH = 200  # characters: a longer string is never an expression


def _parse(text: str) -> ast.expr | None:
    if len(text) > _MAX_LENGTH:  # nor can it nest deep enough to exhaust the stack
        return None
    try:
        return ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def is_expression(text: str, names: Mapping[str, Any]) -> bool:
    """Whether a string field value is arithmetic over these names (rather than a plain
    string such as ``same`` or ``bilinear``): it parses as an expression and either is
    one of the names or uses an operator or a call.

    >>> is_expression("width * 4", {"width": 8}), is_expression("same", {"width": 8})
    (True, False)
    """
    tree = _parse(text)
    if tree is None:
        return False
    if isinstance(tree, ast.Name):
        return tree.id in names
    return isinstance(tree, (ast.BinOp, ast.UnaryOp, ast.Call))


def evaluate(text: str, names: Mapping[str, Any]) -> Any:
    """The value of ``text`` with ``names`` bound; integers stay integers.

    >>> evaluate("width * expand // 2", {"width": 64, "expand": 4})
    128
    >>> evaluate("(c + 7) // 8 * 8", {"c": 30})
    32
    >>> evaluate("c / 3", {"c": 30})
    10
    """
    tree = _parse(text)
    if tree is None:
        raise ExpressionError(f"{text!r} is not an arithmetic expression")
    return _value(tree, text, names)


def _value(node: ast.expr, text: str, names: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in names:
            known = ", ".join(names) or "none"
            raise ExpressionError(
                f"unknown name {node.id!r} in {text!r}; the block's parameters are {known}"
            )
        return names[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _number(_value(node.operand, text, names), text)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        left = _number(_value(node.left, text, names), text)
        right = _number(_value(node.right, text, names), text)
        if isinstance(node.op, ast.Div):
            if right == 0:
                raise ExpressionError(f"{text!r} divides by zero")
            if isinstance(left, int) and isinstance(right, int):
                if left % right:
                    raise ExpressionError(
                        f"{text!r} is not an integer: {left} / {right} = {left / right:g} "
                        f"(use // to round down)"
                    )
                return left // right
            return _bounded(left / right, text)
        function = _BINARY.get(type(node.op))
        if function is None:
            raise ExpressionError(f"{text!r} uses an operator that is not allowed")
        if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and right == 0:
            raise ExpressionError(f"{text!r} divides by zero")
        if isinstance(node.op, ast.Pow) and (
            abs(right) > 64 or (abs(left) > 1 and abs(right) * len(str(abs(left))) > _MAX_DIGITS)
        ):
            raise ExpressionError(f"{text!r} is too large")
        try:
            return _bounded(function(left, right), text)
        except (OverflowError, ZeroDivisionError):  # 1e300 ** 2, 0 ** -1
            raise ExpressionError(f"{text!r} has no finite value") from None
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
        and node.args
    ):
        values = [_number(_value(arg, text, names), text) for arg in node.args]
        return _FUNCTIONS[node.func.id](values)
    raise ExpressionError(
        f"{text!r} is not allowed: only numbers, parameter names, + - * / // % **, "
        f"parentheses, min and max"
    )


def _bounded(value: int | float, text: str) -> int | float:
    if not abs(value) <= _MAX_VALUE:  # also NaN and infinity
        raise ExpressionError(f"{text!r} is too large")
    return value


def _number(value: Any, text: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExpressionError(f"{text!r} does arithmetic on {value!r}, which is not a number")
    return value
