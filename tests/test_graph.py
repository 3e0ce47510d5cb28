"""Spec version 2, a graph: ``from:``, merges, splits, several inputs and outputs,
parameterised blocks. torch is the referee for every number (shapes of every output,
parameters, MACs), random graphs included; every bad input is one located sentence."""

from __future__ import annotations

import re
import textwrap

import pytest
import torch
import yaml
from click.testing import CliRunner
from hypothesis import given, note, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import convcalc
from convcalc.cli import cli
from convcalc.errors import ConvCalcError
from convcalc.export import export_pytorch
from convcalc.expressions import ExpressionError, evaluate
from convcalc.graph import lower
from convcalc.torch_bridge import build_module
from convcalc.verify import verify
from tests.test_training_memory import torch_saved_bytes

SKIP_CAT = """
version: 2
input: [3, 16, 16]
layers:
  - {type: conv2d, name: c1, out_channels: 8, kernel_size: 3, padding: 1}
  - relu
  - {type: maxpool2d, kernel_size: 2}
  - {type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
  - {type: upsample, name: up, scale_factor: 2}
  - {type: cat, from: [c1, up]}
"""

SE_GATE = """
version: 2
input: [16, 12, 12]
layers:
  - {type: conv2d, name: x, out_channels: 16, kernel_size: 3, padding: 1, bias: false}
  - {type: adaptiveavgpool2d, output_size: 1}
  - {type: conv2d, out_channels: 4, kernel_size: 1}
  - silu
  - {type: conv2d, out_channels: 16, kernel_size: 1}
  - {type: sigmoid, name: gate}
  - {type: mul, from: [x, gate]}
"""

SPLIT_SHUFFLE = """
version: 2
input: [8, 10, 10]
layers:
  - {type: chunk, name: halves, chunks: 2}
  - {type: conv2d, from: halves.1, out_channels: 4, kernel_size: 3, padding: 1, groups: 4}
  - {type: batchnorm2d, name: right}
  - {type: cat, from: [halves.0, right]}
  - {type: channelshuffle, groups: 2}
  - {type: split, name: three, split_size_or_sections: [2, 3, 3]}
  - {type: add, from: [three.1, three.2]}
"""

TWO_INPUTS_THREE_OUTPUTS = """
version: 2
inputs: {image: [3, 32, 32], depth: [1, 32, 32]}
outputs: [p3, p4, p5]
layers:
  - {type: conv2d, name: rgb, out_channels: 8, kernel_size: 3, padding: 1}
  - {type: conv2d, name: d, from: depth, out_channels: 8, kernel_size: 3, padding: 1}
  - {type: add, name: fused, from: [rgb, d]}
  - {type: conv2d, name: p3, out_channels: 16, kernel_size: 3, stride: 2, padding: 1}
  - {type: conv2d, name: p4, out_channels: 32, kernel_size: 3, stride: 2, padding: 1}
  - {type: conv2d, name: p5, out_channels: 64, kernel_size: 3, stride: 2, padding: 1}
"""

BLOCKS = """
version: 2
input: [3, 32, 32]
blocks:
  bottleneck:
    params: {width: null, stride: 1, expand: 4}
    layers:
      - {type: conv2d, out_channels: width, kernel_size: 1, bias: false}
      - batchnorm2d
      - relu
      - {type: conv2d, out_channels: width, kernel_size: 3, stride: stride, padding: 1, bias: false}
      - batchnorm2d
      - relu
      - {type: conv2d, out_channels: width * expand, kernel_size: 1, bias: false}
      - {type: batchnorm2d, name: body}
      - {type: conv2d, from: input, out_channels: width * expand, kernel_size: 1,
         stride: stride, bias: false}
      - {type: batchnorm2d, name: shortcut}
      - {type: add, from: [body, shortcut]}
      - relu
layers:
  - {type: conv2d, out_channels: 16, kernel_size: 3, padding: 1}
  - {type: bottleneck, width: 8}
  - {type: bottleneck, width: 16, stride: 2, expand: 2}
  - {type: adaptiveavgpool2d, output_size: 1}
  - flatten
  - {type: linear, out_features: 10}
"""

