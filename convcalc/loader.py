"""Reading specs: safe YAML that remembers line numbers, and errors that point at them.

Every mapping and sequence read from YAML remembers its line (and each key's
line), so a validation error's location (pydantic's ``loc``) can be turned into
``spec.yaml:14: layers.3 (conv2): kernel_size: must be a positive integer, got 0``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from convcalc.errors import Problem, SpecSyntaxError, SpecValidationError, shown
from convcalc.spec import BLOCK_TYPES, LAYER_TYPES, ExpansionError, Network, suggest

__all__ = [
    "MAX_DEPTH",
    "MAX_INT",
    "MAX_NODES",
    "MAX_SPEC_BYTES",
    "MAX_VALUES",
    "build_network",
    "dump_spec",
    "expanded_values",
    "load_spec",
    "parse_yaml",
    "with_overrides",
]

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _LineDict(dict[Any, Any]):
    line: int
    key_lines: dict[Any, int]


class _LineList(list[Any]):
    line: int


class _LineStr(str):
    line: int


class _Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    """PyYAML's safe loader (no object-constructing tags), recording line numbers."""


def _construct_mapping(loader: _Loader, node: yaml.Node) -> Any:
    if not isinstance(node, yaml.MappingNode):  # !!map on a scalar or a sequence
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"expected a mapping, but found a {getattr(node, 'id', 'value')}",
            node.start_mark,
        )
    data = _LineDict()
    data.line = node.start_mark.line + 1
    yield data
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue  # a list or mapping as a key: construct_mapping refuses it
        key = key_node.value
        line = key_node.start_mark.line + 1
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {shown(key)} (first on line {seen[key]})",
                key_node.start_mark,
            )
        seen[key] = line
    data.update(loader.construct_mapping(node))  # resolves merge keys (<<) in place
    data.key_lines = {loader.construct_object(k): k.start_mark.line + 1 for k, _ in node.value}


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> Any:
    data = _LineList()
    data.line = node.start_mark.line + 1
    yield data
    for item_node, item in zip(node.value, loader.construct_sequence(node)):
        if type(item) is str:  # a bare layer name: remember where it was written
            item = _LineStr(item)
            item.line = item_node.start_mark.line + 1
        data.append(item)


# The largest integer a spec may hold: int64's, as torch's sizes are.
MAX_INT = 2**63 - 1


class _BadValue(yaml.constructor.ConstructorError):
    """A well-formed YAML value that cannot be read (not a syntax error)."""


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    if isinstance(node.value, str) and len(node.value) > 40:  # before int() reads it all
        value = None
    else:
        value = yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)
    if value is None or abs(value) > MAX_INT:
        raise _BadValue(
            None,
            None,
            f"the number {_cut(str(node.value), 30)} is larger than any size a tensor can "
            f"have (2**63 - 1)",
            node.start_mark,
        )
    return value


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _checked(construct: Any) -> Any:
    """PyYAML's constructor for a tag, its ValueError (``!!int x``, ``2023-02-30``),
    KeyError (``!!bool x``) or AttributeError (``!!timestamp x``) turned into a
    ``ConstructorError`` at the value's line."""

    def checked(loader: _Loader, node: yaml.Node) -> Any:
        try:
            return construct(loader, node)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            tag = node.tag.rsplit(":", 1)[-1]
            raise _BadValue(
                None, None, f"{shown(node.value, 60)} is not a valid {tag}", node.start_mark
            ) from None

    return checked


for _tag in ("binary", "bool", "float", "null", "timestamp", "str"):
    _tag = f"tag:yaml.org,2002:{_tag}"
    _Loader.add_constructor(
        _tag, _checked(yaml.constructor.SafeConstructor.yaml_constructors[_tag])
    )
