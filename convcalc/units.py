"""Quantities written with a unit suffix, parsed exactly: counts (``5M``, ``600M``,
``1.2G``), bytes (``200MiB``, ``16GiB``, ``900GB``), times (``20ms``, ``1.5s``), rates
(``989TFLOP/s``, ``3.35TB/s``).

Decimal prefixes (k, M, G, T, P) are powers of 1000, binary ones (Ki, Mi, Gi, Ti) powers of
1024; the number before them is read as a decimal fraction, so ``1.5GiB`` is exactly
1,610,612,736 bytes. Values are ``Fraction``; callers round where a whole number is meant.

>>> parse_count("5M"), parse_bytes("200MiB"), parse_seconds("20ms")
(Fraction(5000000, 1), Fraction(209715200, 1), Fraction(1, 50))
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = [
    "format_bytes",
    "format_seconds",
    "parse_bytes",
    "parse_count",
    "parse_quantity",
    "parse_rate",
    "parse_seconds",
]

_DECIMAL = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
_SECONDS = {"s": Fraction(1), "ms": Fraction(1, 10**3), "us": Fraction(1, 10**6)}
_SECONDS |= {"µs": _SECONDS["us"], "μs": _SECONDS["us"], "ns": Fraction(1, 10**9)}

_NUMBER = r"[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_QUANTITY = re.compile(rf"\s*(?P<number>{_NUMBER})\s*(?P<unit>[^\s0-9.].*?)?\s*")

# what each kind of quantity may be written with after its prefix
_UNITS = {
    "count": ("",),
    "bytes": ("B",),
    "rate": ("FLOP/s", "FLOPS", "B/s"),
}


def _number(text: str) -> tuple[Fraction, str]:
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ValueError(f"{text!r} is not a number")
    if isinstance(text, (int, float)):
        if text != text or text in (float("inf"), float("-inf")):
            raise ValueError(f"{text!r} is not a finite number")
        return Fraction(str(text)) if isinstance(text, float) else Fraction(text), ""
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} does not parse as a number with a unit")
    return Fraction(match["number"].replace("_", "")), match["unit"] or ""


def _scaled(text: str, kind: str, suffixes: tuple[str, ...]) -> Fraction:
    number, unit = _number(text)
    for suffix in suffixes:
        if not unit.endswith(suffix):
            continue
        prefix = unit[: len(unit) - len(suffix)] if suffix else unit
        scale = _BINARY.get(prefix) or _DECIMAL.get(prefix)
        if scale is not None:
            return number * scale
    examples = {
        "count": "5M, 600k, 1.2G",
        "bytes": "200MiB, 16GiB, 900MB",
        "rate": "989TFLOP/s, 3.35TB/s",
    }[kind]
    raise ValueError(f"{text!r} has an unknown unit {unit!r}; write {kind} like {examples}")


def parse_count(text: str | int | float) -> Fraction:
    """A number of parameters, MACs or FLOPs: ``5M``, ``600k``, ``1.2G``, ``4_000``."""
    return _scaled(text, "count", _UNITS["count"])  # type: ignore[arg-type]


def parse_bytes(text: str | int | float) -> Fraction:
    """A memory size: ``200MiB``, ``16GiB``, ``900MB``, ``512`` (bytes)."""
    return _scaled(text, "bytes", _UNITS["bytes"] + ("",))  # type: ignore[arg-type]


def parse_rate(text: str | int | float) -> Fraction:
    """Operations or bytes per second: ``989TFLOP/s``, ``3.35TB/s``, ``2e12``."""
    return _scaled(text, "rate", _UNITS["rate"] + ("",))  # type: ignore[arg-type]


def parse_seconds(text: str | int | float) -> Fraction:
    """A time: ``20ms``, ``1.5s``, ``300us``; a bare number is seconds."""
    number, unit = _number(text)  # type: ignore[arg-type]
    if unit == "":
        return number
    if unit not in _SECONDS:
        raise ValueError(f"{text!r} has an unknown unit {unit!r}; write a time like 20ms or 1.5s")
    return number * _SECONDS[unit]


def parse_quantity(text: str | int | float, kind: str) -> Fraction:
    """``text`` as a count, bytes, rate or seconds (``kind``)."""
    parsers = {
        "count": parse_count,
        "bytes": parse_bytes,
        "rate": parse_rate,
        "seconds": parse_seconds,
    }
    return parsers[kind](text)


def format_bytes(value: float) -> str:
    """Bytes in binary units: ``format_bytes(3 * 2**30)`` is ``'3.00 GiB'``.

    >>> format_bytes(512), format_bytes(1536), format_bytes(3 * 2**30)
    ('512 B', '1.50 KiB', '3.00 GiB')
    """
    for unit, scale in reversed(_BINARY.items()):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}B"
    return f"{value:.0f} B"


def format_seconds(value: float) -> str:
    """A time in the unit that reads best.

    >>> format_seconds(0.0123), format_seconds(2.5e-5), format_seconds(3)
    ('12.30 ms', '25.0 µs', '3.00 s')
    """
    if abs(value) >= 1:
        return f"{value:.2f} s"
    if abs(value) >= 1e-3:
        return f"{value * 1e3:.2f} ms"
    return f"{value * 1e6:.1f} µs"
