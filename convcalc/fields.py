"""Field types shared by the layer models: one validator and one JSON schema each.

Each validator raises ``ValueError`` with the bad value in the message; the loader
prefixes the file, line, layer path and field name.
"""

from __future__ import annotations

import contextlib
import math
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

from convcalc.errors import shown

__all__ = [
    "Bool",
    "Float",
    "FloatOrFloats",
    "Int",
    "NonNegativeIntOrInts",
    "OutputSize",
    "Padding",
    "PositiveInt",
    "PositiveIntOrInts",
    "Probability",
    "SignedIntOrInts",
    "per_dim",
]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: object) -> int:
    if not _is_int(value):
        raise ValueError(f"must be an integer, got {shown(value)}")
    return value  # type: ignore[return-value]


def _positive_int(value: object) -> int:
    if not _is_int(value) or value < 1:  # type: ignore[operator]
        raise ValueError(f"must be a positive integer, got {shown(value)}")
    return value  # type: ignore[return-value]


def _ints(minimum: int | None, what: str) -> Any:
    def validate(value: object) -> int | tuple[int, ...]:
        items = value if isinstance(value, (list, tuple)) else None
        if items is None:
            candidates: list[object] = [value]
        elif not items:
            raise ValueError(f"must be {what} or a list of them, got an empty list")
        else:
            candidates = list(items)
        for item in candidates:
            if not _is_int(item) or (minimum is not None and item < minimum):  # type: ignore[operator]
                bad = value if items is not None else item
                raise ValueError(f"must be {what} or a list of them, got {shown(bad)}")
        return tuple(items) if items is not None else value  # type: ignore[return-value]

    return validate


def _int_schema(minimum: int | None) -> dict[str, Any]:
    return {"type": "integer"} if minimum is None else {"type": "integer", "minimum": minimum}


def _ints_schema(minimum: int | None) -> dict[str, Any]:
    one = _int_schema(minimum)
    return {"anyOf": [one, {"type": "array", "items": one, "minItems": 1, "maxItems": 6}]}


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {shown(value)}")
    return value


def _float(value: object) -> float:
    # PyYAML reads 1e-5 (no dot) as a string; accept what float() accepts.
    number = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        with contextlib.suppress(ValueError, OverflowError):  # an int past 1e308 overflows
            number = float(value)
    if number is None:
        raise ValueError(f"must be a number, got {shown(value)}")
    if not math.isfinite(number):  # .inf or .nan: no size or rate can use it
        raise ValueError(f"must be a finite number, got {shown(value)}")
    return number


def _probability(value: object) -> float:
    number = _float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"must be a probability between 0 and 1, got {shown(value)}")
    return number


def _positive_floats(value: object) -> float | tuple[float, ...]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        numbers = [_float(item) for item in items]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) <= 0:
        raise ValueError(f"must be a positive number or a list of them, got {shown(value)}")
    return tuple(numbers) if isinstance(value, (list, tuple)) else numbers[0]


def _output_size(value: object) -> int | tuple[int | None, ...]:
    if isinstance(value, (list, tuple)) and value:
        for item in value:
            if item is not None and (not _is_int(item) or item < 1):
                break
        else:
            return tuple(value)
    elif _is_int(value) and value >= 1:  # type: ignore[operator]
        return value  # type: ignore[return-value]
    raise ValueError(
        f"must be a positive integer or a list of positive integers and nulls "
        f"(null keeps that input size), got {shown(value)}"
    )


def _padding(value: object) -> int | tuple[int, ...] | str:
    if isinstance(value, str):
        if value not in ("same", "valid"):
            raise ValueError(
                f"must be a non-negative integer, a list of them, 'same' or 'valid', "
                f"got {shown(value)}"
            )
        return value
    return _ints(0, "a non-negative integer")(value)  # type: ignore[no-any-return]


PositiveInt = Annotated[int, PlainValidator(_positive_int), WithJsonSchema(_int_schema(1))]
Int = Annotated[int, PlainValidator(_int), WithJsonSchema(_int_schema(None))]
Bool = Annotated[bool, PlainValidator(_bool), WithJsonSchema({"type": "boolean"})]
Float = Annotated[float, PlainValidator(_float), WithJsonSchema({"type": "number"})]
Probability = Annotated[
    float,
    PlainValidator(_probability),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1}),
]
# Written as JSON, a tuple is a list. Without this serializer pydantic writes the same
# list but warns that a tuple in an ``int | tuple[int, ...]`` union matches neither.
_AS_JSON = PlainSerializer(
    lambda value: list(value) if isinstance(value, tuple) else value,
    return_type=Any,
    when_used="json",
)
PositiveIntOrInts = Annotated[
    int | tuple[int, ...],
    PlainValidator(_ints(1, "a positive integer")),
    WithJsonSchema(_ints_schema(1)),
    _AS_JSON,
]
NonNegativeIntOrInts = Annotated[
    int | tuple[int, ...],
    PlainValidator(_ints(0, "a non-negative integer")),
    WithJsonSchema(_ints_schema(0)),
    _AS_JSON,
]
SignedIntOrInts = Annotated[
    int | tuple[int, ...],
    PlainValidator(_ints(None, "an integer")),
    WithJsonSchema(_ints_schema(None)),
    _AS_JSON,
]
FloatOrFloats = Annotated[
    float | tuple[float, ...],
    PlainValidator(_positive_floats),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}},
            ]
        }
    ),
    _AS_JSON,
]
OutputSize = Annotated[
    int | tuple[int | None, ...],
    PlainValidator(_output_size),
    WithJsonSchema(
        {
            "anyOf": [
                _int_schema(1),
                {
                    "type": "array",
                    "items": {"anyOf": [_int_schema(1), {"type": "null"}]},
                    "minItems": 1,
                    "maxItems": 3,
                },
            ]
        }
    ),
    _AS_JSON,
]
Padding = Annotated[
    int | tuple[int, ...] | str,
    PlainValidator(_padding),
    WithJsonSchema({"anyOf": [*_ints_schema(0)["anyOf"], {"enum": ["same", "valid"]}]}),
    _AS_JSON,
]


def per_dim(value: int | tuple[int, ...], dims: int) -> tuple[int, ...]:
    """A scalar repeated for every spatial dimension, or the list as given.

    >>> per_dim(3, 2), per_dim((3, 1), 2)
    ((3, 3), (3, 1))
    """
    return (value,) * dims if isinstance(value, int) else tuple(value)
