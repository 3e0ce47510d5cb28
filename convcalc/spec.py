"""The spec format (version 1): blocks, the layer union and the ``Network`` model.

A layer in a list is a mapping with ``type`` (the ``torch.nn`` class name, any case)
or just the type name as a string. Blocks hold further layer lists, nestable to any
depth: ``sequential``, ``residual``, ``concat`` and ``repeat``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    WithJsonSchema,
    model_validator,
)

from convcalc.fields import PositiveInt
from convcalc.layers import LEAF_CLASSES, LINE_KEY, LayerModel, Leaf

__all__ = [
    "BLOCK_TYPES",
    "LAYER_TYPES",
    "MAX_LAYERS",
    "Block",
    "Concat",
    "LayerSpec",
    "Leaf",
    "Network",
    "Repeat",
    "Residual",
    "Sequential",
    "suggest",
]

# A spec that would expand to more layer rows than this is refused before any work.
MAX_LAYERS = 100_000


class Block(LayerModel):
    """A layer made of other layers."""

    type: str

    def children(self) -> list[tuple[str, list[LayerSpec]]]:
        """(path segment, layers) for each child sequence, in report order."""
        raise NotImplementedError


class Sequential(Block):
    """A named group of layers applied in order."""

    type: Literal["sequential"]
    layers: list[LayerSpec] = Field(min_length=1)

    def children(self) -> list[tuple[str, list[LayerSpec]]]:
        return [("", self.layers)]


class Residual(Block):
    """``layers(x) + shortcut(x)``; an empty or missing shortcut is the identity."""

    type: Literal["residual"]
    layers: list[LayerSpec] = Field(min_length=1)
    shortcut: list[LayerSpec] = []  # noqa: RUF012 - pydantic copies defaults

    def children(self) -> list[tuple[str, list[LayerSpec]]]:
        return [("body", self.layers), ("shortcut", self.shortcut)]


class Concat(Block):
    """Branches applied to the same input, concatenated along channels (empty = identity)."""

    type: Literal["concat"]
    branches: list[list[LayerSpec]] = Field(min_length=1)

    def children(self) -> list[tuple[str, list[LayerSpec]]]:
        return [(f"branches.{i}", branch) for i, branch in enumerate(self.branches)]


class Repeat(Block):
    """``times`` copies of ``layers`` in sequence; channels are re-inferred for each copy."""

    type: Literal["repeat"]
    times: PositiveInt
    layers: list[LayerSpec] = Field(min_length=1)

    def children(self) -> list[tuple[str, list[LayerSpec]]]:
        if len(self.layers) == 1:  # copies are the layer itself: layer1.0, layer1.1, ...
            return [("", self.layers * self.times)]
        return [(str(i), self.layers) for i in range(self.times)]


BLOCK_CLASSES: tuple[type[Block], ...] = (Sequential, Residual, Concat, Repeat)

# Lower-cased type name -> model class, for leaves and blocks.
LAYER_TYPES: dict[str, type[LayerModel]] = {
    name.lower(): cls for cls in LEAF_CLASSES for name in cls.torch_names
}
BLOCK_TYPES: dict[str, type[Block]] = {
    "sequential": Sequential,
    "residual": Residual,
    "concat": Concat,
    "repeat": Repeat,
}
LAYER_TYPES.update(BLOCK_TYPES)


def suggest(word: str, candidates: list[str] | Any) -> str:
    """``; did you mean 'conv2d'?`` or nothing."""
    close = difflib.get_close_matches(word.lower(), list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _normalise_layer(value: Any) -> Any:
    """A bare type name becomes ``{type: name}``; the type is lower-cased and checked."""
    if isinstance(value, LayerModel):
        return value
    if isinstance(value, str):
        mapping: dict[str, Any] = {"type": value}
    elif isinstance(value, Mapping):
        if "type" not in value:
            raise ValueError(
                f"a layer needs a 'type' (a torch.nn class name such as conv2d), "
                f"got {dict(value)!r}"
            )
        mapping = dict(value)
    else:
        raise ValueError(
            f"a layer must be a mapping with a 'type' or a bare type name, got {value!r}"
        )
    kind = mapping["type"]
    if not isinstance(kind, str):
        raise ValueError(f"type must be a layer type name, got {kind!r}")
    if kind.lower() not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r}{suggest(kind, LAYER_TYPES)}")
    mapping["type"] = kind.lower()
    line = getattr(value, "line", None)
    if line is not None:  # keep the YAML line for error messages
        mapping[LINE_KEY] = line
    return mapping


LAYER_PLACEHOLDER = {"x-convcalc": "layer"}


def _parse_layer(value: Any) -> LayerModel:
    """Validate one layer with the model class its ``type`` names.

    Dispatching by hand (rather than through one union of every class) means pydantic
    builds validators only for the layer types a spec uses, which keeps start-up fast.
    A nested ``ValidationError`` keeps its locations (``layers.3.kernel_size``).
    """
    if isinstance(value, LayerModel):
        return value
    mapping = _normalise_layer(value)
    return LAYER_TYPES[mapping["type"]].model_validate(mapping)


if TYPE_CHECKING:
    LayerSpec: TypeAlias = Leaf | Block
else:
    # Any layer or block, validated by the class its type names; convcalc.schema
    # puts the JSON Schema of the union where this placeholder stands.
    LayerSpec = Annotated[Any, PlainValidator(_parse_layer), WithJsonSchema(LAYER_PLACEHOLDER)]


def expanded_size(layers: Any, memo: dict[int, int] | None = None) -> int:
    """How many report rows raw (unvalidated) layers expand to, counting repeats.

    Shared sub-lists (YAML aliases) are counted once per use but walked once,
    so a 'billion laughs' spec is measured without being expanded.
    """
    memo = {} if memo is None else memo
    if not isinstance(layers, list):
        return 0
    key = id(layers)
    if key in memo:
        return memo[key]
    total = 0
    for layer in layers:
        total += 1
        if isinstance(layer, Mapping):
            kind = str(layer.get("type", "")).lower()
            if kind == "concat" and isinstance(layer.get("branches"), list):
                total += sum(expanded_size(b, memo) for b in layer["branches"])
            elif kind == "repeat":
                times, template = layer.get("times"), layer.get("layers")
                if isinstance(times, int) and times > 0 and isinstance(template, list):
                    copy_row = 1 if len(template) > 1 else 0
                    total += times * (expanded_size(template, memo) + copy_row)
            else:
                total += expanded_size(layer.get("layers"), memo)
                total += expanded_size(layer.get("shortcut"), memo)
        if total > MAX_LAYERS:
            break
    memo[key] = total
    return total


class Network(BaseModel):
    """A whole spec: input shape, batch size, dtype and the layers."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    version: Literal[1] = 1
    name: str = "network"
    input: list[PositiveInt] = Field(min_length=1, max_length=4)
    batch_size: PositiveInt = 1
    dtype: Literal["float16", "bfloat16", "float32", "float64"] = "float32"
    layers: list[LayerSpec] = Field(min_length=1)

    _source: str | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        # Top-level keys starting with x- hold YAML anchors for reuse, as in docker compose.
        data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
        size = expanded_size(data.get("layers"))
        if size > MAX_LAYERS:
            raise ValueError(
                f"the spec expands to more than {MAX_LAYERS:,} layers (repeat times × layers); "
                f"refusing to analyse it"
            )
        return data

    @property
    def source(self) -> str | None:
        """The file this spec was loaded from, if any."""
        return self._source
