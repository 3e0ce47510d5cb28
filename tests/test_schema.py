"""``convcalc schema``: the JSON Schema validates every shipped spec and documented example
with the jsonschema package, refuses what convcalc refuses, and is the committed file."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

import convcalc
from convcalc.cli import cli
from convcalc.schema import spec_schema, spec_schema_text

from .conftest import ROOT, SPECS_DIR

SCHEMA_FILE = ROOT / "schema" / "convcalc-spec.schema.json"
SPEC_FILES = sorted(SPECS_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def validator():
    schema = spec_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.stem)
def test_every_shipped_spec_is_valid_and_points_at_the_schema(path, validator):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# yaml-language-server: $schema=../schema/convcalc-spec.schema.json\n")
    errors = [error.message for error in validator.iter_errors(yaml.safe_load(text))]
    assert errors == []


def test_documented_examples_are_valid(validator):
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```yaml\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
            errors = [e.message for e in validator.iter_errors(yaml.safe_load(block))]
            assert errors == [], (doc.name, block[:80])


GOOD = [
    ["relu", {"type": "Conv2d", "out_channels": 4, "kernel_size": [3, 1], "padding": "same"}],
    [{"type": "residual", "layers": ["relu"], "shortcut": []}],
    [{"type": "concat", "branches": [[], ["relu", {"type": "maxpool2d", "kernel_size": 1}]]}],
    [{"type": "repeat", "times": 2, "layers": [{"type": "linear", "out_features": 3}]}],
    [{"type": "dropout", "p": 0.5, "trainable": False, "name": "drop"}],
]
BAD = [
    [{"type": "conv2d", "out_channels": 4, "kernal_size": 3}],  # misspelt field
    ["dense"],  # unknown type
    [{"type": "conv2d", "out_channels": 0, "kernel_size": 3}],  # below the minimum
    [{"type": "dropout", "p": 1.5}],  # not a probability
    [{"type": "residual", "layers": []}],  # an empty body
    [{"type": "sequential", "layers": ["relu", {"type": "linear"}]}],  # missing out_features
]


@pytest.mark.parametrize("layers", GOOD, ids=str)
def test_schema_accepts_what_convcalc_accepts(layers, validator):
    spec = {"input": [4, 8, 8], "layers": layers}
    assert list(validator.iter_errors(spec)) == []
    convcalc.load_spec(spec)


@pytest.mark.parametrize("layers", BAD, ids=str)
def test_schema_refuses_what_convcalc_refuses(layers, validator):
    spec = {"input": [4, 8, 8], "layers": layers}
    assert list(validator.iter_errors(spec)) != []
    with pytest.raises(convcalc.SpecValidationError):
        convcalc.load_spec(spec)


def test_schema_is_narrower_on_the_spelling_of_types(validator):
    """convcalc takes any case; the schema, two spellings (documented)."""
    spec = {"input": [4, 8, 8], "layers": [{"type": "conv2D", "out_channels": 4, "kernel_size": 3}]}
    assert list(validator.iter_errors(spec)) != []
    convcalc.load_spec(spec)


def test_top_level_x_keys_and_nothing_else(validator):
    assert list(validator.iter_errors({"input": [1], "layers": ["relu"], "x-defs": {}})) == []
    assert list(validator.iter_errors({"input": [1], "layers": ["relu"], "extra": 1})) != []


def test_the_committed_schema_is_current():
    assert SCHEMA_FILE.read_text(encoding="utf-8") == spec_schema_text(), (
        "run: convcalc schema -o schema/convcalc-spec.schema.json"
    )


def test_cli_prints_and_writes(tmp_path):
    printed = CliRunner().invoke(cli, ["schema"])
    assert printed.exit_code == 0 and json.loads(printed.stdout) == spec_schema()
    target = tmp_path / "schema.json"
    assert CliRunner().invoke(cli, ["schema", "-o", str(target)]).exit_code == 0
    assert target.read_text(encoding="utf-8") == spec_schema_text()
