"""Specs out as ONNX model files (``convcalc export --to onnx``, ``convcalc.onnx_export``).

The referees: onnx's checker (the file is valid ONNX), onnxruntime on the CPU (the file
computes what the torch module computes, on the same input), the file itself (its
names, shapes, opset and nodes), and ``from_onnx`` (the file reads back as the spec,
with the parameters the exporter's BatchNorm folding leaves, derived from the spec).

Every spec in specs/ is exported under ``pytest -m zoo``; the default run exports the
small ones (each export takes torch's exporter a second or more, the big ones several).
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from click.testing import CliRunner

import convcalc
from convcalc.cli import cli
from convcalc.errors import ConvCalcError
from convcalc.graph import lower
from convcalc.onnx_export import MIN_OPSET, export_onnx, onnx_module, opset_range
from convcalc.onnx_import import from_onnx

from .conftest import SPEC_FILES, SPECS_DIR

# Exported in the default run: small, and between them one and several outputs,
# residual and concat blocks, chunk and split, transposed convs, folded BatchNorm.
SMALL = {"edge_filters", "lenet5", "mnist_cnn", "resnet18", "unet_small", "yolo_neck"}
SPECS = [
    pytest.param(path, id=path.stem, marks=() if path.stem in SMALL else pytest.mark.zoo)
    for path in SPEC_FILES
]
YOLO = SPECS_DIR / "yolo_neck.yaml"
LENET = SPECS_DIR / "lenet5.yaml"

# Two inputs and two outputs (spec v2 inputs:/outputs:), a BatchNorm after a conv with a
# bias and one after a conv without, a chunk.
TWO_INPUTS = """\
version: 2
name: two_inputs
inputs: {image: [3, 32, 32], depth: [1, 32, 32]}
outputs: [p3, p4]
layers:
  - {type: conv2d, name: rgb, out_channels: 16, kernel_size: 3, padding: 1}
  - {type: batchnorm2d, name: rgb_bn}
  - {type: conv2d, name: d, from: depth, out_channels: 16, kernel_size: 3, padding: 1,
     bias: false}
  - {type: batchnorm2d, name: d_bn}
  - {type: add, from: [rgb_bn, d_bn]}
  - {type: chunk, name: halves, chunks: 2}
  - {type: conv2d, name: p3, from: halves.1, out_channels: 32, kernel_size: 3, stride: 2,
     padding: 1}
  - {type: conv2d, name: p4, out_channels: 64, kernel_size: 3, stride: 2, padding: 1}
"""


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``export(spec, **options)``: the spec's file, exported once per test session."""
    folder = tmp_path_factory.mktemp("onnx")
    done: dict[tuple, Path] = {}

    def export(spec: Path | str, **options) -> Path:
        key = (str(spec), *sorted(options.items()))
        if key not in done:
            path = folder / f"{Path(spec).stem}-{len(done)}.onnx"
            assert export_onnx(spec, path, **options) == [path]
            done[key] = path
        return done[key]

    return export


@pytest.fixture(scope="session")
def two_inputs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "two_inputs.yaml"
    path.write_text(TWO_INPUTS, encoding="utf-8")
    return path


def sample(report: convcalc.Report, batch: int | None = None) -> dict[str, np.ndarray]:
    """A random input for each of the spec's inputs, by name."""
    generator = np.random.default_rng(0)
    return {
        name: generator.standard_normal((batch or shape[0], *shape[1:])).astype(np.float32)
        for name, shape in report.input_shapes.items()
    }


