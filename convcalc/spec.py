"""The spec format (version 1): blocks, the layer union and the ``Network`` model.

A layer in a list is a mapping with ``type`` (the ``torch.nn`` class name, any case)
or just the type name as a string. Blocks hold further layer lists, nestable to any
depth: ``sequential``, ``residual``, ``concat`` and ``repeat``.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    model_serializer,
    model_validator,
)

from convcalc.errors import shown
from convcalc.expressions import ExpressionError, evaluate, is_expression
from convcalc.fields import PositiveInt
from convcalc.layers import LEAF_CLASSES, LINE_KEY, LayerModel, Leaf
from convcalc.merges import MERGE_CLASSES

__all__ = [
    "BLOCK_TYPES",
    "LAYER_TYPES",
    "MAX_LAYERS",
    "Block",
    "BlockCall",
    "BlockDefinition",
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


class BlockCall(Block):
    """One use of a parameterised block (``blocks:`` in the spec): its layers with the
    arguments substituted, applied like a sequential; ``type`` is the block's name."""

    type: str
    layers: list[LayerSpec] = Field(min_length=1)
    arguments: dict[str, Any] = {}  # noqa: RUF012 - pydantic copies defaults

    def children(self) -> list[tuple[str, list[LayerSpec]]]:
        return [("", self.layers)]