# a from: inside a v1 residual body reaching a layer before the block
REACHING_OUT = """
version: 2
input: [4, 8, 8]
layers:
  - {type: conv2d, name: early, out_channels: 4, kernel_size: 1}
  - relu
  - type: residual
    name: res
    layers:
      - {type: conv2d, name: inner, out_channels: 4, kernel_size: 3, padding: 1}
      - {type: mul, from: [inner, early]}
  - {type: cat, from: [early, res]}
"""

SPECS = {
    "skip_cat": SKIP_CAT,
    "se_gate": SE_GATE,
    "split_shuffle": SPLIT_SHUFFLE,
    "two_inputs_three_outputs": TWO_INPUTS_THREE_OUTPUTS,
    "blocks": BLOCKS,
    "reaching_out": REACHING_OUT,
}


def torch_numbers(spec: str) -> dict:
    """What torch says of the module built from the spec: every output's shape,
    parameters, MACs (FlopCounterMode's FLOPs / 2)."""
    report = convcalc.analyze(spec)
    module = build_module(spec).eval()
    inputs = [torch.randn(shape) for shape in report.input_shapes.values()]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        outputs = module(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return {
        "outputs": [tuple(output.shape) for output in outputs],
        "params": sum(p.numel() for p in module.parameters()),
        "macs": counter.get_total_flops() // 2,
    }


def calculator_numbers(spec: str) -> dict:
    report = convcalc.analyze(spec)
    return {
        "outputs": list(report.outputs.values()),
        "params": report.totals.params,
        "macs": report.totals.macs,
    }


@pytest.mark.parametrize("name", SPECS)
def test_graph_specs_agree_with_torch(name):
    spec = SPECS[name]
    assert calculator_numbers(spec) == torch_numbers(spec)


@pytest.mark.parametrize("name", SPECS)
def test_graph_specs_verify_layer_by_layer(name):
    report = verify(SPECS[name])
    assert report.ok, report.first_difference()


@pytest.mark.parametrize("name", SPECS)
def test_exported_graph_reproduces_build_module(tmp_path, name):
    spec = SPECS[name]
    source = export_pytorch(spec, class_name="Exported")
    namespace: dict = {}
    exec(compile(source, str(tmp_path / "exported.py"), "exec"), namespace)
    exported = namespace["Exported"]().eval()
    built = build_module(spec).eval()
    exported.load_state_dict(built.state_dict())  # the same parameter names
    report = convcalc.analyze(spec)
    inputs = [torch.randn(shape) for shape in report.input_shapes.values()]
    with torch.no_grad():
        a, b = exported(*inputs), built(*inputs)
    a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_two_outputs_are_reported_by_name():
    report = convcalc.analyze(TWO_INPUTS_THREE_OUTPUTS)
    assert report.outputs == {
        "p3": (1, 16, 16, 16),
        "p4": (1, 32, 8, 8),
        "p5": (1, 64, 4, 4),
    }
    assert report.input_shapes == {"image": (1, 3, 32, 32), "depth": (1, 1, 32, 32)}
    data = report.to_dict()
    assert data["outputs"]["p5"] == [1, 64, 4, 4]
    assert "p5" in report.render()  # every output's shape is shown


def test_a_split_row_shows_every_piece():
    report = convcalc.analyze(SPLIT_SHUFFLE)
    row = report.row("three")
    assert row.output_shapes == ((1, 2, 10, 10), (1, 3, 10, 10), (1, 3, 10, 10))
    assert report.row("layers.6").sources == ("layers.5.1", "layers.5.2")


def test_se_gate_field_is_the_local_one():
    """The gate is global context broadcast over the map: the field reported is that of
    the convolution path (verify measures it with the gate detached)."""
    report = convcalc.analyze(SE_GATE)
    assert report.rows[-1].receptive_field.to_dict()["size"] == [3, 3]


def test_v1_specs_lower_to_the_same_rows(tmp_path):
    """Blocks are sugar: a v1 residual and the same network written flat with from:
    analyse to the same totals."""
    v1 = convcalc.analyze(
        textwrap.dedent("""
        input: [4, 8, 8]
        layers:
          - type: residual
            layers: [{type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}, relu]
            shortcut: [{type: conv2d, out_channels: 4, kernel_size: 1}]
        """)
    )
    v2 = convcalc.analyze(
        textwrap.dedent("""
        version: 2
        input: [4, 8, 8]
        layers:
          - {type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}
          - {type: relu, name: body}
          - {type: conv2d, name: short, from: input, out_channels: 4, kernel_size: 1}
          - {type: add, from: [body, short]}
        """)
    )
    same = ("params", "trainable_params", "buffers", "macs", "activation_bytes", "saved_bytes")
    assert [getattr(v1.totals, k) for k in same] == [getattr(v2.totals, k) for k in same]
    assert v1.output_shape == v2.output_shape
    assert v1.row("layers.0").receptive_field == v2.rows[-1].receptive_field


def test_graph_is_lowered_once_per_network():
    network = convcalc.load_spec(BLOCKS)
    assert lower(network) is lower(network)


# -- bad input: one sentence naming file, line and layer path ------------------------------

BAD = [
    (
        "layers:\n  - {type: conv2d, name: conv1, out_channels: 4, kernel_size: 3}\n"
        "  - {type: relu, from: convl}\n",
        r"spec\.yaml:5: layers\.1: from: no earlier layer is named 'convl'; did you mean "
        r"'conv1'\?",
    ),
    (
        "layers:\n  - {type: relu, from: later}\n  - {type: relu, name: later}\n",
        r"spec\.yaml:4: layers\.0: from: 'later' is not an earlier layer: .*cycle",
    ),
    (
        "layers:\n  - {type: conv2d, name: a, out_channels: 4, kernel_size: 3}\n"
        "  - {type: conv2d, name: b, from: input, out_channels: 5, kernel_size: 3}\n"
        "  - {type: add, from: [a, b]}\n",
        r"spec\.yaml:6: layers\.2: add: a \[1, 4, 6, 6\] and b \[1, 5, 6, 6\] cannot be "
        r"broadcast together",
    ),
    (
        "outputs: [p3]\nlayers:\n  - relu\n",
        r"spec\.yaml: outputs: no earlier layer is named 'p3'",
    ),
    (
        "blocks:\n  cb: {params: {c: null}, layers: [{type: conv2d, out_channels: c, "
        "kernel_size: 1}]}\nlayers:\n  - {type: cb, c: 4, k: 3}\n",
        r"spec\.yaml:6: layers\.0: block 'cb' has no parameter 'k'; its parameters are c",
    ),
    (
        "blocks:\n  cb: {params: {c: null}, layers: [{type: conv2d, out_channels: c, "
        "kernel_size: 1}]}\nlayers:\n  - {type: cb}\n",
        r"spec\.yaml:6: layers\.0: block 'cb' needs 'c'",
    ),
    (
        "blocks:\n  cb: {params: {c: null}, layers: [{type: conv2d, out_channels: c / 3, "
        "kernel_size: 1}]}\nlayers:\n  - {type: cb, c: 4}\n",
        r"spec\.yaml:6: layers\.0: block 'cb': 'c / 3' is not an integer: 4 / 3",
    ),
    (
        "blocks:\n  cb: {params: {c: null}, layers: [{type: conv2d, out_channels: c // 0, "
        "kernel_size: 1}]}\nlayers:\n  - {type: cb, c: 4}\n",
        r"spec\.yaml:6: layers\.0: block 'cb': 'c // 0' divides by zero",
    ),
    (
        "blocks:\n  cb: {params: {c: null}, layers: [{type: conv2d, out_channels: c, "
        "kernel_size: 0}]}\nlayers:\n  - {type: cb, c: 4}\n",
        r"spec\.yaml:6: layers\.0: in block 'cb', at 0\.kernel_size \(line 4\)",
    ),
    (
        "blocks:\n  cb: {params: {c: null}, layers: [{type: conv2d, out_channels: c, "
        "kernel_size: 1, bogus: 2}]}\nlayers:\n  - {type: cb, c: 4}\n",
        r"spec\.yaml:6: layers\.0: in block 'cb', at 0 \(line 4\): unknown field 'bogus'",
    ),
    (
        "blocks:\n  loop: {layers: [{type: loop}]}\nlayers:\n  - {type: loop}\n",
        r"block 'loop' uses itself \(loop -> loop\)",
    ),
    (
        "layers:\n  - {type: chunk, name: c, chunks: 2}\n  - relu\n",
        r"spec\.yaml:5: layers\.1: layers\.0 \(c\) has 2 outputs; take one of them: c\.0 "
        r"to c\.1",
    ),
    (
        "layers:\n  - {type: chunk, name: c, chunks: 2}\n  - {type: relu, from: c.2}\n",
        r"layers\.0 \(c\) has 2 outputs \(c\.0 to c\.1\); there is no c\.2",
    ),
    (
        "layers:\n  - {type: conv2d, name: c, out_channels: 4, kernel_size: 1}\n"
        "  - {type: relu, from: [input, c]}\n",
        r"relu takes one input, got 2",
    ),
    (
        "blocks:\n  conv2d: {layers: [relu]}\nlayers: [relu]\n",
        r"blocks: 'conv2d' is already a layer type",
    ),
]


@pytest.mark.parametrize(("body", "message"), BAD)
def test_bad_graphs_are_one_located_sentence(write_spec, body, message):
    path = write_spec("version: 2\ninput: [3, 8, 8]\n" + body)
    result = CliRunner().invoke(cli, ["shape", str(path)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert re.search(message, result.output), result.output
    assert len(result.output.strip().splitlines()) <= 2


def test_an_unused_layer_is_a_warning_not_an_error(write_spec):
    path = write_spec(
        "version: 2\ninput: [3, 8, 8]\nlayers:\n"
        "  - {type: conv2d, name: lost, out_channels: 4, kernel_size: 3}\n"
        "  - {type: conv2d, from: input, out_channels: 4, kernel_size: 3}\n"
    )
    result = CliRunner().invoke(cli, ["shape", str(path)])
    assert result.exit_code == 0, result.output
    assert "layers.0 (lost): its output is never used" in result.output


def test_an_unused_input_is_a_warning():
    report = convcalc.analyze({"inputs": {"a": [3, 8, 8], "b": [3, 8, 8]}, "layers": ["relu"]})
    assert any("the input 'b' is never used" in str(w) for w in report.warnings)


def test_input_and_inputs_together_are_refused():
    with pytest.raises(ConvCalcError, match=r"either input .* or inputs"):
        convcalc.analyze({"input": [3], "inputs": {"a": [3]}, "layers": ["relu"]})


# -- the evaluator ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "names", "value"),
    [
        ("width * expand", {"width": 64, "expand": 4}, 256),
        ("(k - 1) // 2", {"k": 7}, 3),
        ("-c + 2 ** 3", {"c": 3}, 5),
        ("max(8, c // 4)", {"c": 16}, 8),
        ("c % 5", {"c": 12}, 2),
        ("c / 4", {"c": 12}, 3),
        ("c * 0.25", {"c": 12}, 3.0),
    ],
)
def test_arithmetic_is_evaluated(text, names, value):
    assert evaluate(text, names) == value


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "c.__class__",
        "[c for c in ()]",
        "lambda: 1",
        "open('x')",
        "c if c else 1",
        "'a' * c",
        "10 ** 10 ** 10",
        "c < 3",
    ],
)
def test_anything_but_arithmetic_is_refused(text):
    with pytest.raises(ExpressionError):
        evaluate(text, {"c": 3})