def run_file(path: Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def run_module(spec: Path | str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The torch module export_onnx writes (same seed, same weights), on the inputs."""
    module = onnx_module(spec)
    with torch.no_grad():
        out = module(*(torch.from_numpy(value) for value in inputs.values()))
    return [tensor.numpy() for tensor in (out if isinstance(out, tuple) else (out,))]


def assert_same_outputs(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected)
    for value, reference in zip(got, expected):
        assert value.shape == reference.shape
        scale = max(1.0, float(np.abs(reference).max()))  # deep random nets grow values
        np.testing.assert_allclose(value, reference, rtol=1e-3, atol=1e-4 * scale)


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def ai_onnx_opset(model: onnx.ModelProto) -> int:
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def op_types(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


# -- the file, checked and run ---------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_a_spec_exports_checks_and_runs_as_torch_does(exported, spec):
    report = convcalc.analyze(spec)
    path = exported(spec)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [value.name for value in model.graph.input] == list(report.input_shapes)
    assert [value.name for value in model.graph.output] == list(report.outputs)
    assert [dims(value) for value in model.graph.input] == [
        list(shape) for shape in report.input_shapes.values()
    ]
    assert [dims(value) for value in model.graph.output] == [
        list(shape) for shape in report.outputs.values()
    ]
    assert model.graph.name == report.name
    inputs = sample(report)
    assert_same_outputs(run_file(path, inputs), run_module(spec, inputs))


def test_several_inputs_and_outputs_keep_their_names_and_order(exported, two_inputs):
    report = convcalc.analyze(two_inputs)
    path = exported(two_inputs)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [value.name for value in model.graph.input] == ["image", "depth"]
    assert [value.name for value in model.graph.output] == ["p3", "p4"]
    assert [dims(value) for value in model.graph.output] == [[1, 32, 16, 16], [1, 64, 8, 8]]
    inputs = sample(report)
    assert_same_outputs(run_file(path, inputs), run_module(two_inputs, inputs))


@pytest.mark.parametrize("spec", [LENET, YOLO], ids=["one_output", "three_outputs"])
def test_dynamic_batch_runs_at_any_batch_size(exported, spec):
    report = convcalc.analyze(spec)
    path = exported(spec, dynamic_batch=True)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    for value in [*model.graph.input, *model.graph.output]:
        assert dims(value)[0] == "batch", value.name
    for batch in (1, 3):
        inputs = sample(report, batch)
        got = run_file(path, inputs)
        assert [value.shape[0] for value in got] == [batch] * len(report.outputs)
        assert_same_outputs(got, run_module(spec, inputs))


def test_dynamic_batch_with_several_inputs(exported, two_inputs):
    report = convcalc.analyze(two_inputs)
    path = exported(two_inputs, dynamic_batch=True)
    model = onnx.load(str(path))
    assert [dims(value)[0] for value in [*model.graph.input, *model.graph.output]] == ["batch"] * 4
    inputs = sample(report, 3)
    assert_same_outputs(run_file(path, inputs), run_module(two_inputs, inputs))


def test_without_dynamic_batch_the_batch_is_the_specs(exported, tmp_path):
    spec = tmp_path / "batch4.yaml"
    spec.write_text(LENET.read_text(encoding="utf-8") + "\nbatch_size: 4\n", encoding="utf-8")
    model = onnx.load(str(exported(spec)))
    assert dims(model.graph.input[0]) == [4, 1, 32, 32]
    assert dims(model.graph.output[0]) == [4, 10]


@pytest.mark.parametrize("opset", sorted({MIN_OPSET, 20, opset_range()[1]}))
def test_the_opset_is_the_one_asked_for(exported, opset):
    path = exported(LENET, opset=opset)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert ai_onnx_opset(model) == opset
    report = convcalc.analyze(LENET)
    inputs = sample(report)
    assert_same_outputs(run_file(path, inputs), run_module(LENET, inputs))


@pytest.mark.parametrize("opset", [MIN_OPSET - 1, 11, opset_range()[1] + 1, 0, -3])
def test_an_opset_the_exporter_does_not_write_is_one_sentence(tmp_path, opset):
    path = tmp_path / "out.onnx"
    with pytest.raises(ConvCalcError) as error:
        export_onnx(LENET, path, opset=opset)
    low, high = opset_range()
    assert str(error.value) == (
        f"{LENET}: torch's ONNX exporter writes opset {low} to {high}, not {opset}"
    )
    assert list(tmp_path.iterdir()) == []


# -- BatchNorm: folded by default, kept on request -------------------------------------


def folding(spec: Path | str) -> tuple[int, int]:
    """(BatchNorm layers the exporter folds, the change in parameters it makes), from
    the spec: a BatchNorm whose input is a conv's (or transposed conv's, or a Linear's on
    a flat input) output that nothing else reads goes into that layer's weight and bias.
    Its weight and bias go; the layer gains a bias of its channels if it had none."""
    report = convcalc.analyze(spec)
    graph = lower(report.network)
    rows = {row.path: row for row in report.rows}
    readers = Counter(ref.node for node in graph.nodes for ref in node.inputs)
    readers.update(ref.node for ref in graph.outputs.values())
    folded, change = 0, 0
    for node in graph.nodes:
        if node.is_input or node.join or not node.leaf.torch_name.startswith("BatchNorm"):
            continue
        before = graph.nodes[node.inputs[0].node]
        if before.is_input or before.join or readers[before.index] != 1:
            continue
        kind = before.leaf.torch_name
        flat_linear = kind == "Linear" and len(rows[before.path].input_shape) == 2
        if not (kind.startswith(("Conv", "ConvTranspose")) or flat_linear):
            continue
        folded += 1
        change -= rows[node.path].params
        if not getattr(before.leaf, "bias", True):
            change += rows[node.path].output_shape[1]
    return folded, change


@pytest.mark.parametrize("spec", [SPECS_DIR / "resnet18.yaml", YOLO], ids=lambda p: p.stem)
def test_batchnorm_after_a_conv_is_folded_by_default(exported, spec):
    model = onnx.load(str(exported(spec)))
    batchnorms = sum(
        1
        for node in lower(convcalc.load_spec(spec)).nodes
        if not node.is_input and not node.join and node.leaf.torch_name.startswith("BatchNorm")
    )
    assert folding(spec)[0] == batchnorms > 0  # every one follows a conv here
    assert op_types(model)["BatchNormalization"] == 0


def test_keep_batchnorm_keeps_every_one(exported, two_inputs):
    report = convcalc.analyze(two_inputs)
    path = exported(two_inputs, fold_batchnorm=False)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert op_types(model)["BatchNormalization"] == 2
    assert folding(two_inputs)[0] == 2
    inputs = sample(report)
    assert_same_outputs(run_file(path, inputs), run_module(two_inputs, inputs))


def test_normalisation_layers_are_not_an_identity():
    """Their scale, shift and statistics are drawn, so the ONNX comparison sees them."""
    module = onnx_module(YOLO)
    batchnorms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batchnorms
    for layer in batchnorms:
        for tensor in (layer.weight, layer.bias, layer.running_mean, layer.running_var):
            assert len(set(tensor.tolist())) > 1
        assert (layer.running_var > 0).all()
    state = torch.random.get_rng_state()
    onnx_module(YOLO, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's is untouched


# -- read back with from_onnx ----------------------------------------------------------


def same_ends(report, expected) -> None:
    """The same output and input shapes, in order; several of them keep their names."""
    for ends in ("outputs", "input_shapes"):
        got, want = getattr(report, ends), getattr(expected, ends)
        assert list(got.values()) == list(want.values())
        if len(want) > 1:
            assert list(got) == list(want)


@pytest.mark.parametrize("spec", SPECS)
def test_the_file_reads_back_as_the_spec(exported, spec):
    """Params, MACs and output shapes of the file as from_onnx reads it are the spec's,
    but for the folded BatchNorms (MACs count no bias, so folding leaves them)."""
    network = from_onnx(exported(spec))
    report, expected = convcalc.analyze(network), convcalc.analyze(spec)
    assert report.totals.params == expected.totals.params + folding(spec)[1]
    assert report.totals.macs == expected.totals.macs
    same_ends(report, expected)


LRN_SPEC = """\
name: lrn
input: [8, 12, 12]
layers:
  - {type: conv2d, out_channels: 16, kernel_size: 3}
  - {type: localresponsenorm, size: 5, alpha: 0.0001, beta: 0.75, k: 2.0}
  - {type: maxpool2d, kernel_size: 2}
  - {type: localresponsenorm, size: 3, alpha: 0.01, beta: 0.5}
"""


def test_local_response_norm_is_one_lrn_node(exported, tmp_path):
    spec = tmp_path / "lrn.yaml"
    spec.write_text(LRN_SPEC, encoding="utf-8")
    path = exported(spec)
    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node] == ["Conv", "LRN", "MaxPool", "LRN"]
    first = {a.name: onnx.helper.get_attribute_value(a) for a in model.graph.node[1].attribute}
    assert first["size"] == 5 and first["bias"] == 2.0
    assert first["alpha"] == pytest.approx(1e-4) and first["beta"] == 0.75
    report = convcalc.analyze(spec)
    inputs = sample(report)
    assert_same_outputs(run_file(path, inputs), run_module(spec, inputs))
    again = convcalc.analyze(from_onnx(path))
    assert [row.type for row in again.rows] == [row.type for row in report.rows]
    assert again.totals == report.totals


def test_the_file_reads_back_with_batchnorm_kept(exported, two_inputs):
    network = from_onnx(exported(two_inputs, fold_batchnorm=False))
    report, expected = convcalc.analyze(network), convcalc.analyze(two_inputs)
    assert folding(two_inputs)[1] == -(2 * 16 + 2 * 16) + 16  # d has no bias; rgb has
    assert report.totals.params == expected.totals.params
    assert report.totals.macs == expected.totals.macs
    same_ends(report, expected)


# -- the command -----------------------------------------------------------------------


def run(*arguments: str):
    return CliRunner().invoke(cli, list(arguments))


def test_the_command_writes_the_spec_files_name_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("export", str(LENET), "--to", "onnx")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # nothing binary, nor the exporter's progress
    assert result.stderr == "wrote lenet5.onnx\n"
    assert list(tmp_path.iterdir()) == [tmp_path / "lenet5.onnx"]
    onnx.checker.check_model(onnx.load("lenet5.onnx"))


def test_the_command_takes_output_opset_and_dynamic_batch(tmp_path, two_inputs):
    path = tmp_path / "net.onnx"
    result = run(
        "export", str(two_inputs), "--to", "onnx", "-o", str(path), "--opset", "19",
        "--dynamic-batch",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and result.stderr == f"wrote {path}\n"
    model = onnx.load(str(path))
    assert ai_onnx_opset(model) == 19
    assert [dims(value)[0] for value in model.graph.output] == ["batch"] * 2
    assert [value.name for value in model.graph.output] == ["p3", "p4"]
    assert list(tmp_path.iterdir()) == [path]  # one file, no scratch folder left


def test_the_command_keeps_batchnorm_on_request(tmp_path, two_inputs):
    folded, kept = tmp_path / "folded.onnx", tmp_path / "kept.onnx"
    for path, options in ((folded, []), (kept, ["--keep-batchnorm"])):
        result = run("export", str(two_inputs), "--to", "onnx", "-o", str(path), *options)
        assert result.exit_code == 0, result.output
    assert op_types(onnx.load(str(folded)))["BatchNormalization"] == 0
    assert op_types(onnx.load(str(kept)))["BatchNormalization"] == 2


def one_line_error(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # no traceback
    assert result.stdout == ""
    assert result.stderr == f"error: {message}\n"


def test_a_bad_opset_is_one_line(tmp_path):
    path = tmp_path / "net.onnx"
    low, high = opset_range()
    result = run("export", str(LENET), "--to", "onnx", "-o", str(path), "--opset", "13")
    one_line_error(result, f"{LENET}: torch's ONNX exporter writes opset {low} to {high}, not 13")
    assert not path.exists()


def test_standard_output_is_refused_for_a_binary_file():
    result = run("export", str(LENET), "--to", "onnx", "-o", "-")
    one_line_error(result, "an ONNX model is binary: give a file name with -o, not '-'")


def test_an_unwritable_path_is_one_line(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder", encoding="utf-8")
    result = run("export", str(LENET), "--to", "onnx", "-o", str(blocker / "net.onnx"))
    one_line_error(result, f"{blocker / 'net.onnx'}: cannot write it (not a directory)")
    missing = tmp_path / "no" / "such" / "net.onnx"
    result = run("export", str(LENET), "--to", "onnx", "-o", str(missing))
    one_line_error(result, f"{missing}: cannot write it (no such folder)")


def test_a_folder_as_output_is_one_line(tmp_path):
    result = run("export", str(LENET), "--to", "onnx", "-o", str(tmp_path))
    assert result.exit_code == 2  # click's own check of the option
    assert "is a directory" in result.stderr and "Traceback" not in result.output
    with pytest.raises(ConvCalcError) as error:
        export_onnx(LENET, tmp_path)
    assert str(error.value) == f"{tmp_path}: is a folder; give a file name such as model.onnx"


def test_a_bad_spec_is_the_specs_one_line_error(tmp_path, write_spec):
    spec = write_spec("input: [3, 8, 8]\nlayers:\n  - {type: conv2d, out_channels: 4}\n")
    result = run("export", str(spec), "--to", "onnx", "-o", str(tmp_path / "net.onnx"))
    one_line_error(result, f"{spec}:3: layers.0: missing required field 'kernel_size'")
    assert not (tmp_path / "net.onnx").exists()


def test_an_exporter_failure_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        try:
            raise ValueError("unsupported thing\nwith pages of advice")
        except ValueError as error:
            raise RuntimeError("Failed to export the model with torch.export.") from error

    monkeypatch.setattr(torch.onnx, "export", fail)
    result = run("export", str(LENET), "--to", "onnx", "-o", str(tmp_path / "net.onnx"))
    one_line_error(result, f"{LENET}: torch's ONNX exporter failed: ValueError: unsupported thing")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--opset", "19"], "--opset is for --to onnx"),
        (["--dynamic-batch"], "--dynamic-batch is for --to onnx"),
        (["--keep-batchnorm"], "--keep-batchnorm is for --to onnx"),
        (["--to", "onnx", "--class-name", "Net"], "--class-name is for --to pytorch"),
    ],
)
def test_options_for_the_other_target_are_usage_errors(arguments, message):
    result = run("export", str(LENET), *arguments)
    assert result.exit_code == 2
    assert f"Error: {message}" in result.stderr


@pytest.mark.parametrize("blocked", ["torch", "onnx", "onnxscript"])
def test_a_missing_package_names_the_extra(tmp_path, blocked):
    script = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from convcalc.cli import main\n"
        f"sys.argv = ['convcalc', 'export', {str(LENET)!r}, '--to', 'onnx', '-o', 'net.onnx']\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 1
    assert done.stderr == (
        f"error: {LENET}: exporting to ONNX needs {blocked}, which is not installed: "
        "pip install 'convcalc[onnx]'\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_importing_the_module_imports_neither_torch_nor_onnx():
    script = (
        "import sys, convcalc, convcalc.onnx_export, convcalc.cli\n"
        "assert not {'torch', 'onnx', 'onnxscript', 'onnxruntime'} & set(sys.modules), "
        "'imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
