"""Budgets for design reviews: limits a spec (``budget:``) or the command line
(``--budget params=5M``) puts on the numbers, so ``convcalc check`` can gate a pull request.

.. code-block:: yaml

    budget:
      params: 5M
      macs: 600M
      activation_memory: 200MiB
      training_memory: {max: 8GiB, optimizer: adam}
      latency: {device: jetson-orin, max: 20ms}

Counts take decimal and binary suffixes (``5M`` = 5,000,000, ``5Mi`` = 5,242,880), memory
takes bytes (``200MiB``, ``1.5GB``), times take ``ms``, ``us``, ``s``; all parsed exactly.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from convcalc.report import Report
from convcalc.units import format_bytes, format_seconds, parse_bytes, parse_count, parse_seconds

__all__ = ["Budget", "Exceeded", "budget_from_options", "over_budget"]

_COUNTS = ("params", "trainable_params", "macs", "flops")

# A limit: parsed exactly from ``5M``, ``200MiB``, ``20ms`` or a number; written back as a
# plain number (an int when whole).
Limit = Annotated[
    Fraction,
    PlainSerializer(lambda value: int(value) if value.denominator == 1 else float(value)),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string"}],
            "description": "a number, or one with a unit: 5M, 600k, 200MiB, 16GiB, 20ms",
        }
    ),
]
_BYTES = ("param_memory", "activation_memory", "memory_traffic")


def _limit(value: Any, parse: Any, what: str) -> Fraction:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number with an optional unit, got {value!r}")
    number = parse(value)
    if number <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return number  # type: ignore[no-any-return]


class TrainingMemoryBudget(BaseModel):
    """The memory of a training step (``Report.training_memory``) at most ``max``."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
    max: Limit
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"

    @field_validator("max", mode="before")
    @classmethod
    def _max(cls, value: Any) -> Fraction:
        return _limit(value, parse_bytes, "training_memory max")


class LatencyBudget(BaseModel):
    """The roofline estimate on ``device`` (a profile name or file) at most ``max``."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
    device: str
    max: Limit

    @field_validator("max", mode="before")
    @classmethod
    def _max(cls, value: Any) -> Fraction:
        return _limit(value, parse_seconds, "latency max")


class Budget(BaseModel):
    """Limits on a spec's numbers; each one left out is not checked."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
    params: Limit | None = None
    trainable_params: Limit | None = None
    macs: Limit | None = None
    flops: Limit | None = None
    param_memory: Limit | None = None
    activation_memory: Limit | None = None
    memory_traffic: Limit | None = None
    training_memory: TrainingMemoryBudget | None = None
    latency: LatencyBudget | None = None

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise ValueError(
                f"a budget is a mapping such as {{params: 5M, macs: 600M}}, got {data!r}"
            )
        for key in data:
            if key not in cls.model_fields:
                close = difflib.get_close_matches(str(key), cls.model_fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(
                    f"unknown quantity {key!r}{hint}; a budget limits {', '.join(cls.model_fields)}"
                )
        return data

    @field_validator(*_COUNTS, mode="before")
    @classmethod
    def _count(cls, value: Any) -> Fraction | None:
        return None if value is None else _limit(value, parse_count, "a count")

    @field_validator(*_BYTES, mode="before")
    @classmethod
    def _bytes(cls, value: Any) -> Fraction | None:
        return None if value is None else _limit(value, parse_bytes, "a memory size")

    def merged(self, other: Budget) -> Budget:
        """This budget with ``other``'s limits on top (the command line over the spec)."""
        return Budget.model_validate(
            {**self.model_dump(exclude_none=True), **other.model_dump(exclude_none=True)}
        )


@dataclass(frozen=True, slots=True)
class Exceeded:
    """One budget a report exceeds."""

    quantity: str
    value: float
    limit: float
    text: str  # value and limit as people write them

    def __str__(self) -> str:
        return self.text


def _over(quantity: str, value: float, limit: Fraction, shown: Any, detail: str = "") -> Exceeded:
    over = value - float(limit)
    percent = 100 * over / float(limit)
    return Exceeded(
        quantity,
        value,
        float(limit),
        f"{quantity}{detail} {shown(value)} exceeds the budget of {shown(float(limit))} "
        f"by {shown(over)} ({percent:.1f}%)",
    )


def _count(value: float) -> str:
    return f"{round(value):,}"


def over_budget(report: Report, budget: Budget) -> list[Exceeded]:
    """Every limit of ``budget`` that ``report`` exceeds, in the budget's order."""
    totals = report.totals
    values = {
        "params": totals.params,
        "trainable_params": totals.trainable_params,
        "macs": totals.macs,
        "flops": totals.flops,
        "param_memory": totals.param_bytes,
        "activation_memory": totals.activation_bytes,
        "memory_traffic": totals.bytes_read + totals.bytes_written,
    }
    found = []
    for quantity, value in values.items():
        limit = getattr(budget, quantity)
        if limit is not None and value > limit:
            shown = _count if quantity in _COUNTS else format_bytes
            found.append(_over(quantity, value, limit, shown))
    if budget.training_memory is not None:
        memory = report.training_memory(budget.training_memory.optimizer).total
        if memory > budget.training_memory.max:
            detail = f" ({budget.training_memory.optimizer}, batch {report.input_shape[0]})"
            found.append(
                _over("training_memory", memory, budget.training_memory.max, format_bytes, detail)
            )
    if budget.latency is not None:
        seconds = report.estimate(budget.latency.device).seconds
        if seconds > budget.latency.max:
            detail = f" on {budget.latency.device}"
            found.append(_over("latency", seconds, budget.latency.max, format_seconds, detail))
    return found


def budget_from_options(options: Sequence[str]) -> Budget | None:
    """``--budget params=5M --budget latency=20ms@jetson-orin`` as a budget."""
    if not options:
        return None
    data: dict[str, Any] = {}
    for option in options:
        key, equals, value = option.partition("=")
        if not equals or not key or not value:
            raise ValueError(f"--budget {option!r}: write QUANTITY=LIMIT, e.g. params=5M")
        key = key.strip()
        if key == "latency":
            limit, at, device = value.partition("@")
            if not at:
                raise ValueError(f"--budget {option!r}: write latency=20ms@DEVICE")
            data[key] = {"max": limit, "device": device}
        elif key == "training_memory":
            limit, at, optimizer = value.partition("@")
            data[key] = {"max": limit, **({"optimizer": optimizer} if at else {})}
        else:
            data[key] = value
    return Budget.model_validate(data)
