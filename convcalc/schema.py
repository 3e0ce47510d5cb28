"""The JSON Schema of the spec format, generated from the pydantic models, for editors
(yaml-language-server) and for validating specs with any JSON Schema tool.

The schema is a little narrower than convcalc: a layer ``type`` is the lower-case name
(``conv2d``) or the ``torch.nn`` spelling (``Conv2d``), while convcalc accepts any case.
"""

from __future__ import annotations

import json
from typing import Any

from convcalc.layers import LEAF_CLASSES
from convcalc.merges import MERGE_CLASSES
from convcalc.spec import BLOCK_CLASSES, LAYER_PLACEHOLDER, Network

__all__ = ["SCHEMA_ID", "spec_schema", "spec_schema_text"]

SCHEMA_ID = "https://convcalc.dev/schema/spec-v2.json"
_REF = "#/$defs/{model}"


def spec_schema() -> dict[str, Any]:
    """The schema of a whole spec file (draft 2020-12)."""
    schema = Network.model_json_schema(ref_template=_REF)
    # top-level keys starting with x- hold YAML anchors (as in docker compose)
    schema["patternProperties"] = {"^x-": {}}
    # one input shape, or several by name
    schema["required"] = [key for key in schema["required"] if key != "input"]
    schema["oneOf"] = [{"required": ["input"]}, {"required": ["inputs"]}]
    definitions: dict[str, Any] = schema.setdefault("$defs", {})
    bare_names: list[str] = []
    classes = (*LEAF_CLASSES, *MERGE_CLASSES, *BLOCK_CLASSES)
    for cls in classes:
        model = cls.model_json_schema(ref_template=_REF)
        definitions.update(model.pop("$defs", {}))
        names = _type_names(cls)
        model["properties"]["type"] = {"enum": names, "title": "Type"}
        definitions[cls.__name__] = model
        if cls not in BLOCK_CLASSES:
            bare_names += names
    every_name = [name for cls in classes for name in _type_names(cls)]
    # A use of a parameterised block: its type is a name from the spec's blocks (which a
    # schema cannot look up), its other keys the block's parameters.
    definitions["BlockCall"] = {
        "title": "BlockCall",
        "description": "A use of a block from the spec's blocks, with its arguments.",
        "type": "object",
        "required": ["type"],
        # lower case here, so a layer type in the wrong case is not taken for a block
        "properties": {
            "type": {
                "type": "string",
                "pattern": "^[a-z_][a-z0-9_-]*$",
                "not": {"enum": every_name},
            }
        },
    }
    definitions["Layer"] = {
        "title": "Layer",
        "description": "A layer or block: a mapping with a type, or just a layer's type name.",
        "anyOf": [
            *({"$ref": _REF.format(model=cls.__name__)} for cls in classes),
            {"$ref": _REF.format(model="BlockCall")},
            {"type": "string", "enum": bare_names},
        ],
    }
    full = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "convcalc spec (versions 1 and 2)",
    }
    replaced: dict[str, Any] = _replace_placeholder(full)
    return replaced


def spec_schema_text() -> str:
    """The schema as the file ``convcalc schema`` writes."""
    return json.dumps(spec_schema(), indent=2, ensure_ascii=False) + "\n"


def _replace_placeholder(node: Any) -> Any:
    if node == LAYER_PLACEHOLDER:
        return {"$ref": _REF.format(model="Layer")}
    if isinstance(node, dict):
        return {key: _replace_placeholder(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_replace_placeholder(value) for value in node]
    return node


def _type_names(cls: type) -> list[str]:
    """The lower-case type names of a model class, and their torch.nn spellings."""
    lower = list(cls.model_fields["type"].annotation.__args__)  # type: ignore[attr-defined]
    torch_names = [n for n in getattr(cls, "torch_names", ()) if n not in lower]
    return lower + torch_names