# -- random graphs, torch as referee --------------------------------------------------------


@st.composite
def random_graph(draw):
    """A random DAG of convolutions, activations, pooling and merges (add, mul, cat,
    split, chunk); most are valid, some are not (the calculator must then refuse
    exactly when torch does)."""
    channels = draw(st.integers(1, 4))
    size = draw(st.integers(4, 9))
    layers: list[dict] = []
    names = ["input"]

    def pick() -> str:
        return draw(st.sampled_from(names))

    for index in range(draw(st.integers(1, 8))):
        name = f"n{index}"
        kind = draw(st.sampled_from(["conv", "conv", "relu", "pool", "gate", "add", "mul",
                                     "cat", "split", "chunk"]))  # fmt: skip
        source = pick()
        if kind == "conv":
            layer = {"type": "conv2d", "out_channels": draw(st.integers(1, 4)),
                     "kernel_size": draw(st.sampled_from([1, 3])), "padding": "same",
                     "from": source}  # fmt: skip
        elif kind == "relu":
            layer = {"type": "relu", "from": source}
        elif kind == "pool":
            layer = {"type": "adaptiveavgpool2d", "output_size": 1, "from": source}
        elif kind == "gate":
            layer = {"type": "sigmoid", "from": source}
        elif kind in ("add", "mul", "cat"):
            others = draw(st.lists(st.sampled_from(names), min_size=1, max_size=2))
            layer = {"type": kind, "from": [source, *others]}
        elif kind == "split":
            layer = {"type": "split", "split_size_or_sections": draw(st.integers(1, 3)),
                     "from": source}  # fmt: skip
        else:
            layer = {"type": "chunk", "chunks": draw(st.integers(1, 3)), "from": source}
        layer["name"] = name
        layers.append(layer)
        if kind in ("split", "chunk"):
            names += [f"{name}.0", f"{name}.1"]  # .1 may not exist: refused, as torch does
        else:
            names.append(name)
    outputs = (
        [layers[-1]["name"]]
        if layers[-1]["type"] not in ("split", "chunk")
        else [f"{layers[-1]['name']}.0"]
    )
    return {"version": 2, "input": [channels, size, size], "layers": layers, "outputs": outputs}


