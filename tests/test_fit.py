"""``convcalc fit`` and the inference-memory estimate it rests on.

torch is the referee twice. The peak of live activations in a forward pass without
autograd (``Totals.peak_inference_bytes``) is held exactly to the storages a
``TorchDispatchMode`` sees alive while ``build_module(spec)`` runs under ``no_grad``.
The memory ``fit`` chooses a batch by is held, within the README's tolerance, to the
peak torch's CPU allocator reaches in a real training step and forward pass (its
allocation events, recorded by the profiler).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
import weakref
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from hypothesis import given, note, settings
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import convcalc
from convcalc.cli import cli
from convcalc.errors import ConvCalcError
from convcalc.fitting import BATCH_CAP, fit
from convcalc.sizes import check_sizes
from convcalc.torch_bridge import build_module
from convcalc.units import format_bytes, parse_bytes
from tests.test_graph import random_graph

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


# -- torch's side ------------------------------------------------------------------------


class LiveActivations(TorchDispatchMode):
    """Bytes of the storages alive, and their peak, counting every tensor an aten op
    returns (and the inputs, given to ``track``), but not parameters or buffers. A
    storage dies with the last tensor that views it (a weakref finalizer per tensor).

    The peak is taken where the estimate takes it, between layers: when a layer (a
    module without children) returns, and after each operation outside any layer (a
    block's ``+`` and ``cat``). With ``within_layers`` it is taken after every
    operation, so that what a layer holds only while it runs counts too."""

    def __init__(self, excluded: set[int], within_layers: bool = False) -> None:
        super().__init__()
        self.excluded = excluded
        self.within_layers = within_layers
        self.tensors: dict[int, list[int]] = {}  # data_ptr -> [bytes, tensors alive]
        self.live = 0
        self.peak = 0
        self.depth = 0  # layers running

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer in self.excluded or storage.nbytes() == 0:
            return
        entry = self.tensors.get(pointer)
        if entry is None:
            entry = self.tensors[pointer] = [storage.nbytes(), 0]
            self.live += entry[0]
        entry[1] += 1
        weakref.finalize(tensor, self.release, pointer)

    def release(self, pointer: int) -> None:
        entry = self.tensors[pointer]
        entry[1] -= 1
        if entry[1] == 0:
            del self.tensors[pointer]
            self.live -= entry[0]

    def sample(self) -> None:
        self.peak = max(self.peak, self.live)

    def watch(self, module: torch.nn.Module) -> list:
        """Hooks on the layers of ``module``: entering one, and leaving it."""
        handles = []
        for layer in module.modules():
            if next(layer.children(), None) is None:
                handles.append(layer.register_forward_pre_hook(self.enter))
                handles.append(layer.register_forward_hook(self.leave))
        return handles

    def enter(self, *_) -> None:
        self.depth += 1

    def leave(self, *_) -> None:
        self.depth -= 1
        self.sample()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_leaves(out):
            if isinstance(value, torch.Tensor):
                self.track(value)
        if self.within_layers or not self.depth:
            self.sample()
        return out


def torch_peak_inference(spec, dtype: str = "float32", within_layers: bool = False) -> int:
    """The most activation bytes torch holds at once in a no_grad forward of the spec's
    module on CPU, its inputs included."""
    report = convcalc.analyze(spec, dtype=dtype)
    module = build_module(spec).to(DTYPES[dtype]).eval()
    state = {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}
    inputs = [torch.randn(shape, dtype=DTYPES[dtype]) for shape in report.input_shapes.values()]
    mode = LiveActivations(state, within_layers)
    handles = mode.watch(module)
    for tensor in inputs:
        mode.track(tensor)
    mode.sample()
    with warnings.catch_warnings(), torch.no_grad(), mode:
        warnings.simplefilter("ignore")
        module(*inputs)
    for handle in handles:
        handle.remove()
    return mode.peak


def _load(name: str, **overrides) -> dict:
    spec = yaml.safe_load((SPECS / f"{name}.yaml").read_text(encoding="utf-8"))
    spec.update(overrides)
    return spec


# -- the inference peak, held to torch -------------------------------------------------


def test_mnist_cnn_peak_by_hand():
    """Input (784 floats), conv1's output and relu's (32·28·28 each): conv1's output is
    freed after relu reads it, and nothing later is as large."""
    expected = 4 * (784 + 2 * 32 * 28 * 28)
    assert convcalc.analyze(SPECS / "mnist_cnn.yaml").totals.peak_inference_bytes == expected
    assert torch_peak_inference(SPECS / "mnist_cnn.yaml") == expected


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("mnist_cnn", {"batch_size": 3}),
        ("lenet5", {"batch_size": 2}),
        ("resnet18", {"input": [3, 64, 64], "batch_size": 2}),
        ("mobilenet_v2", {"input": [3, 64, 64], "batch_size": 2}),
        ("unet_small", {"batch_size": 2}),
        ("yolo_neck", {"input": [3, 64, 64], "batch_size": 2}),
        ("shufflenet_v2", {"input": [3, 64, 64], "batch_size": 2}),
        ("efficientnet_b0", {"input": [3, 64, 64], "batch_size": 2}),
        ("efficientnet_b0", {"input": [3, 96, 96]}),
        ("unet_flat", {}),
        ("convnext_tiny", {"input": [3, 64, 64]}),
        ("densenet121", {"input": [3, 64, 64]}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_example_specs_peak_as_torch(name, overrides):
    spec = _load(name, **overrides)
    assert convcalc.analyze(spec).totals.peak_inference_bytes == torch_peak_inference(spec)


def test_float64_doubles_the_bytes_torch_holds():
    spec = _load("resnet18", input=[3, 32, 32])
    peak = convcalc.analyze(spec, dtype="float64").totals.peak_inference_bytes
    assert peak == torch_peak_inference(spec, "float64")
    assert peak == 2 * convcalc.analyze(spec).totals.peak_inference_bytes


# Layers whose output is their input's storage in evaluation (views, in-place layers,
# dropout and stochastic depth, which are the identity then) and some that are not.
STORAGE_CASES = [
    {"type": "relu", "inplace": True},
    "relu",
    {"type": "silu", "inplace": True},
    {"type": "hardswish", "inplace": True},
    {"type": "dropout", "p": 0.5},
    {"type": "dropout", "p": 0.5, "inplace": True},
    {"type": "dropout2d", "p": 0.3},
    {"type": "stochasticdepth", "p": 0.3, "mode": "row"},
    "identity",
    "flatten",
    {"type": "chunk", "chunks": 2},
    {"type": "split", "split_size_or_sections": 1},
    "batchnorm2d",
    "sigmoid",
    {"type": "pixelshuffle", "upscale_factor": 2},
    {"type": "channelshuffle", "groups": 2},
    {"type": "avgpool2d", "kernel_size": 2},
    {"type": "adaptiveavgpool2d", "output_size": 1},
    {"type": "upsample", "scale_factor": 2},
    {"type": "zeropad2d", "padding": 1},
]


@pytest.mark.parametrize("layer", STORAGE_CASES, ids=str)
@pytest.mark.parametrize("then", ["sigmoid", "end"])
def test_views_and_in_place_layers_share_storage_as_torch(layer, then):
    """After a convolution (so that its output is no input the caller holds), then
    followed by a layer that reads it (any rank) or ending the network."""
    piece = layer.get("type") in ("chunk", "split") if isinstance(layer, dict) else False
    after = [{"type": "sigmoid"}] if then == "sigmoid" else []
    if piece and after:
        after[0]["from"] = "piece.0"
    named = dict(layer, name="piece") if isinstance(layer, dict) else layer
    spec = {
        "version": 2,
        "input": [4, 6, 6],
        "batch_size": 2,
        "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 1}, named, *after],
    }
    if piece and not after:
        spec["outputs"] = ["piece.0"]
    assert convcalc.analyze(spec).totals.peak_inference_bytes == torch_peak_inference(spec)


def test_what_a_layer_holds_only_while_it_runs_is_not_counted():
    """torch's max_pool2d makes int64 indices the size of its output even without
    autograd, and frees them before it returns: the estimate, like the peak between
    layers, leaves them out; the peak within layers has them."""
    spec = {"input": [3, 16, 16], "layers": [{"type": "maxpool2d", "kernel_size": 2}]}
    estimated = 4 * (3 * 16 * 16 + 3 * 8 * 8)  # the input and the output
    assert convcalc.analyze(spec).totals.peak_inference_bytes == estimated
    assert torch_peak_inference(spec) == estimated
    assert torch_peak_inference(spec, within_layers=True) == estimated + 8 * 3 * 8 * 8


@settings(max_examples=60, deadline=None)
@given(random_graph())
def test_random_graphs_peak_as_torch(spec):
    note(yaml.safe_dump(spec, sort_keys=False))
    try:
        report = convcalc.analyze(spec)
    except ConvCalcError:
        return
    assert report.totals.peak_inference_bytes == torch_peak_inference(spec)


def test_a_block_holds_its_inputs_until_it_returns_and_a_flat_spec_does_not():
    """A residual block whose shortcut is a convolution: nested, its input stays alive
    through the join (the block, a module, holds it); imported back as a flat spec, it
    is freed after the shortcut reads it. torch agrees with both."""
    nested = {
        "input": [3, 16, 16],
        "layers": [
            {"type": "conv2d", "out_channels": 1, "kernel_size": 1},
            {
                "type": "residual",
                "layers": [{"type": "conv2d", "out_channels": 1, "kernel_size": 1}, "relu"],
                "shortcut": [{"type": "conv2d", "out_channels": 1, "kernel_size": 1}],
            },
        ],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flat = convcalc.from_torch(build_module(nested), [3, 16, 16])
    nested_peak = convcalc.analyze(nested).totals.peak_inference_bytes
    flat_peak = convcalc.analyze(flat).totals.peak_inference_bytes
    # at the join: the input (3·256 floats) and, of one channel (256 floats) each, the
    # relu's output, the shortcut's and the sum; nested, the block's input too
    assert flat_peak == 4 * (3 * 256 + 3 * 256) == torch_peak_inference(flat)
    assert nested_peak == flat_peak + 4 * 256 == torch_peak_inference(nested)


def test_totals_json_carries_the_peak():
    report = convcalc.analyze(SPECS / "mnist_cnn.yaml")
    assert report.totals.to_dict()["peak_inference_bytes"] == 203_840


# -- the search ---------------------------------------------------------------------------


def test_linear_classifier_by_hand():
    """7,850 parameters (31,400 bytes) and 3,176 bytes a sample (its input and output,
    both alive at the end): 320 samples fit in 1 MiB, 321 do not."""
    spec = {"input": [1, 28, 28], "layers": ["flatten", {"type": "linear", "out_features": 10}]}
    report = fit(spec, "1MiB", inference=True)
    assert report.batch.batch_size == 320
    assert report.batch.memory.total == 31_400 + 320 * 3_176
    assert report.next_batch.memory.total == 31_400 + 321 * 3_176
    assert (report.batch.fits, report.next_batch.fits) == (True, False)
    assert report.spatial and report.size is not None


@pytest.mark.parametrize(
    ("name", "memory", "inference", "optimizer"),
    [
        ("mnist_cnn", "64MiB", False, "adam"),
        ("mnist_cnn", "3MB", True, "adam"),
        ("unet_small", "100MiB", False, "sgd"),
        ("lenet5", "1048577", False, "adamw"),
        ("yolo_neck", "200MiB", True, "adam"),
    ],
)
def test_largest_batch_is_the_brute_force_answer(name, memory, inference, optimizer):
    budget = parse_bytes(memory)
    report = fit(SPECS / f"{name}.yaml", memory, inference=inference, optimizer=optimizer)

    def total(batch: int) -> int:
        analysed = convcalc.analyze(SPECS / f"{name}.yaml", batch_size=batch)
        if not inference:
            return analysed.training_memory(optimizer).total
        totals = analysed.totals
        return (totals.params + totals.buffers) * 4 + totals.peak_inference_bytes

    fitting = [b for b in range(1, report.batch.batch_size + 3) if total(b) <= budget]
    assert fitting[-1] == report.batch.batch_size
    assert total(report.batch.batch_size + 1) > budget
    assert report.next_batch.memory.total == total(report.batch.batch_size + 1)


@pytest.mark.parametrize(
    ("name", "memory", "inference", "batch_size"),
    [
        ("mnist_cnn", "8MiB", False, 1),  # accepts multiples of 4
        ("unet_small", "30MiB", True, 2),  # multiples of 8
        ("yolo_neck", "64MiB", True, 1),  # not a step: 25, 26, ...
        ("lenet5", "40MiB", False, 4),
    ],
)
def test_largest_size_is_the_brute_force_answer(name, memory, inference, batch_size):
    budget = parse_bytes(memory)
    report = fit(SPECS / f"{name}.yaml", memory, inference=inference, batch_size=batch_size)
    channels = report.batch.input[0]

    def total(size: int) -> int:
        dims = len(report.batch.input) - 1
        analysed = convcalc.analyze(
            SPECS / f"{name}.yaml", input=[channels, *[size] * dims], batch_size=batch_size
        )
        if not inference:
            return analysed.training_memory("adam").total
        totals = analysed.totals
        return (totals.params + totals.buffers) * 4 + totals.peak_inference_bytes

    valid = check_sizes(SPECS / f"{name}.yaml", range(1, report.next_size.input[-1] + 1)).valid
    fitting = [size for size in valid if total(size) <= budget]
    assert report.size.input[-1] == fitting[-1]
    assert report.next_size.input[-1] == valid[valid.index(fitting[-1]) + 1]
    assert total(report.next_size.input[-1]) > budget
    assert report.size.batch_size == report.next_size.batch_size == batch_size


def test_a_spec_accepting_one_size_is_fitted_at_that_size():
    """``in_features`` given: only 28×28 passes, so the sizes below it are all checked
    and nothing above it is accepted until the cap."""
    spec = {
        "input": [1, 28, 28],
        "layers": [
            {"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1},
            "flatten",
            {"type": "linear", "in_features": 1568, "out_features": 10},
        ],
    }
    report = fit(spec, "1GiB")
    assert report.size.input == (1, 28, 28)
    assert report.next_size is None and report.size_capped


def test_the_batch_search_says_when_even_its_cap_fits():
    spec = {"input": [1, 1], "layers": ["flatten"]}
    report = fit(spec, "1PiB", inference=True)
    assert report.batch_capped and report.next_batch is None
    assert report.batch.batch_size == BATCH_CAP
    assert "largest batch: at least 2,147,483,648" in report.render()


def test_no_size_fits_names_the_smallest_accepted():
    # 128 samples of 8×8 (the smallest size unet_small accepts) are twice as many
    # pixels as the one 64×64 sample that fits
    report = fit(SPECS / "unet_small.yaml", "2.5MiB", inference=True, batch_size=128)
    assert report.batch.batch_size == 1
    assert report.size is None
    assert report.next_size.input == (1, 8, 8)
    assert report.next_size.memory.activations == 2 * report.batch.memory.activations
    assert "no input fits at batch 128: the smallest accepted, [1, 8, 8]" in report.render()


def test_a_flat_input_has_no_sizes():
    spec = {"input": [20], "layers": [{"type": "linear", "out_features": 10}]}
    report = fit(spec, "1MiB")
    assert not report.spatial and report.size is None
    assert report.to_dict()["size"] is None
    assert "[20] has no spatial dimension to vary" in report.render()


def test_several_inputs_all_take_the_size():
    spec = {
        "version": 2,
        "inputs": {"a": [2, 8, 8], "b": [3, 8, 8]},
        "layers": [{"type": "cat", "from": ["a", "b"]}],
    }
    report = fit(spec, "10000", inference=True)
    # both inputs and the concatenation alive at the end: 2·(2+3)·S²·4 bytes ≤ 10,000
    assert report.size.input == (2, 15, 15)
    assert report.size.memory.total == 2 * 5 * 15 * 15 * 4
    assert report.next_size.input == (2, 16, 16)


# -- against what torch allocates ---------------------------------------------------------


def allocator_peak(run) -> int:
    """The most bytes torch's CPU allocator holds at once during ``run()``, above what
    it held before (its allocation events, as the profiler records them)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
            run()
    sizes: list[tuple[int, int]] = []

    def walk(nodes) -> None:
        for node in nodes:
            if node.tag == _EventType.Allocation:
                sizes.append((node.start_time_ns, node.extra_fields.alloc_size))
            walk(node.children)

    walk(profiler.profiler.kineto_results.experimental_event_tree())
    live = peak = 0
    for _, size in sorted(sizes):
        live += size
        peak = max(peak, live)
    return peak


def _held(tensors) -> int:
    return sum(tensor.untyped_storage().nbytes() for tensor in tensors)


def measured_training_step(spec, batch: int, optimizer: str) -> int:
    """Peak bytes of two training steps (the second with the optimizer's state made):
    weights, input and labels held before, plus the allocator's peak during them."""
    report = convcalc.analyze(spec, batch_size=batch)
    torch.manual_seed(0)
    model = build_module(spec, batch_size=batch).train()
    optimizers = {
        "sgd": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
        "adam": lambda p: torch.optim.Adam(p),
        "adamw": lambda p: torch.optim.AdamW(p),
    }
    step_with = optimizers[optimizer](model.parameters())
    x = torch.randn(report.input_shape)
    out = report.output_shape
    y = torch.randint(0, out[1], (batch, *out[2:]))

    def steps() -> None:
        for _ in range(2):
            step_with.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            step_with.step()

    peak = allocator_peak(steps)
    return _held([*model.parameters(), *model.buffers(), x, y]) + peak


def measured_forward(spec, batch: int) -> int:
    report = convcalc.analyze(spec, batch_size=batch)
    model = build_module(spec, batch_size=batch).eval()
    x = torch.randn(report.input_shape)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    peak = allocator_peak(forward)
    return _held([*model.parameters(), *model.buffers(), x]) + peak


# The README's tolerance (Fitting): what torch allocates is 0.9 to 2.1 times the estimate.
LOW, HIGH = 0.9, 2.1


@pytest.mark.parametrize(
    ("name", "memory", "optimizer"),
    [("mnist_cnn", "64MiB", "adam"), ("unet_small", "48MiB", "sgd")],
)
def test_a_training_step_at_the_fitted_batch_measures_as_estimated(name, memory, optimizer):
    report = fit(SPECS / f"{name}.yaml", memory, optimizer=optimizer)
    budget = parse_bytes(memory)
    estimated = report.batch.memory.total
    assert estimated <= budget < report.next_batch.memory.total
    measured = measured_training_step(SPECS / f"{name}.yaml", report.batch.batch_size, optimizer)
    assert LOW * estimated <= measured <= HIGH * estimated, (measured, estimated)


@pytest.mark.parametrize(("name", "memory"), [("mnist_cnn", "16MiB"), ("unet_small", "24MiB")])
def test_a_forward_pass_at_the_fitted_batch_measures_as_estimated(name, memory):
    report = fit(SPECS / f"{name}.yaml", memory, inference=True)
    budget = parse_bytes(memory)
    estimated = report.batch.memory.total
    assert estimated <= budget < report.next_batch.memory.total
    measured = measured_forward(SPECS / f"{name}.yaml", report.batch.batch_size)
    assert LOW * estimated <= measured <= HIGH * estimated, (measured, estimated)


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("memory", "message"),
    [
        ("16Gb", "memory: '16Gb' has an unknown unit 'Gb'; write bytes like 200MiB, 16GiB, 900MB"),
        ("lots", "memory: 'lots' does not parse as a number with a unit"),
        ("0", "memory must be at least 1 byte, got '0'"),
        ("-2GiB", "memory must be at least 1 byte, got '-2GiB'"),
        ("0.5", "memory must be at least 1 byte, got '0.5'"),
    ],
)
def test_a_memory_that_is_no_budget_is_refused(memory, message):
    with pytest.raises(ConvCalcError) as caught:
        fit(SPECS / "mnist_cnn.yaml", memory)
    assert str(caught.value) == message
    result = CliRunner().invoke(cli, ["fit", str(SPECS / "mnist_cnn.yaml"), "--memory", memory])
    assert result.exit_code == 1
    assert result.stderr == f"error: {message}\n"
    assert "Traceback" not in result.output


