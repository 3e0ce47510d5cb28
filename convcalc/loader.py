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
from convcalc.spec import BLOCK_TYPES, LAYER_TYPES, Network, suggest

__all__ = [
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


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Any:
    data = _LineDict()
    data.line = node.start_mark.line + 1
    yield data
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = key_node.value
        line = key_node.start_mark.line + 1
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {seen[key]})",
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


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def parse_yaml(text: str, source: str) -> Any:
    """YAML text as Python data with line numbers; syntax errors as ``SpecSyntaxError``."""
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else None
        problem = error.problem or "cannot parse"
        if "could not determine a constructor" in problem:
            tag = problem.split("tag ", 1)[-1]
            problem = (
                f"the YAML tag {tag} is refused: specs are loaded safely and tags that "
                f"construct objects are not allowed"
            )
        else:
            column = f" (column {mark.column + 1})" if mark else ""
            problem = f"YAML syntax error: {problem}{column}"
        raise SpecSyntaxError(Problem(problem, source, line)) from None
    except yaml.YAMLError as error:
        raise SpecSyntaxError(Problem(f"YAML error: {error}", source)) from None
    values = expanded_values(data)
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


# A spec whose aliases expand past this many values is refused before anything walks it.
MAX_VALUES = 1_000_000


def expanded_values(data: Any) -> int:
    """How many values ``data`` holds with every alias expanded, counted without
    expanding: an aliased list or mapping is counted once and reused (capped just past
    ``MAX_VALUES``).

    >>> shared = [1, 2, 3]
    >>> expanded_values({"a": [shared, shared]})
    10
    """
    memo: dict[int, int] = {}

    def count(node: Any) -> int:
        if not isinstance(node, (list, dict)):
            return 1
        key = id(node)
        if key in memo:
            return memo[key]
        memo[key] = MAX_VALUES + 1  # a self-referencing alias counts as too many
        items = node.values() if isinstance(node, dict) else node
        total = 1
        for item in items:
            total += count(item)
            if total > MAX_VALUES:
                break
        memo[key] = total
        return total

    return count(data)


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


def load_spec(spec: str | os.PathLike[str] | Mapping[str, Any] | Network) -> Network:
    """Load and validate a spec from a file path, YAML text, a dict or a ``Network``.

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
        path = Path(spec)
        source = str(spec)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SpecSyntaxError(Problem("no such file", source)) from None
        except UnicodeDecodeError:
            raise SpecSyntaxError(Problem("the file is not UTF-8 text", source)) from None
        except OSError as error:
            raise SpecSyntaxError(
                Problem(f"cannot read the file: {error.strerror}", source)
            ) from None
    else:
        text, source = spec, "<string>"
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
                rest = [str(k) for k in loc[index:]]
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
        return f"unknown field {field!r}{suggest(field, known)}"
    if kind == "missing" and field is not None:
        return f"missing required field {field!r}"
    if text.startswith("Input should be"):
        text = "must be" + text.removeprefix("Input should be")
        text += f", got {shown(error['input'])}"
    elif text.startswith("List should have"):
        text = "must have" + text.removeprefix("List should have")
    return f"{field}: {text}" if field else text
