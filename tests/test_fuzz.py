"""Fuzzing the loader and the CLI with hypothesis: spec-like YAML, random text, raw bytes
and mutations of the example specs in ``specs/``.

Whatever the input, the library returns a report or raises a ``ConvCalcError`` (never
an ``AttributeError``, ``RecursionError``, a pydantic ``ValidationError``...), and
``convcalc shape`` and ``convcalc check`` exit 0 or 1, print no traceback and, on exit
1, a message under 2 KB. The CLI runs in-process through click's ``CliRunner``; a few
fixed inputs also run as real processes, for the real exit codes.

The default run is a few hundred examples (seconds). A thorough local run sets the
number of examples of every test here::

    CONVCALC_FUZZ_EXAMPLES=5000 pytest -q tests/test_fuzz.py

Inputs the fuzzer once broke are kept in ``FOUND`` (refused) and ``FOUND_VALID``
(answered), and two closed forms that replaced loops which hung are checked against the
loops.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import convcalc
from convcalc.cli import cli
from convcalc.errors import ConvCalcError
from convcalc.formulas import adaptive_window, adaptive_window_widths
from convcalc.layers import _window_warnings
from convcalc.spec import LAYER_TYPES

from .conftest import SPEC_FILES

MAX_MESSAGE = 2048  # bytes of an error message, at most


def _examples(default: int) -> int:
    return int(os.environ.get("CONVCALC_FUZZ_EXAMPLES", default))


def _fuzz(default: int) -> settings:
    return settings(
        max_examples=_examples(default),
        deadline=None,  # timing is the benchmarks' business, not the tests'
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _answer(path: Path) -> None:
    """The library and both commands answer ``path`` with a result or one short message."""
    try:
        convcalc.analyze(path)
    except ConvCalcError as error:
        message = str(error)
        size = len(message.encode())
        assert 0 < size < MAX_MESSAGE, message[:300]
    runner = CliRunner()
    for command in ("shape", "check"):
        result = runner.invoke(cli, [command, str(path)])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # the traceback the user would have seen
        output, stderr = result.output, result.stderr
        assert result.exit_code in (0, 1), output[:300]
        assert "Traceback" not in output
        if result.exit_code == 1:
            size = len(stderr.encode())
            assert stderr.startswith("error: "), stderr[:300]
            assert size < MAX_MESSAGE, stderr[:300]


# -- spec-like YAML ----------------------------------------------------------------------

KEYS = [
    *("type", "name", "from", "channels", "in_channels", "out_channels", "out_features"),
    *("in_features", "kernel_size", "stride", "padding", "dilation", "groups", "bias"),
    *("output_padding", "padding_mode", "ceil_mode", "times", "layers", "shortcut"),
    *("branches", "scale_factor", "size", "mode", "output_size", "p", "dim", "order"),
    *("chunks", "split_size_or_sections", "unflattened_size", "normalized_shape"),
    *("num_groups", "upscale_factor", "downscale_factor", "start_dim", "end_dim", "frozen"),
    *("trainable", "value", "num_parameters", "eps", "momentum", "inplace"),
]
TOP_KEYS = [
    *("version", "name", "input", "inputs", "batch_size", "dtype", "blocks", "outputs"),
    "budget",
]
BUDGET_VALUES = ["5M", "5Mi", "200MiB", "1.5GB", "20ms", "0", "-1", "1e400", "5 M", "MiB", 10**30]
BLOCK_NAMES = ["stage", "block"]
TYPES = [*sorted(LAYER_TYPES), "Conv2D", "conv9d", "", *BLOCK_NAMES]
NAMES = ["stem", "a", "b", "halves", "halves.0", "input", "stage", "n" * 2100]
ANCHORS = ["a", "b", "c"]  # x-a: a layer, x-b: a list of layers, x-c: anything


def _opaque(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The strategy as one branch of a ``one_of`` (which otherwise flattens nested ones and
    picks among all their branches)."""
    return strategy.map(lambda value: value)


