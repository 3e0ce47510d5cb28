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

from convcalc.budget import Budget
from convcalc.errors import shown
from convcalc.expressions import ExpressionError, evaluate, is_expression
from convcalc.fields import PositiveInt
from convcalc.layers import LEAF_CLASSES, LINE_KEY, LayerModel, Leaf
from convcalc.merges import MERGE_CLASSES

__all__ = [
    "BLOCK_TYPES",
    "LAYER_TYPES",
    "MAX_LAYERS",
    "MAX_NESTING",
    "Block",
    "BlockCall",
    "BlockDefinition",
    "Concat",
    "ExpansionError",
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
# Nor may layers nest deeper than this (real networks nest a handful of levels).
MAX_NESTING = 50


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


def suggest(word: Any, candidates: list[str] | Any) -> str:
    """``; did you mean 'conv2d'?`` or nothing (``word`` may be any YAML key: null, 3...)."""
    words = [str(candidate) for candidate in candidates]
    close = difflib.get_close_matches(str(word)[:100].lower(), words, n=1, cutoff=0.6)
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
                f"block {kind!r} has no parameter {shown(key)}{suggest(key, params)}; "
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


class ExpansionError(ValueError):
    """A spec that expands past ``MAX_LAYERS`` rows or nests past ``MAX_NESTING`` levels,
    with the layer that takes it there (pydantic keeps the error in its ``ctx``, where
    the loader finds the location)."""

    def __init__(self, message: str, path: str, layer: Any) -> None:
        super().__init__(message)
        self.path = path
        line = getattr(layer, "line", None)  # a loader mapping, a bare name or a model
        self.line: int | None = line if isinstance(line, int) else None
        name = layer.get("name") if isinstance(layer, Mapping) else getattr(layer, "name", None)
        self.name: str | None = name if isinstance(name, str) else None


class _LayerCount:
    """Rows and nesting depth of layer lists, raw (mappings from YAML) or validated
    (models), counting repeats and the layers of parameterised blocks (``blocks``:
    name -> raw definition).

    Every list is measured once and remembered by identity, so shared sub-lists (YAML
    aliases) and block definitions are counted once per use but walked once: a
    'billion laughs' spec is measured without being expanded. Counts stop just past
    ``MAX_LAYERS``; walking stops past ``MAX_NESTING`` levels.
    """

    def __init__(self, blocks: Mapping[str, Any]) -> None:
        self.blocks = blocks
        self.memo: dict[int, tuple[int, int]] = {}  # id(list) -> (rows, nesting height)

    def parts(self, layer: Any) -> tuple[list[tuple[str, Any]], int, int, str | None]:
        """(path segment, child layers) of a layer, the copies made of them (a repeat's
        ``times``), 1 if each copy is a row of its own, and the block it calls."""
        if isinstance(layer, LayerModel):
            if isinstance(layer, Repeat):
                many = len(layer.layers) > 1
                return [("0" if many else "", layer.layers)], layer.times, int(many), None
            if isinstance(layer, Block):
                block = layer.type if isinstance(layer, BlockCall) else None
                return list(layer.children()), 1, 0, block
            return [], 1, 0, None
        if isinstance(layer, str) and isinstance(self.definition(layer.lower()), Mapping):
            return [("", self.blocks[layer.lower()].get("layers"))], 1, 0, layer.lower()
        if not isinstance(layer, Mapping):
            return [], 1, 0, None
        kind = str(layer.get("type", "")).lower()
        if kind == "concat":
            branches = layer.get("branches")
            if isinstance(branches, list):
                return [(f"branches.{i}", b) for i, b in enumerate(branches)], 1, 0, None
            return [], 1, 0, None
        if kind == "repeat":
            times, template = layer.get("times"), layer.get("layers")
            # times given by a block parameter is not known yet: one copy is counted now,
            # the validated network is counted again
            copies = times if isinstance(times, int) and times > 0 else 1
            many = isinstance(template, list) and len(template) > 1
            return [("0" if many else "", template)], copies, int(many), None
        children: list[tuple[str, Any]] = [
            ("body" if kind == "residual" else "", layer.get("layers"))
        ]
        children.append(("shortcut", layer.get("shortcut")))
        definition = self.definition(kind)
        if isinstance(definition, Mapping):  # a call: the definition's layers (and any given)
            return [("", definition.get("layers")), *children], 1, 0, kind
        return children, 1, 0, None

    def definition(self, kind: str) -> Any:
        """The raw definition of the block ``kind`` names (not a layer type's name, which
        validation refuses as a block name)."""
        return None if kind in LAYER_TYPES else self.blocks.get(kind)

    def rows(self, layers: Any, path: str, depth: int) -> int:
        """Rows ``layers`` expand to (capped just past ``MAX_LAYERS``); raises
        ``ExpansionError`` where layers nest more than ``MAX_NESTING`` deep."""
        if not isinstance(layers, list):
            return 0
        known = self.memo.get(id(layers))
        if known is not None:
            if depth + known[1] - 1 > MAX_NESTING:
                self.too_deep(layers, path)
            return known[0]
        if depth > MAX_NESTING:
            self.too_deep(layers, path)
        self.memo[id(layers)] = (0, 0)  # a block that uses itself; validation refuses it
        total, height = 0, 1
        for index, layer in enumerate(layers):
            layer_path = f"{path}.{index}"
            children, copies, copy_row, _ = self.parts(layer)
            inner = 0
            for segment, child in children:
                child_path = f"{layer_path}.{segment}" if segment else layer_path
                inner += self.rows(child, child_path, depth + 1)
                child_height = self.memo.get(id(child), (0, 0))[1] if isinstance(child, list) else 0
                height = max(height, 1 + child_height)
            total += 1 + copies * (inner + copy_row)
            if total > MAX_LAYERS:
                break
        self.memo[id(layers)] = (total, height)
        return total

    def too_deep(self, layers: list[Any], path: str) -> None:
        layer = layers[0] if layers else None
        raise ExpansionError(
            f"layers nest more than {MAX_NESTING} levels deep here (blocks within blocks); "
            f"refusing to analyse it",
            f"{path}.0",
            layer,
        )

    def culprit(
        self, layers: list[Any], budget: int, path: str, within: str = ""
    ) -> tuple[ExpansionError, bool]:
        """The error for the layer at which ``layers`` pass ``budget`` rows, and whether
        it names a repeat: the innermost repeat whose copies take them past, else the
        outermost block call, else the layer reached. ``within`` names the block call
        the layers come from."""
        total, layer_path, layer = 0, path, None
        for index, layer in enumerate(layers):
            layer_path = f"{path}.{index}"
            children, copies, copy_row, block = self.parts(layer)
            sizes = [(segment, child, self.size(child)) for segment, child in children]
            inner = sum(size for _, _, size in sizes)
            if total + 1 + copies * (inner + copy_row) <= budget:
                total += 1 + copies * (inner + copy_row)
                continue
            remaining = budget - total - 1
            if copies > 1 and inner + copy_row <= remaining:
                per_copy = f"{inner + copy_row:,} layer{'s' if inner + copy_row > 1 else ''}"
                return ExpansionError(
                    f"times: {shown(copies)} copies of {per_copy} take the spec past "
                    f"{MAX_LAYERS:,} layers{within}; refusing to analyse it",
                    layer_path,
                    layer,
                ), True
            remaining -= copy_row
            for segment, child, size in sizes:
                if size <= remaining or not isinstance(child, list):
                    remaining -= size
                    continue
                child_path = f"{layer_path}.{segment}" if segment else layer_path
                inside = within
                if block is not None:
                    line = getattr(layer, "line", None)
                    used = f", used on line {line}" if isinstance(line, int) else ""
                    inside = f" (in block {block!r}{used})"
                error, repeat = self.culprit(child, remaining, child_path, inside)
                if repeat or block is None:
                    return error, repeat
                past = f"more than {MAX_LAYERS:,} layers through the blocks it uses"
                if inner <= MAX_LAYERS:  # and the layers before it
                    past = f"{inner:,} layers, which take the spec past {MAX_LAYERS:,}"
                return ExpansionError(
                    f"block {block!r} expands to {past}{within}; refusing to analyse it",
                    layer_path,
                    layer,
                ), False
            break
        return ExpansionError(
            f"the spec passes {MAX_LAYERS:,} layers here, through its aliases{within}; "
            f"refusing to analyse it",
            layer_path,
            layer,
        ), False

    def size(self, child: Any) -> int:
        return self.memo.get(id(child), (0, 0))[0] if isinstance(child, list) else 0


def check_expansion(layers: Any, blocks: Mapping[str, Any] | None = None) -> None:
    """Raise ``ExpansionError``, naming the layer responsible, if ``layers`` (raw or
    validated) expand to more than ``MAX_LAYERS`` rows or nest more than
    ``MAX_NESTING`` levels deep.

    >>> try:
    ...     check_expansion(["relu", {"type": "repeat", "times": 10**9, "layers": ["relu"]}])
    ... except ExpansionError as error:
    ...     print(f"{error.path}: {error}"[:59])
    layers.1: times: 1000000000 copies of 1 layer take the spec
    """
    count = _LayerCount(blocks or {})
    if count.rows(layers, "layers", 1) > MAX_LAYERS:
        raise count.culprit(layers, MAX_LAYERS, "layers")[0]


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
    # Limits `convcalc check` and `shape` hold the numbers to (convcalc.budget).
    budget: Budget | None = None

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
        check_expansion(data.get("layers"), raw_blocks)
        return data

    @model_validator(mode="after")
    def _expanded(self) -> Network:
        """Counted again once validated: a repeat's ``times`` may come from a block's
        parameters."""
        check_expansion(self.layers)
        return self

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