def _torch_on_graph(spec: dict) -> dict | None:
    """Run the random graph eagerly in plain torch, or None when torch refuses."""
    from torch import nn

    torch.manual_seed(0)
    values: dict[str, object] = {"input": torch.randn(1, *spec["input"])}
    params = 0
    macs = 0

    def get(ref: str):
        head, _, tail = ref.rpartition(".")
        if head and tail.isdigit():
            return values[head][int(tail)]  # IndexError when the piece does not exist
        return values[ref]

    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            for layer in spec["layers"]:
                kind = layer["type"]
                sources = layer["from"] if isinstance(layer["from"], list) else [layer["from"]]
                xs = [get(s) for s in sources]
                if any(isinstance(x, tuple) for x in xs):
                    return None  # a whole split read as one tensor: convcalc refuses it
                x = xs[0]
                if kind == "conv2d":
                    module = nn.Conv2d(x.shape[1], layer["out_channels"], layer["kernel_size"],
                                       padding="same")  # fmt: skip
                    params += sum(p.numel() for p in module.parameters())
                    out = module(x)
                elif kind == "relu":
                    out = torch.relu(x)
                elif kind == "sigmoid":
                    out = torch.sigmoid(x)
                elif kind == "adaptiveavgpool2d":
                    out = nn.functional.adaptive_avg_pool2d(x, 1)
                elif kind == "add":
                    out = xs[0]
                    for y in xs[1:]:
                        out = out + y
                elif kind == "mul":
                    out = xs[0]
                    for y in xs[1:]:
                        out = out * y
                elif kind == "cat":
                    out = torch.cat(xs, dim=1)
                elif kind == "split":
                    out = torch.split(x, layer["split_size_or_sections"], dim=1)
                else:
                    out = torch.chunk(x, layer["chunks"], dim=1)
                values[layer["name"]] = out
            result = get(spec["outputs"][0])
    except (RuntimeError, IndexError, ValueError):
        return None
    macs = counter.get_total_flops() // 2
    return {"output": tuple(result.shape), "params": params, "macs": macs}