SMALL = st.integers(1, 8)
BIG = st.sampled_from([1000, 10**6, 10**12, 2**62, 2**63 - 1, 1e12, 1e300])
# longer than a message may be, quoted whole
LONG = st.sampled_from([[1] * 1000, [2, 0] * 500, "x" * 2100, "c+" * 1050 + "c"])
ODD_NUMBERS = st.one_of(
    st.sampled_from([0, -1, -2, 64, 224, 10**6, 10**9, 2**31, 2**63 - 1, 2**63, 10**40]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, 1.5, 1e300, -0.0, 1e-300]),
)
WORDS = st.one_of(
    st.sampled_from(TYPES),
    st.sampled_from(KEYS),
    st.sampled_from(NAMES),
    st.sampled_from(["same", "valid", "c // 2", "w * 4", "2 ** 99", "c / 0", "x-", "<<"]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=12),
)


class Alias:
    """``*name`` in the emitted YAML (``<<: *name`` as a mapping's merge key)."""

    def __init__(self, name: str) -> None:
        self.name = name


ALIASES = st.builds(Alias, st.sampled_from(ANCHORS))
ODD = _opaque(st.one_of(ODD_NUMBERS, WORDS, st.booleans(), st.none(), ALIASES))
# Leaves that are nearly right, so that some specs get past validation to the shapes.
TEMPLATES: list[dict[str, Any]] = [
    {"type": "conv2d", "out_channels": 4, "kernel_size": 3},
    {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1},
    {"type": "conv1d", "out_channels": 4, "kernel_size": 3, "dilation": 2},
    {"type": "convtranspose2d", "out_channels": 4, "kernel_size": 2, "stride": 2},
    {"type": "maxpool2d", "kernel_size": 2},
    {"type": "avgpool2d", "kernel_size": 2, "ceil_mode": True},
    {"type": "adaptiveavgpool2d", "output_size": 1},
    {"type": "linear", "out_features": 10},
    {"type": "upsample", "scale_factor": 2},
    {"type": "batchnorm2d"},
    {"type": "groupnorm", "num_groups": 2},
    {"type": "layernorm", "normalized_shape": [8]},
    {"type": "dropout", "p": 0.5},
    {"type": "chunk", "name": "halves", "chunks": 2},
    {"type": "cat", "from": ["halves.0", "halves.1"]},
    {"type": "add", "from": ["a", "b"]},
    {"type": "flatten"},
    {"type": "unflatten", "dim": 1, "unflattened_size": [2, -1]},
    {"type": "permute", "order": [0, 2, 3, 1]},
    {"type": "pixelshuffle", "upscale_factor": 2},
    {"type": "zeropad2d", "padding": 1},
    {"type": "stage", "c": 4},
]
COMMON_TYPES = ["relu", "batchnorm2d", "flatten", "identity", "gelu", "sigmoid", "softmax"]


def _tweak(template: dict[str, Any], changes: dict[str, Any], drop: list[str]) -> dict[str, Any]:
    return {k: v for k, v in {**template, **changes}.items() if k not in drop}