def test_too_little_memory_for_batch_1_says_what_batch_1_needs():
    # weights 50,186 floats; a training step with sgd: weights, gradients and momentum
    spec = SPECS / "mnist_cnn.yaml"
    needs = 3 * 50_186 * 4 + convcalc.analyze(spec).totals.saved_bytes
    result = CliRunner().invoke(cli, ["fit", str(spec), "--memory", "500kB", "--optimizer", "sgd"])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: memory '500kB' is too small for even batch 1 of mnist_cnn: a training step "
        f"with sgd needs {format_bytes(needs)} ({needs:,} bytes)\n"
    )


def test_an_optimizer_with_inference_is_bad_usage():
    result = CliRunner().invoke(
        cli,
        [
            "fit",
            str(SPECS / "mnist_cnn.yaml"),
            "--memory",
            "1GiB",
            "--inference",
            "--optimizer",
            "sgd",
        ],
    )
    assert result.exit_code == 2
    assert "--optimizer is for training" in result.stderr


def test_unknown_optimizer_in_the_library():
    with pytest.raises(ConvCalcError, match="unknown optimizer 'rmsprop'; use one of sgd"):
        fit(SPECS / "mnist_cnn.yaml", "1GiB", optimizer="rmsprop")


# -- the command ---------------------------------------------------------------------------