@settings(max_examples=600)
@given(random_graph())
def test_random_graphs_agree_with_torch(spec):
    note(yaml.safe_dump(spec, sort_keys=False))
    expected = _torch_on_graph(spec)
    try:
        report = convcalc.analyze(spec)
    except ConvCalcError:
        assert expected is None
        return
    assert expected is not None, "convcalc accepts a graph torch refuses"
    assert {
        "output": report.output_shape,
        "params": report.totals.params,
        "macs": report.totals.macs,
    } == expected
    # and the module convcalc builds runs the same graph
    module = build_module(spec).eval()
    with torch.no_grad():
        out = module(torch.randn(report.input_shape))
    assert tuple(out.shape) == report.output_shape


def test_a_dumped_graph_loads_back_as_the_same_network():
    """What train writes as spec.yaml, verify's one-channel copy and dump_spec all dump a
    loaded network: from: (the field's alias) and expanded block calls must load back."""
    from convcalc.loader import dump_spec
    from convcalc.spec import Network
    from convcalc.training import _spec_text

    for text in SPECS.values():
        network = convcalc.load_spec(text)
        expected = convcalc.analyze(network).totals
        assert convcalc.analyze(dump_spec(network)).totals == expected
        assert convcalc.analyze(_spec_text(network, network)).totals == expected
        dumped = network.model_dump(exclude_unset=True, by_alias=True)
        assert convcalc.analyze(Network.model_validate(dumped)).totals == expected