class Kit:
    """The strategies for one kind of spec: ``wild`` ones put any value anywhere (most
    are refused while loading), tame ones only small sizes in the right fields (most
    get to the shapes, where the arithmetic can go wrong)."""

    def __init__(self, wild: bool) -> None:
        self.wild = wild
        odd = ODD if wild else st.nothing()
        small_lists = st.lists(SMALL, min_size=1, max_size=3)
        odd_lists = st.lists(odd, max_size=3) if wild else st.nothing()
        self.values = st.one_of(SMALL, SMALL, SMALL, small_lists, BIG, LONG, odd, odd_lists)
        sizes = st.sampled_from([1, 3, 8, 16, 32])
        self.shapes = st.one_of(
            st.lists(sizes, min_size=1, max_size=4),
            st.lists(sizes, min_size=3, max_size=3),
            odd,
            st.lists(st.one_of(SMALL, odd), max_size=5) if wild else st.nothing(),
        )
        keys = st.sampled_from(KEYS)
        if wild:
            changes = st.dictionaries(keys, self.values, max_size=2)
            drop = st.lists(keys, max_size=1)
        else:
            changes = st.dictionaries(
                st.sampled_from(
                    [
                        *("kernel_size", "stride", "padding", "out_channels", "dilation"),
                        *("chunks", "output_size", "scale_factor", "groups", "upscale_factor"),
                        *("p", "dim"),
                    ]
                ),
                st.one_of(SMALL, SMALL, BIG, LONG),
                max_size=2,
            )
            drop = st.just([])
        self.leaves = _opaque(
            st.one_of(
                st.sampled_from(TYPES if wild else COMMON_TYPES),
                st.sampled_from(TEMPLATES),
                st.builds(_tweak, st.sampled_from(TEMPLATES), changes, drop),
                st.builds(
                    lambda kind, fields: {"type": kind, **fields},
                    st.sampled_from(TYPES),
                    st.dictionaries(keys, self.values, max_size=4),
                )
                if wild
                else st.nothing(),
                st.builds(lambda alias: {"<<": alias, "out_channels": 4}, st.just(Alias("a"))),
                st.just(Alias("a")),
                odd,
            )
        )
        self.layers = self.layer_lists(3)
        self.blocks = st.dictionaries(
            st.sampled_from(BLOCK_NAMES),
            st.one_of(
                st.fixed_dictionaries(
                    {
                        "params": st.one_of(
                            st.fixed_dictionaries({"c": st.one_of(st.none(), SMALL)}),
                            st.dictionaries(
                                st.sampled_from(["c", "n", "x"]), self.values, max_size=3
                            ),
                        ),
                        "layers": st.lists(
                            st.one_of(
                                self.layer(1),
                                st.just(
                                    {"type": "conv2d", "out_channels": "c * 2", "kernel_size": 1}
                                ),
                                st.just({"type": "repeat", "times": "c", "layers": ["relu"]}),
                                st.just({"type": "stage", "c": "c"}),
                            ),
                            min_size=1,
                            max_size=3,
                        ),
                    }
                ),
                st.just({"layers": ["relu"]}),
                odd,
            ),
            max_size=2,
        )

    def layer_lists(self, depth: int) -> st.SearchStrategy[list[Any]]:
        return st.lists(self.layer(depth), min_size=1, max_size=4)

    def layer(self, depth: int) -> st.SearchStrategy[Any]:
        if depth == 0:
            return self.leaves
        inner = self.layer_lists(depth - 1)
        optional = {"name": st.sampled_from(NAMES), "from": st.sampled_from(NAMES)}
        times = st.one_of(SMALL, ODD) if self.wild else SMALL
        blocks = st.one_of(
            st.fixed_dictionaries(
                {"type": st.just("sequential"), "layers": inner}, optional=optional
            ),
            st.fixed_dictionaries(
                {"type": st.just("residual"), "layers": inner},
                optional={"shortcut": st.one_of(inner, st.just([]))},
            ),
            st.fixed_dictionaries(
                {"type": st.just("repeat"), "times": times, "layers": inner}, optional=optional
            ),
            st.fixed_dictionaries(
                {"type": st.just("concat"), "branches": st.lists(st.one_of(inner, st.just([])))}
            ),
            st.fixed_dictionaries(
                {"type": st.sampled_from(BLOCK_NAMES)},
                optional={"c": self.values, "n": self.values, "layers": inner},
            ),
        )
        return st.one_of(self.leaves, blocks)


KITS = {True: Kit(wild=True), False: Kit(wild=False)}


def _scalar_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return ".nan"
        if value in (float("inf"), float("-inf")):
            return "-.inf" if value < 0 else ".inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False)  # double-quoted YAML


def _emit(node: Any) -> str:
    """Flow-style YAML for generated data (aliases and merge keys included)."""
    if isinstance(node, Alias):
        return f"*{node.name}"
    if isinstance(node, list):
        return "[" + ", ".join(_emit(item) for item in node) + "]"
    if isinstance(node, dict):
        items = []
        for key, value in node.items():
            if key == "<<":
                items.append(f"<<: {_emit(value)}")
            else:
                items.append(f"{_scalar_text(key)}: {_emit(value)}")
        return "{" + ", ".join(items) + "}"
    return _scalar_text(node)


def _no_aliases(node: Any) -> Any:
    """An anchor's own value: no aliases (they might name anchors not yet defined)."""
    if isinstance(node, Alias):
        return "relu"
    if isinstance(node, list):
        return [_no_aliases(item) for item in node]
    if isinstance(node, dict):
        return {key: _no_aliases(value) for key, value in node.items() if key != "<<"}
    return node


