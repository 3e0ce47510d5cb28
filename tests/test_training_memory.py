"""The activations autograd saves for backward, and the training-memory estimate.

torch is the referee: ``torch.autograd.graph.saved_tensors_hooks`` sees every tensor
a forward pass keeps for backward; the distinct storages among them that are not
parameters or buffers are the activations the calculator estimates.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

import convcalc
from convcalc.torch_bridge import build_module
from tests.test_differential import layer_and_shape, stage
from tests.test_layers_vs_torch import CASES

SPECS = Path(__file__).resolve().parent.parent / "specs"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def torch_saved_bytes(spec: dict | Path, dtype: str = "float32") -> int:
    """Bytes of the distinct non-parameter storages one training forward pass saves
    (every input of the spec fed)."""
    report = convcalc.analyze(spec, dtype=dtype)
    module = build_module(spec).to(DTYPES[dtype]).train()
    state = {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}
    saved: dict[int, int] = {}
    alive: list[torch.Tensor] = []  # held, so that no freed storage's address is reused

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in state:
            saved[storage.data_ptr()] = storage.nbytes()
            alive.append(tensor)
        return tensor

    inputs = [torch.randn(shape, dtype=DTYPES[dtype]) for shape in report.input_shapes.values()]
    with (
        warnings.catch_warnings(),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
    ):
        warnings.simplefilter("ignore")
        module(*inputs)
    return sum(saved.values())


def _prefix(shape: tuple[int, ...]) -> dict:
    """A trainable layer that keeps the shape, so that what follows needs gradients."""
    if len(shape) == 2:
        return {"type": "linear", "out_features": shape[1]}
    dims = len(shape) - 2
    return {"type": f"conv{dims}d", "out_channels": shape[1], "kernel_size": 1}


def _single(spec: dict, shape: tuple[int, ...], before: list[dict]) -> dict:
    return {"input": list(shape[1:]), "batch_size": shape[0], "layers": [*before, spec]}


@pytest.mark.parametrize(("spec", "shape"), CASES, ids=lambda v: str(v))
def test_layer_alone_saves_what_torch_saves(spec, shape):
    network = _single(spec, shape, [])
    assert convcalc.analyze(network).totals.saved_bytes == torch_saved_bytes(network)


@pytest.mark.parametrize(("spec", "shape"), CASES, ids=lambda v: str(v))
def test_layer_after_a_trainable_one_saves_what_torch_saves(spec, shape):
    network = _single(spec, shape, [_prefix(shape)])
    assert convcalc.analyze(network).totals.saved_bytes == torch_saved_bytes(network)


INPLACE_AND_SPECIAL = [
    {"type": "relu", "inplace": True},
    {"type": "relu6", "inplace": True},
    {"type": "silu", "inplace": True},
    {"type": "hardswish", "inplace": True},
    {"type": "hardsigmoid", "inplace": True},
    {"type": "leakyrelu", "inplace": True},
    {"type": "elu", "inplace": True},
    {"type": "dropout", "p": 0.5, "inplace": True},
    {"type": "dropout", "p": 1.0},
    {"type": "dropout", "p": 1.0, "inplace": True},
    {"type": "dropout", "p": 0.0},
    {"type": "dropout2d", "p": 0.3, "inplace": True},
    {"type": "adaptiveavgpool2d", "output_size": 1},
    {"type": "adaptiveavgpool2d", "output_size": [1, None]},
    {"type": "instancenorm2d", "affine": True, "track_running_stats": True},
    {"type": "instancenorm2d", "track_running_stats": True},
    {"type": "batchnorm2d", "affine": False, "track_running_stats": False},
    {"type": "layernorm", "normalized_shape": [5]},
    {"type": "groupnorm", "num_groups": 2},
    {"type": "localresponsenorm", "size": 3},
    {
        "type": "conv2d",
        "out_channels": 2,
        "kernel_size": 3,
        "padding": 1,
        "padding_mode": "reflect",
    },
    {
        "type": "conv2d",
        "out_channels": 2,
        "kernel_size": 3,
        "padding": 2,
        "padding_mode": "circular",
        "trainable": False,
    },
    {"type": "conv2d", "out_channels": 2, "kernel_size": 3, "trainable": False},
    {"type": "batchnorm2d", "trainable": False},
    {"type": "flatten"},
    {"type": "identity"},
    {"type": "softmax", "dim": 1},
    {"type": "prelu", "trainable": False},
    {"type": "prelu", "num_parameters": 4},
    {"type": "mish", "inplace": True},
    {"type": "hardtanh", "min_val": -2, "inplace": True},
    {"type": "selu", "inplace": True},
    {"type": "celu", "alpha": 2, "inplace": True},
    {"type": "softsign"},
    {"type": "tanhshrink"},
    {"type": "logsigmoid"},
    {"type": "reflectionpad2d", "padding": [2, 1, 0, 3]},
    {"type": "replicationpad2d", "padding": [4, -1, 1, 2]},
    {"type": "circularpad2d", "padding": 2},
    {"type": "constantpad2d", "padding": [1, 1, -1, 0], "value": 2},
    {"type": "pixelshuffle", "upscale_factor": 2},
    {"type": "channelshuffle", "groups": 2},
    {"type": "unflatten", "dim": 1, "unflattened_size": [2, -1]},
    {"type": "permute", "order": [0, 2, 3, 1]},
    {"type": "mean", "dim": [2, 3], "keepdim": True},
    {"type": "layernorm2d"},
    {"type": "layernorm2d", "trainable": False},
    {"type": "layernorm2d", "elementwise_affine": False},
    {"type": "layerscale"},
    {"type": "layerscale", "trainable": False},
    {"type": "stochasticdepth", "p": 0.3, "mode": "batch"},
    {"type": "stochasticdepth", "p": 0.0},
    {"type": "droppath", "p": 1.0},
]


@pytest.mark.parametrize("spec", INPLACE_AND_SPECIAL, ids=str)
@pytest.mark.parametrize("after_trainable", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_inplace_frozen_and_special_layers(spec, after_trainable, dtype):
    shape = (2, 4, 6, 5)
    network = _single(spec, shape, [_prefix(shape)] if after_trainable else [])
    expected = torch_saved_bytes(network, dtype)
    assert convcalc.analyze(network, dtype=dtype).totals.saved_bytes == expected


def test_new_families_in_a_convnext_like_block_save_what_torch_saves():
    network = {
        "input": [4, 8, 8],
        "batch_size": 2,
        "layers": [
            {"type": "reflectionpad2d", "padding": 1},
            {"type": "conv2d", "out_channels": 8, "kernel_size": 3},
            {
                "type": "residual",
                "layers": [
                    {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
                    "layernorm2d",
                    {"type": "permute", "order": [0, 2, 3, 1]},
                    {"type": "linear", "in_features": 8, "out_features": 16},
                    {"type": "hardtanh", "inplace": True},
                    {"type": "linear", "in_features": 16, "out_features": 8},
                    {"type": "permute", "order": [0, 3, 1, 2]},
                    "layerscale",
                    {"type": "stochasticdepth", "p": 0.5},
                ],
            },
            {"type": "pixelunshuffle", "downscale_factor": 2},
            {"type": "channelshuffle", "groups": 4},
            "mish",
            {"type": "mean", "dim": [-1, -2]},
            {"type": "unflatten", "dim": 1, "unflattened_size": [4, 8]},
            {"type": "prelu", "num_parameters": 4},
        ],
    }
    assert convcalc.analyze(network).totals.saved_bytes == torch_saved_bytes(network)


def test_a_frozen_linear_saves_nothing_even_inside_a_trained_network():
    network = {
        "input": [3, 4, 4],
        "batch_size": 2,
        "layers": [
            {"type": "conv2d", "out_channels": 2, "kernel_size": 3},
            "flatten",
            {"type": "linear", "out_features": 5, "trainable": False},
            "relu",
        ],
    }
    report = convcalc.analyze(network)
    assert report.row("layers.2").saved_bytes == 0
    assert report.totals.saved_bytes == torch_saved_bytes(network)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("mnist_cnn", {}),
        ("lenet5", {}),
        ("alexnet_original", {}),
        ("resnet18", {"input": [3, 64, 64], "batch_size": 2}),
        ("resnet50", {"input": [3, 64, 64]}),
        ("mobilenet_v2", {"input": [3, 64, 64], "batch_size": 2}),
        ("vgg16", {"input": [3, 32, 32]}),
    ],
)
def test_example_specs_save_what_torch_saves(name, overrides):
    spec = yaml.safe_load((SPECS / f"{name}.yaml").read_text(encoding="utf-8"))
    spec.update(overrides)
    assert convcalc.analyze(spec).totals.saved_bytes == torch_saved_bytes(spec)


@settings(max_examples=60, deadline=None)
@given(st.lists(stage(), min_size=1, max_size=4), st.integers(1, 2))
def test_random_networks_save_and_peak_as_torch(stages, batch_size):
    """What autograd saves in training, and the live activations' peak in inference."""
    from tests.test_fit import torch_peak_inference

    spec = {"input": [3, 16, 16], "batch_size": batch_size, "layers": stages}
    note(f"spec={spec}")
    try:
        report = convcalc.analyze(spec)
    except convcalc.ShapeError:
        return
    assert report.totals.saved_bytes == torch_saved_bytes(spec)
    assert report.totals.peak_inference_bytes == torch_peak_inference(spec)