_Loader.add_constructor("tag:yaml.org,2002:int", _checked(_construct_int))
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def parse_yaml(text: str, source: str) -> Any:
    """YAML text as Python data with line numbers; syntax errors as ``SpecSyntaxError``."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecSyntaxError(
            Problem(f"the text is longer than {MAX_SPEC_BYTES:,} characters; refusing it", source)
        )
    try:
        too_many = _past_max_nodes(text)
        if too_many is not None:
            raise SpecSyntaxError(
                Problem(
                    f"the YAML holds more than {MAX_NODES:,} values; refusing to load it",
                    source,
                    too_many,
                )
            )
        data = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else None
        problem = error.problem or "cannot parse"
        if "exceeded maximum nesting depth" in problem:  # libyaml's own bound, 1,000
            problem = (
                f"the YAML nests lists and mappings more than {MAX_DEPTH} levels deep; "
                f"refusing to load it"
            )
        elif "could not determine a constructor" in problem:
            tag = problem.split("tag ", 1)[-1]
            problem = (
                f"the YAML tag {tag} is refused: specs are loaded safely and tags that "
                f"construct objects are not allowed"
            )
        else:
            column = f" (column {mark.column + 1})" if mark else ""
            kind = "" if isinstance(error, _BadValue) else "YAML syntax error: "
            problem = f"{kind}{problem}{column}"
        raise SpecSyntaxError(Problem(problem, source, line)) from None
    except yaml.reader.ReaderError as error:
        character = error.character  # a str from PyYAML's reader, an int from libyaml's
        code = ord(character) if isinstance(character, str) else int(character)
        line = text.count("\n", 0, error.position) + 1
        column = error.position - text.rfind("\n", 0, error.position)
        raise SpecSyntaxError(
            Problem(
                f"the character U+{code:04X} (column {column}) is not allowed in YAML",
                source,
                line,
            )
        ) from None
    except yaml.YAMLError as error:
        raise SpecSyntaxError(Problem(f"YAML error: {error}", source)) from None
    except UnicodeEncodeError as error:  # text (not a file) with a lone surrogate
        line = text.count("\n", 0, error.start) + 1
        raise SpecSyntaxError(
            Problem(f"the text holds a lone surrogate {shown(text[error.start])}", source, line)
        ) from None
    except RecursionError:  # PyYAML's pure-Python parser, where libyaml is missing
        raise SpecSyntaxError(
            Problem(
                f"the YAML nests more than {MAX_DEPTH} levels deep; refusing to load it", source
            )
        ) from None
    values, too_deep = _measure(data)
    if too_deep is not None:
        raise SpecSyntaxError(
            Problem(
                f"the YAML nests lists and mappings more than {MAX_DEPTH} levels deep; "
                f"refusing to load it",
                source,
                getattr(too_deep, "line", None),
            )
        )
    if values > MAX_VALUES:
        raise SpecSyntaxError(
            Problem(
                f"the YAML expands to more than {MAX_VALUES:,} values through its aliases "
                f"(a 'billion laughs'); refusing to load it",
                source,
                getattr(data, "line", None),
            )
        )
    return data


# A spec file larger than this is not read,
MAX_SPEC_BYTES = 4 * 1024 * 1024
# one with more values than this written out is not loaded (PyYAML builds ~70,000 values a
# second: this keeps any file under a second; a ResNet-50 spec holds 1,500),
MAX_NODES = 50_000
# one whose aliases expand past this many values is refused before anything walks it,
MAX_VALUES = 1_000_000
# and so is one nesting lists and mappings deeper than this (real specs nest about 12).
MAX_DEPTH = 100


_NODE_EVENTS = (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent, yaml.AliasEvent)


def _past_max_nodes(text: str) -> int | None:
    """The line of the value past ``MAX_NODES`` (None if there are fewer), counted on
    the parser's events alone, before PyYAML builds anything (libyaml's parser, in C,
    reads about a million events a second)."""
    parser = _Loader(text)
    try:
        count = 0
        while parser.check_event():
            event = parser.get_event()
            if isinstance(event, _NODE_EVENTS):
                count += 1
                if count > MAX_NODES:
                    mark = event.start_mark
                    return int(mark.line) + 1 if mark is not None else 1
        return None
    finally:
        parser.dispose()


def expanded_values(data: Any) -> int:
    """How many values ``data`` holds with every alias expanded, counted without
    expanding: an aliased list or mapping is counted once and reused (capped just past
    ``MAX_VALUES``, and down to ``MAX_DEPTH`` levels).

    >>> shared = [1, 2, 3]
    >>> expanded_values({"a": [shared, shared]})
    10
    """
    return _measure(data)[0]


def _measure(data: Any) -> tuple[int, Any]:
    """``expanded_values(data)``, and the first list or mapping nested more than
    ``MAX_DEPTH`` levels deep (None if there is none); the walk never goes deeper."""
    memo: dict[int, tuple[int, int]] = {}  # id -> (values, levels of nesting)

    class TooDeep(Exception):
        pass

    def count(node: Any, depth: int) -> tuple[int, int]:
        if not isinstance(node, (list, dict)):
            return 1, 0
        known = memo.get(id(node))
        if known is not None:
            if depth + known[1] - 1 > MAX_DEPTH:
                raise TooDeep(node)
            return known
        if depth > MAX_DEPTH:
            raise TooDeep(node)
        memo[id(node)] = (MAX_VALUES + 1, 1)  # a self-referencing alias counts as too many
        items = node.values() if isinstance(node, dict) else node
        total, height = 1, 1
        for item in items:
            values, levels = count(item, depth + 1)
            total += values
            height = max(height, levels + 1)
            if total > MAX_VALUES:
                break
        memo[id(node)] = (total, height)
        return total, height

    try:
        return count(data, 1)[0], None
    except TooDeep as error:
        return MAX_VALUES + 1, error.args[0]


class _Dumper(yaml.SafeDumper):
    """Leaf layers on one line each (``- {type: conv2d, ...}``), blocks spread out."""


def _represent_mapping(dumper: _Dumper, data: dict[str, Any]) -> yaml.MappingNode:
    flow = not any(isinstance(value, (list, dict)) and value for value in data.values())
    flow = flow and "type" in data
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=flow)


def _represent_list(dumper: _Dumper, data: list[Any]) -> yaml.SequenceNode:
    flow = all(isinstance(item, (int, float)) for item in data)  # [3, 224, 224]
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(dict, _represent_mapping)
_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(tuple, lambda dumper, data: _represent_list(dumper, list(data)))


def dump_spec(network: Network, header: str = "") -> str:
    """The spec as YAML that loads back to the same network: fields at their default
    are left out, leaf layers take one line each. ``header`` is a leading comment."""
    data = network.model_dump(mode="json", exclude_defaults=True, by_alias=True)
    data = {"name": network.name, **data, "layers": _tidy(data["layers"])}
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + text


def _tidy(node: Any) -> Any:
    """Layers with ``type`` first, then ``name``; a layer with only a type is its name."""
    if isinstance(node, list):
        return [_tidy(item) for item in node]
    if isinstance(node, dict) and "type" in node:
        if set(node) == {"type"}:
            return node["type"]
        first = {key: node[key] for key in ("type", "name", "from") if key in node}
        return {**first, **{k: _tidy(v) for k, v in node.items() if k not in first}}
    return node


def _looks_like_path(text: str) -> bool:
    return "\n" not in text and (text.endswith((".yaml", ".yml", ".json")) or os.path.exists(text))


def load_spec(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Network, *, source: str = "<string>"
) -> Network:
    """Load and validate a spec from a file path, YAML text, a dict or a ``Network``.
    Errors in YAML text name it ``source`` (``""``: by its line alone, ``line 4: ...``).

    >>> layers = ["flatten", {"type": "Linear", "out_features": 10}]
    >>> net = load_spec({"input": [1, 28, 28], "layers": layers})
    >>> [layer.type for layer in net.layers]
    ['flatten', 'linear']
    """
    if isinstance(spec, Network):
        return spec
    if isinstance(spec, Mapping):
        return build_network(spec, "<dict>")
    if isinstance(spec, os.PathLike) or _looks_like_path(spec):
        source = str(spec)
        text = _read(Path(spec), source)
    else:
        text = spec
    data = parse_yaml(text, source)
    if data is None:
        raise SpecSyntaxError(
            Problem("the spec is empty; it needs at least 'input' and 'layers'", source, 1)
        )
    if not isinstance(data, Mapping):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        raise SpecSyntaxError(
            Problem(
                f"the spec must be a mapping with 'input' and 'layers', got {kind}",
                source,
                getattr(data, "line", 1),
            )
        )
    return build_network(data, source)


def _read(path: Path, source: str) -> str:
    """The file's text (newlines as ``\\n``), read no further than ``MAX_SPEC_BYTES``."""
    try:
        with path.open("rb") as file:  # a bounded read: /dev/zero is a file too
            raw = file.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecSyntaxError(Problem("no such file", source)) from None
    except IsADirectoryError:
        raise SpecSyntaxError(Problem("this is a directory, not a spec file", source)) from None
    except OSError as error:
        raise SpecSyntaxError(Problem(f"cannot read the file: {error.strerror}", source)) from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecSyntaxError(
            Problem(
                f"the file is larger than {MAX_SPEC_BYTES:,} bytes; specs are a few kilobytes, "
                f"so it is not read",
                source,
            )
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise SpecSyntaxError(
            Problem(f"the file is not UTF-8 text (byte {error.start})", source, line)
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as text mode reads it


def build_network(data: Mapping[str, Any], source: str) -> Network:
    """Validate raw spec data, turning pydantic's errors into located ``Problem``s."""
    try:
        network = Network.model_validate(data)
    except ValidationError as error:
        problems = [_locate(data, e, source) for e in error.errors(include_url=False)]
        raise SpecValidationError(_merge_misspellings(problems)) from None
    network._source = source
    return network


def with_overrides(
    network: Network,
    *,
    input: Sequence[int] | None = None,
    batch_size: int | None = None,
    dtype: str | None = None,
) -> Network:
    """A copy of ``network`` with the input shape, batch size or dtype replaced."""
    data: dict[str, Any] = {name: getattr(network, name) for name in Network.model_fields}
    if network.inputs is not None:  # several inputs: input is the first one's shape
        del data["input"]
        if input is not None:
            first = next(iter(network.inputs))
            data["inputs"] = {**network.inputs, first: list(input)}
    elif input is not None:
        data["input"] = list(input)
    if batch_size is not None:
        data["batch_size"] = batch_size
    if dtype is not None:
        data["dtype"] = dtype
    return build_network(data, network.source or "<spec>")


# -- turning pydantic's loc into file:line, layer path and field ------------------------

_CHILD_SEGMENTS = {"residual": {"layers": "body", "shortcut": "shortcut"}}


def _locate(data: Any, error: Any, source: str) -> Problem:
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, ExpansionError):  # it names the layer itself
        return Problem(
            str(cause), source, cause.line or getattr(data, "line", None), cause.path, cause.name
        )
    loc = list(error["loc"])
    node: Any = data
    line: int | None = getattr(data, "line", None)
    path: list[str] = []
    layer: Any = None  # the innermost layer mapping (or bare name) reached
    field: str | None = None
    index = 0
    while index < len(loc):
        key = loc[index]
        index += 1
        if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            node = node[key]
            path.append(str(key))
            if _is_layer(node):
                layer = node
            line = getattr(node, "line", line)
            continue
        if isinstance(node, Mapping) and key in node:
            kind = str(node.get("type", "")).lower() if node is layer else None
            value = node[key]
            line = getattr(node, "key_lines", {}).get(key, line)
            if node is data and key == "layers":
                path.append("layers")
            elif (
                kind in BLOCK_TYPES
                and isinstance(value, list)
                and key in ("layers", "shortcut", "branches")
            ):
                if kind == "residual":
                    path.append(_CHILD_SEGMENTS["residual"][key])
                elif kind == "concat":
                    path.append("branches")
                elif kind == "repeat" and len(value) > 1:
                    path.append("0")  # the first copy
            else:
                field = str(key)
                # without the union members pydantic names (function-plain[...], list[...])
                rest = [str(k) for k in loc[index:] if not (isinstance(k, str) and "[" in k)]
                if rest:
                    field += "." + ".".join(rest)
                break
            node = value
            continue
        # A key the data does not have (a missing field).
        if isinstance(key, str):
            field = key
            break
    message = _message(error, field, layer)
    layer_path = ".".join(path) if layer is not None else None
    name = layer.get("name") if isinstance(layer, Mapping) else None
    return Problem(message, source, line, layer_path, name if isinstance(name, str) else None)


def _merge_misspellings(problems: list[Problem]) -> list[Problem]:
    """A misspelt field also reports the real one missing: keep only the misspelling."""
    suggested = {
        (p.path, p.message.rsplit("did you mean ", 1)[-1].strip("'?"))
        for p in problems
        if p.message.startswith("unknown field") and "did you mean" in p.message
    }
    return [
        p
        for p in problems
        if not (
            p.message.startswith("missing required field")
            and (p.path, p.message.rsplit(" ", 1)[-1].strip("'")) in suggested
        )
    ]


def _is_layer(node: Any) -> bool:
    return isinstance(node, str) or (isinstance(node, Mapping) and "type" in node)


def _message(error: Any, field: str | None, layer: Any) -> str:
    kind = error["type"]
    text = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "extra_forbidden" and field is not None:
        known: list[str] = list(Network.model_fields)
        if isinstance(layer, Mapping):
            cls = LAYER_TYPES.get(str(layer.get("type", "")).lower())
            known = (
                [info.alias or f for f, info in cls.model_fields.items() if f != "line"]
                if cls
                else []
            )
        return f"unknown field {shown(field)}{suggest(field, known)}"
    if kind == "missing" and field is not None:
        return f"missing required field {field!r}"
    if text.startswith("Input should be"):
        text = "must be" + text.removeprefix("Input should be")
        text += f", got {shown(error['input'])}"
    elif text.startswith("List should have"):
        text = "must have" + text.removeprefix("List should have")
    return f"{field}: {text}" if field else text