@st.composite
def spec_texts(draw: st.DrawFn) -> str:
    """A spec-like document: the anchors first, then the top-level keys in any order, and
    sometimes a line of any text anywhere."""
    kit = KITS[draw(st.booleans())]
    anchors = {"a": kit.leaves, "b": kit.layers, "c": st.one_of(kit.layers, kit.values)}
    lines = [f"x-{name}: &{name} {_emit(_no_aliases(draw(anchors[name])))}" for name in ANCHORS]
    if draw(st.integers(0, 9)) == 5:  # an anchor that contains itself
        lines.append("x-d: &d {type: sequential, layers: [relu, *d]}")
    top: dict[str, Any] = {"input": draw(kit.shapes), "layers": draw(kit.layers)}
    if kit.wild:
        for key in draw(st.lists(st.sampled_from(TOP_KEYS), unique=True, max_size=2)):
            top[key] = draw(ODD)
    if draw(st.booleans()):
        top["version"] = 2
        top["blocks"] = draw(kit.blocks)
    if draw(st.integers(0, 4)) == 3:
        values = st.one_of(st.sampled_from(BUDGET_VALUES), kit.values)
        top["budget"] = draw(
            st.dictionaries(
                st.sampled_from(["params", "macs", "activation_memory", "training_memory"]),
                values,
                max_size=3,
            )
            | st.fixed_dictionaries(
                {"latency": st.fixed_dictionaries({"device": WORDS, "max": values})}
            )
        )
    if draw(st.integers(0, 4)) == 3:
        top["inputs"] = {"x": draw(kit.shapes), "y": draw(kit.shapes)}
        top.pop("input")
    order = draw(st.permutations(list(top)))
    lines += [f"{key}: {_emit(top[key])}" for key in order]
    if kit.wild and draw(st.integers(0, 4)) == 3:  # and a line of any text, anywhere
        lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=20)))
    return "\n".join(lines) + "\n"


# Found by this fuzzer (each fixed), kept as regression examples.
FOUND = {
    "deep_lists": "input: [3, 8, 8]\nlayers: " + "[" * 990 + "]" * 990 + "\n",
    "deep_residuals": "input: [3, 8, 8]\nlayers: "
    + "[{type: residual, layers: " * 330
    + "[relu]"
    + "}]" * 330
    + "\n",
    "huge_int": "input: [3, 8, 8]\nlayers: [{type: conv2d, out_channels: 1"
    + "0" * 5000
    + ", kernel_size: 1}]\n",
    "int_past_float": "input: [3, 8, 8]\nlayers: [{type: conv2d, out_channels: 1"
    + "0" * 400
    + ", kernel_size: 1}]\n",
    "infinite_scale": "input: [3, 8, 8]\nlayers: [{type: upsample, scale_factor: .inf}]\n",
    "deep_expression": "version: 2\ninput: [3, 8, 8]\nblocks:\n  b:\n    params: {w: 8}\n"
    "    layers: [{type: conv2d, kernel_size: 1, out_channels: 'w" + "+1" * 20000 + "'}]\n"
    "layers: [b]\n",
    "long_expression": "version: 2\ninput: [3, 8, 8]\nblocks:\n  b:\n    params: {w: 99999}\n"
    "    layers: [{type: conv2d, kernel_size: 1, out_channels: '"
    + "*".join(["w"] * 600)
    + "'}]\nlayers: [b]\n",
    "a_null_block_argument": "version: 2\ninput: [3, 8, 8]\nblocks:\n  b:\n    layers: [relu]\n"
    "layers: [{type: b, null: 1}]\n",
    "split_into_a_trillion_pieces": "input: [3, 8, 1099511627776]\n"
    "layers: [{type: split, dim: 3, split_size_or_sections: 1}]\n",
    "upsampled_past_int64": "input: [3, 8, 8]\n"
    "layers: [{type: repeat, times: 80, layers: [{type: upsample, scale_factor: 2}]}]\n",
    "padded_past_int64": "input: [3, 8, 8]\nlayers: [{type: zeropad2d, padding: "
    "9223372036854775807}]\n",
    "long_names_in_many_problems": "input: [3, 8, 8]\nlayers:\n"
    + f"  - {{type: linear, name: {'n' * 3000}, out_features: {[1] * 500}}}\n" * 6,
    "many_block_parameters": "version: 2\ninput: [3, 8, 8]\nblocks:\n  b:\n    params: {"
    + ", ".join(f"p{i}: 1" for i in range(3000))
    + "}\n    layers: [relu]\nlayers: [{type: b, q: 1}]\n",
    "repeat_times_from_a_parameter": "version: 2\ninput: [3, 8, 8]\nblocks:\n  s:\n"
    "    params: {n: null}\n    layers: [{type: repeat, times: n, layers: [relu]}]\n"
    "layers: [{type: s, n: 1000000000}]\n",
}