def test_json_is_the_report():
    arguments = ["fit", str(SPECS / "resnet18.yaml"), "--memory", "2GiB", "-f", "json"]
    arguments += ["--dtype", "float16", "--batch-size", "4"]
    data = json.loads(CliRunner().invoke(cli, arguments).stdout)
    report = fit(SPECS / "resnet18.yaml", "2GiB", dtype="float16", batch_size=4)
    assert data == report.to_dict()
    assert data["dtype"] == "float16" and data["memory_bytes"] == 2 * 2**30
    assert data["batch"]["at_largest"]["fits"] and not data["batch"]["at_next"]["fits"]
    assert data["size"]["batch_size"] == 4


def test_readme_example_is_real(monkeypatch):
    monkeypatch.chdir(ROOT)
    command = "convcalc fit specs/resnet18.yaml --memory 16GiB"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = re.search(re.escape(f"$ {command}\n") + r"(.*?)```", readme, flags=re.S)
    assert shown, f"the README does not show {command}"
    assert CliRunner().invoke(cli, command.split()[1:]).stdout == shown.group(1)


def test_fit_never_imports_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from convcalc.cli import cli\n"
        f"result = CliRunner().invoke(cli, ['fit', {str(SPECS / 'resnet18.yaml')!r}, "
        "'--memory', '4GiB', '--inference'])\n"
        "assert result.exit_code == 0, result.output\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