def test_fields_holding_lists_dump_as_lists():
    """``kernel_size: [3, 5]`` or ``dim: [2, 3]`` (a tuple in an ``int | tuple`` field)
    dumps without pydantic's serializer warning (an error under pytest) and loads back."""
    from convcalc.loader import dump_spec
    from convcalc.training import _spec_text

    text = (
        "input: [3, 16, 16]\nlayers:\n"
        "  - {type: conv2d, out_channels: 4, kernel_size: [3, 5], stride: [1, 2]}\n"
        "  - {type: mean, dim: [2, 3], keepdim: true}\n"
        "  - {type: permute, order: [0, 2, 3, 1]}\n"
    )
    network = convcalc.load_spec(text)
    dumped = dump_spec(network)
    assert "kernel_size: [3, 5]" in dumped and "dim: [2, 3]" in dumped
    again = convcalc.analyze(dumped)
    assert again.totals == convcalc.analyze(network).totals
    assert [row.output_shape for row in again.rows] == [(1, 4, 14, 6), (1, 4, 1, 1), (1, 1, 1, 4)]
    assert convcalc.analyze(_spec_text(network, network)).totals == again.totals


@pytest.mark.parametrize("name", SPECS)
def test_graph_training_memory_is_what_torch_saves(name):
    """Activations kept for backward through merges: mul keeps each operand whose partner
    needs a gradient (a gate included), add and cat keep nothing, a split is views."""
    assert convcalc.analyze(SPECS[name]).totals.saved_bytes == torch_saved_bytes(SPECS[name])


@settings(max_examples=300)
@given(random_graph())
def test_random_graphs_save_what_torch_saves(spec):
    note(yaml.safe_dump(spec, sort_keys=False))
    try:
        report = convcalc.analyze(spec)
    except ConvCalcError:
        return
    assert report.totals.saved_bytes == torch_saved_bytes(spec)