class BlockDefinition(BaseModel):
    """A parameterised block: ``params`` (name -> default, null when required) and the
    layers, whose string fields may use the parameters (``out_channels: width * 4``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    params: dict[str, Any] = {}
    layers: list[Any] = Field(min_length=1)


BLOCK_CLASSES: tuple[type[Block], ...] = (Sequential, Residual, Concat, Repeat)

# Lower-cased type name -> model class, for leaves and blocks.
LAYER_TYPES: dict[str, type[LayerModel]] = {
    name.lower(): cls for cls in (*LEAF_CLASSES, *MERGE_CLASSES) for name in cls.torch_names
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


# The block definitions of the spec being validated (a Network sets them around its
# own validation, so every nested layer list sees them).
_BLOCKS: ContextVar[Mapping[str, BlockDefinition]] = ContextVar(
    "convcalc_blocks", default=MappingProxyType({})
)
_CALLS: ContextVar[tuple[str, ...]] = ContextVar("convcalc_calls", default=())
MAX_BLOCK_NESTING = 32


@contextmanager
def _blocks_in_scope(blocks: Mapping[str, BlockDefinition]) -> Iterator[None]:
    token = _BLOCKS.set(blocks)
    try:
        yield
    finally:
        _BLOCKS.reset(token)


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
                f"got {shown(dict(value))}"
            )
        mapping = dict(value)
    else:
        raise ValueError(
            f"a layer must be a mapping with a 'type' or a bare type name, got {shown(value)}"
        )
    kind = mapping["type"]
    if not isinstance(kind, str):
        raise ValueError(f"type must be a layer type name, got {shown(kind)}")
    if kind.lower() not in LAYER_TYPES and kind.lower() not in _BLOCKS.get():
        known = [*LAYER_TYPES, *_BLOCKS.get()]
        raise ValueError(f"unknown layer type {shown(kind)}{suggest(kind[:100], known)}")
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
    kind = mapping["type"]
    if kind not in LAYER_TYPES:
        return _call_block(kind, mapping)
    return LAYER_TYPES[kind].model_validate(mapping)


_CALL_FIELDS = {"type", "name", "trainable", "from", LINE_KEY}


def _call_block(kind: str, mapping: dict[str, Any]) -> BlockCall:
    """A parameterised block's layers with this call's arguments substituted."""
    definition = _BLOCKS.get()[kind]
    if (
        "layers" in mapping
        and "arguments" in mapping
        and not {"layers", "arguments"} & set(definition.params)
    ):
        # a call already expanded (a dumped Network): its layers are taken as they are
        return BlockCall.model_validate(mapping)
    calls = _CALLS.get()
    if kind in calls or len(calls) >= MAX_BLOCK_NESTING:
        chain = " -> ".join([*calls, kind])
        raise ValueError(f"block {kind!r} uses itself ({chain}); blocks cannot recurse")
    arguments = {key: value for key, value in mapping.items() if key not in _CALL_FIELDS}
    params = definition.params
    for key in arguments:
        if key not in params:
            known = ", ".join(params) or "none"
            raise ValueError(
                f"block {kind!r} has no parameter {key!r}{suggest(key, params)}; "
                f"its parameters are {known}"
            )
    missing = [key for key, default in params.items() if default is None and key not in arguments]
    if missing:
        raise ValueError(
            f"block {kind!r} needs {', '.join(repr(key) for key in missing)} "
            f"(parameters without a default)"
        )
    values = {**params, **arguments}
    layers = [_substitute(layer, values, kind) for layer in definition.layers]
    call = {key: mapping[key] for key in _CALL_FIELDS if key in mapping}
    token = _CALLS.set((*calls, kind))
    try:
        return BlockCall.model_validate({**call, "layers": layers, "arguments": values})
    except ValidationError as error:
        raise ValueError(_inside_block(kind, layers, error)) from None
    finally:
        _CALLS.reset(token)


def _substitute(node: Any, values: Mapping[str, Any], kind: str) -> Any:
    """A copy of raw layer data with parameter names and arithmetic evaluated."""
    if isinstance(node, list):
        items = copy.copy(node)  # keeps the loader's line numbers
        items[:] = [_substitute(item, values, kind) for item in node]
        return items
    if isinstance(node, dict):
        out = copy.copy(node)
        for key, item in node.items():
            if key not in ("name", "from"):
                out[key] = _substitute(item, values, kind)
        return out
    if isinstance(node, str) and is_expression(node, values):
        try:
            return evaluate(node, values)
        except ExpressionError as error:
            raise ValueError(f"block {kind!r}: {error}") from None
    return node


def _inside_block(kind: str, layers: list[Any], error: ValidationError) -> str:
    """One sentence for the first error inside a block's layers, with the line of the
    definition it comes from."""
    first = error.errors(include_url=False)[0]
    loc = list(first["loc"])
    node: Any = layers
    line = None
    where = []
    if loc and loc[0] == "layers":
        loc = loc[1:]
    for key in loc:
        if isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
            where.append(str(key))
            line = getattr(node, "line", line)
        elif isinstance(node, Mapping) and key in node:
            if isinstance(node[key], (list, Mapping)):
                node = node[key]
                continue
            where.append(str(key))
            break
        else:
            where.append(str(key))
            break
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden" and where:  # as outside a block
        field = where.pop()
        message = f"unknown field {field!r}"
    elif first["type"] == "missing" and where:
        message = f"missing required field {where.pop()!r}"
    at = f" (line {line})" if line else ""
    return f"in block {kind!r}, at {'.'.join(where) or 'its layers'}{at}: {message}"


if TYPE_CHECKING:
    LayerSpec: TypeAlias = Leaf | Block
else:
    # Any layer or block, validated by the class its type names; convcalc.schema
    # puts the JSON Schema of the union where this placeholder stands.
    LayerSpec = Annotated[Any, PlainValidator(_parse_layer), WithJsonSchema(LAYER_PLACEHOLDER)]


def expanded_size(
    layers: Any, memo: dict[Any, int] | None = None, blocks: Mapping[str, Any] | None = None
) -> int:
    """How many report rows raw (unvalidated) layers expand to, counting repeats and
    the layers of parameterised blocks (``blocks``: name -> raw definition).

    Shared sub-lists (YAML aliases) and block definitions are counted once per use but
    walked once, so a 'billion laughs' spec is measured without being expanded.
    """
    memo = {} if memo is None else memo
    blocks = blocks or {}
    if not isinstance(layers, list):
        return 0
    key = id(layers)
    if key in memo:
        return memo[key]
    memo[key] = 0  # a block that uses itself counts once; validation refuses it
    total = 0
    for layer in layers:
        total += 1
        if isinstance(layer, Mapping):
            kind = str(layer.get("type", "")).lower()
            if kind == "concat" and isinstance(layer.get("branches"), list):
                total += sum(expanded_size(b, memo, blocks) for b in layer["branches"])
            elif kind == "repeat":
                times, template = layer.get("times"), layer.get("layers")
                if isinstance(times, int) and times > 0 and isinstance(template, list):
                    copy_row = 1 if len(template) > 1 else 0
                    total += times * (expanded_size(template, memo, blocks) + copy_row)
            elif kind in blocks and isinstance(blocks[kind], Mapping):
                total += expanded_size(blocks[kind].get("layers"), memo, blocks)
            else:
                total += expanded_size(layer.get("layers"), memo, blocks)
                total += expanded_size(layer.get("shortcut"), memo, blocks)
        if total > MAX_LAYERS:
            break
    memo[key] = total
    return total


Shape = Annotated[list[PositiveInt], Field(min_length=1, max_length=4)]


class Network(BaseModel):
    """A whole spec: input shape(s), batch size, dtype, the layers and (version 2) the
    outputs and the parameterised blocks they use."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    version: Literal[1, 2] = 1
    name: str = "network"
    # One input (its shape, without the batch), or several by name (``inputs``; then
    # ``input`` is the first one's shape).
    input: Shape
    inputs: dict[str, Shape] | None = Field(default=None, min_length=1)
    batch_size: PositiveInt = 1
    dtype: Literal["float16", "bfloat16", "float32", "float64"] = "float32"
    blocks: dict[str, BlockDefinition] = {}
    layers: list[LayerSpec] = Field(min_length=1)
    # The layers whose outputs the network returns; by default its last layer's.
    outputs: list[str] | None = Field(default=None, min_length=1)

    _source: str | None = PrivateAttr(default=None)
    _graph: Any = PrivateAttr(default=None)  # convcalc.graph.lower's result, made once

    @model_validator(mode="wrap")
    @classmethod
    def _with_blocks(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Validate the layers with the spec's block definitions in scope."""
        blocks = data.get("blocks") if isinstance(data, Mapping) else None
        if not isinstance(blocks, Mapping) or not blocks:
            return handler(data)
        definitions: dict[str, BlockDefinition] = {}
        for name, definition in blocks.items():
            key = str(name).lower()
            if key in LAYER_TYPES:
                raise ValueError(
                    f"blocks: {name!r} is already a layer type; give the block another name"
                )
            definitions[key] = (
                definition
                if isinstance(definition, BlockDefinition)
                else BlockDefinition.model_validate(definition)
            )
        with _blocks_in_scope(definitions):
            return handler(data)

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        # Top-level keys starting with x- hold YAML anchors for reuse, as in docker compose.
        data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
        inputs = data.get("inputs")
        if inputs is not None and "input" in data:
            raise ValueError("give either input (one shape) or inputs (shapes by name), not both")
        if isinstance(inputs, Mapping) and inputs:
            data["input"] = next(iter(inputs.values()))
        blocks = data.get("blocks")
        raw_blocks = (
            {str(k).lower(): v for k, v in blocks.items()} if isinstance(blocks, Mapping) else {}
        )
        size = expanded_size(data.get("layers"), blocks=raw_blocks)
        if size > MAX_LAYERS:
            raise ValueError(
                f"the spec expands to more than {MAX_LAYERS:,} layers (repeat times × layers); "
                f"refusing to analyse it"
            )
        return data

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """With several inputs, ``input`` (the first one's shape, filled in on loading)
        is left out, so that a dumped spec loads back."""
        data: dict[str, Any] = handler(self)
        if self.inputs is not None:
            data.pop("input", None)
        return data

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each input's shape (one sample, channels first) by name; ``input`` when the
        spec has one."""
        if self.inputs is None:
            return {"input": tuple(self.input)}
        return {name: tuple(shape) for name, shape in self.inputs.items()}

    @property
    def source(self) -> str | None:
        """The file this spec was loaded from, if any."""
        return self._source