@settings(max_examples=300, deadline=None)
@given(layer_and_shape(), st.booleans())
def test_random_layers_save_what_torch_saves(case, after_trainable):
    spec, shape = case
    dims = int(spec["type"][-2]) if spec["type"][-2:] in ("1d", "2d", "3d") else 0
    if dims and len(shape) != dims + 2:
        return  # torch reads other ranks as unbatched samples (see test_differential)
    network = _single(spec, shape, [_prefix(shape)] if after_trainable else [])
    note(f"network={network}")
    try:
        report = convcalc.analyze(network)
        expected = torch_saved_bytes(network)
    except Exception:  # refused by the calculator or by torch: test_differential's subject
        event("refused")
        return
    event("compared")
    assert report.totals.saved_bytes == expected


def test_block_rows_sum_their_children():
    report = convcalc.analyze(SPECS / "resnet18.yaml")
    for row in report.rows:
        if row.is_block:
            children = [
                r
                for r in report.rows
                if r.path.startswith(row.path + ".") and r.depth == row.depth + 1
            ]
            assert row.saved_bytes == sum(r.saved_bytes for r in children)
    top = [r for r in report.rows if r.depth == 1]
    assert report.totals.saved_bytes == sum(r.saved_bytes for r in top)


@pytest.mark.parametrize(("optimizer", "states"), [("sgd", 1), ("adam", 2), ("adamw", 2)])
def test_training_memory_adds_weights_gradients_state_and_activations(optimizer, states):
    report = convcalc.analyze(SPECS / "mnist_cnn.yaml", batch_size=64)
    memory = report.training_memory(optimizer)
    params = 50_186 * 4  # the published count, in float32
    assert memory.weights == params
    assert memory.gradients == params
    assert memory.optimizer_state == states * params
    assert memory.activations == report.totals.saved_bytes
    assert memory.total == (2 + states) * params + report.totals.saved_bytes
    assert memory.batch_size == 64


def test_training_memory_counts_frozen_weights_but_not_their_gradients():
    network = {
        "input": [3, 8, 8],
        "layers": [
            {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "trainable": False},
            "batchnorm2d",
        ],
    }
    memory = convcalc.analyze(network).training_memory("adam")
    conv, norm, buffers = 3 * 9 * 4 + 4, 2 * 4, 2 * 4 + 1
    assert memory.weights == (conv + norm + buffers) * 4
    assert memory.gradients == norm * 4
    assert memory.optimizer_state == 2 * norm * 4


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'; use one of sgd"):
        convcalc.analyze(SPECS / "mnist_cnn.yaml").training_memory("rmsprop")