# ... and valid specs the fuzzer broke (a hang, an OverflowError), with their output shapes.
FOUND_VALID = {
    "adaptive_pool_to_a_huge_size": "input: [3, 8, 8]\n"
    "layers: [{type: adaptiveavgpool2d, output_size: [9223372036854775807, 3]}]\n",
    "huge_kernel_and_stride": "input: [3, 8, 8]\nlayers: [{type: conv2d, out_channels: 3, "
    "kernel_size: 1000000000000, stride: 1000000000000, padding: 1000000000000}]\n",
    "receptive_field_past_int64": "input: [3, 1, 1]\nlayers: [{type: repeat, times: 250, "
    "layers: [{type: maxpool2d, kernel_size: 1, stride: 4611686018427387904}]}]\n",
}
OUTPUT_SHAPES = {
    "adaptive_pool_to_a_huge_size": (1, 3, 2**63 - 1, 3),
    "huge_kernel_and_stride": (1, 3, 2, 2),
    "receptive_field_past_int64": (1, 3, 1, 1),
}


@pytest.mark.parametrize("case", sorted(FOUND))
def test_inputs_found_by_the_fuzzer(case: str, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(FOUND[case], encoding="utf-8")
    with pytest.raises(ConvCalcError):
        convcalc.analyze(path)
    _answer(path)


@pytest.mark.parametrize("case", sorted(FOUND_VALID))
def test_valid_inputs_found_by_the_fuzzer(case: str, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(FOUND_VALID[case], encoding="utf-8")
    assert convcalc.analyze(path).output_shape == OUTPUT_SHAPES[case]
    _answer(path)


@_fuzz(100)
@given(size=st.integers(1, 300), output_size=st.integers(1, 300))
def test_adaptive_window_widths_are_those_of_every_window(size: int, output_size: int) -> None:
    """The closed form that replaced a walk over every window (output_size 2**63 - 1 hung)."""
    windows = (adaptive_window(size, output_size, i) for i in range(output_size))
    widths = tuple(sorted({end - start for start, end in windows}))
    assert adaptive_window_widths(size, output_size) == widths


@_fuzz(100)
@given(kernel=st.integers(1, 40), stride=st.integers(1, 40), dilation=st.integers(1, 40))
def test_skipped_pixels_are_those_no_tap_reaches(kernel: int, stride: int, dilation: int) -> None:
    """The count that replaced a walk over min(kernel, stride) taps (a stride of 10**12 hung)."""
    _, skipped = _window_warnings((10**6,), (kernel,), (stride,), (0,), (dilation,), (1,))
    reached = len({(tap * dilation) % stride for tap in range(kernel)})
    if reached < stride:
        assert f"{stride - reached} of every {stride} in L" in skipped
    else:
        assert skipped == ""


@_fuzz(150)
@given(text=spec_texts())
@example(text="x-a: &a [*a]\ninput: [3, 8, 8]\nlayers: *a\n")
@example(text="x-a: &a {type: sequential, layers: [*a]}\ninput: [3, 8, 8]\nlayers: [*a]\n")
def test_spec_like_yaml(text: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    _answer(path)


@_fuzz(60)
@given(text=st.text(max_size=300))
def test_any_text(text: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _answer(path)


# -- raw bytes ---------------------------------------------------------------------------

PREFIXES = [b"", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x00", b"\t", b"%YAML 1.1\n---\n"]
VALID = b"input: [3, 8, 8]\nlayers:\n  - {type: conv2d, out_channels: 4, kernel_size: 3}\n"


@st.composite
def raw_bytes(draw: st.DrawFn) -> bytes:
    body = draw(st.one_of(st.binary(max_size=200), st.just(VALID)))
    if draw(st.booleans()):  # bytes spliced into a valid spec
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.binary(max_size=8)) + body[at:]
    return draw(st.sampled_from(PREFIXES)) + body


@_fuzz(60)
@given(raw=raw_bytes())
@example(raw=b"\xef\xbb\xbf" + VALID)
@example(raw=VALID.replace(b"  -", b"\t-"))
@example(raw=VALID + b"\x00")
@example(raw=b"\xff\xfe" + VALID.decode().encode("utf-16-le"))
def test_raw_bytes(raw: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_bytes(raw)
    _answer(path)


# -- mutations of the example specs ------------------------------------------------------

SPEC_TEXTS = {path.name: path.read_text(encoding="utf-8") for path in SPEC_FILES}
NUMBER = re.compile(r"(?<![\w.])-?\d+(\.\d+)?(?![\w.])")
TYPE_VALUE = re.compile(r"(type:\s*)([\w-]+)")
REPLACEMENTS = [
    "0",
    "-1",
    "1",
    "1000000000",
    str(2**63),
    "1" + "0" * 40,
    "1.5",
    "1e300",
    ".inf",
    ".nan",
    "x",
    "null",
    "[]",
    "{}",
    "[1, 2, 3, 4, 5]",
    "'c // 0'",
    "*nowhere",
    "[" + "1, " * 3000 + "1]",
    "x" * 3000,
]


def _mutate(text: str, draw: st.DrawFn) -> str:
    lines = text.splitlines()
    kind = draw(
        st.sampled_from(["delete", "duplicate", "swap", "number", "type", "truncate", "insert"])
    )
    if kind in ("delete", "duplicate", "swap") and lines:
        i = draw(st.integers(0, len(lines) - 1))
        j = draw(st.integers(0, len(lines) - 1))
        if kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        else:
            lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines) + "\n"
    if kind == "number" or kind == "type":
        pattern = NUMBER if kind == "number" else TYPE_VALUE
        matches = list(pattern.finditer(text))
        if not matches:
            return text
        match = draw(st.sampled_from(matches))
        if kind == "number":
            new = draw(st.sampled_from(REPLACEMENTS))
            return text[: match.start()] + new + text[match.end() :]
        new = draw(st.sampled_from([*TYPES, "repeat", "sequential", "Conv4d", "t" * 3000]))
        return text[: match.start(2)] + new + text[match.end(2) :]
    if kind == "truncate":
        return text[: draw(st.integers(0, len(text)))]
    at = draw(st.integers(0, len(text)))
    noise = draw(st.one_of(WORDS, st.sampled_from(["\n", "  ", "- ", ": ", "&", "*"])))
    return text[:at] + noise + text[at:]


@st.composite
def mutated_specs(draw: st.DrawFn) -> str:
    text = SPEC_TEXTS[draw(st.sampled_from(sorted(SPEC_TEXTS)))]
    for _ in range(draw(st.integers(1, 4))):
        text = _mutate(text, draw)
    return text


@_fuzz(120)
@given(text=mutated_specs())
def test_mutated_example_specs(text: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    _answer(path)


# -- a few real processes, for the real exit codes ---------------------------------------

PROCESS_CASES = {
    "valid": (VALID, 0),
    "not_utf8": (b"input: [3, 8, 8]\nlayers: [\xff\xfe]\n", 1),
    "deep_lists": (FOUND["deep_lists"].encode(), 1),
    "huge_int": (FOUND["huge_int"].encode(), 1),
}


@pytest.mark.parametrize("case", sorted(PROCESS_CASES))
def test_real_exit_codes(case: str, tmp_path: Path) -> None:
    raw, code = PROCESS_CASES[case]
    path = tmp_path / "spec.yaml"
    path.write_bytes(raw)
    for command in ("shape", "check"):
        done = subprocess.run(
            [sys.executable, "-m", "convcalc", command, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == code, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        if code:
            assert done.stderr.startswith("error: ")
            assert len(done.stderr.encode()) < MAX_MESSAGE
