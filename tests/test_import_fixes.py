"""Regression tests for the import bugs of issue 12 ("Hardening"), found by importing
torchinfo's test fixtures and torchvision's zoo. torch is the referee for every number:
``sum(p.numel())``, ``requires_grad``, output shapes and ``FlopCounterMode``.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import convcalc
import convcalc.torch_modules
from convcalc.cli import cli
from convcalc.errors import ModelImportError, ShapeError
from convcalc.export import export_pytorch
from convcalc.torch_bridge import torch_layer
from convcalc.torch_import import UnusedParametersWarning, from_torch, import_model

from .test_import_export import torch_counts as torch_numbers
from .test_layers_vs_torch import CASES, _layer
from .test_training_memory import _prefix, torch_saved_bytes


def convcalc_numbers(network: convcalc.Network) -> tuple[int, int, int, tuple]:
    totals = (report := convcalc.analyze(network)).totals
    return totals.params, totals.trainable_params, totals.macs, report.output_shape


def parameters(model: nn.Module) -> list[tuple[tuple[int, ...], bool]]:
    """Every parameter tensor's shape and whether it trains, in the model's order."""
    return [(tuple(p.shape), p.requires_grad) for p in model.parameters()]


def round_trip(tmp_path: Path, factory: str, shape: str) -> nn.Module:
    """``convcalc import-torch`` then ``convcalc export``: the exported module, built."""
    spec, code = tmp_path / "spec.yaml", tmp_path / "model.py"
    runner = CliRunner()
    imported = runner.invoke(cli, ["import-torch", factory, "--input", shape, "-o", str(spec)])
    assert imported.exit_code == 0, imported.output
    exported = runner.invoke(cli, ["export", str(spec), "--to", "pytorch", "-o", str(code)])
    assert exported.exit_code == 0, exported.output
    return built(code)


def built(code: Path) -> nn.Module:
    """The model class an exported file defines, built."""
    loader = importlib.util.spec_from_file_location(f"exported_{code.parent.name}", code)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    (cls,) = [
        v
        for v in vars(module).values()
        if isinstance(v, type)
        and issubclass(v, nn.Module)
        and v.__module__ == module.__name__
        and not hasattr(convcalc.torch_modules, v.__name__)  # layers torch.nn lacks
    ]
    return cls()


# -- 1. a layer norm keeps its normalized_shape ---------------------------------------------


def conv1d_layer_norm() -> nn.Module:
    """torchinfo's fixture: [N, 8, 30] normalised over its last dimension only."""
    return nn.Sequential(nn.Conv1d(3, 8, 3, padding=1), nn.LayerNorm(30))


def conv2d_layer_norm() -> nn.Module:
    """[N, 8, 6, 6] normalised over its last dimension only."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.LayerNorm(6))


def layer_norm_with_arguments() -> nn.Module:
    return nn.Sequential(nn.Conv1d(3, 8, 1), nn.LayerNorm(30, eps=1e-3, bias=False))


@pytest.mark.parametrize(
    ("factory", "shape"),
    [
        (conv1d_layer_norm, (3, 30)),
        (conv2d_layer_norm, (3, 6, 6)),
        (layer_norm_with_arguments, (3, 30)),
    ],
    ids=lambda v: v.__name__ if callable(v) else "x".join(map(str, v)),
)
def test_a_layer_norm_keeps_its_normalized_shape_and_arguments(tmp_path, factory, shape):
    model = factory()
    spec = from_torch(model, shape)
    assert convcalc_numbers(spec) == torch_numbers(model, shape)
    (norm,) = [layer for layer in spec.layers if layer.type == "layernorm"]
    original = model[1]
    assert [norm.normalized_shape] == list(original.normalized_shape)
    assert (norm.eps, norm.bias) == (original.eps, original.bias is not None)
    rebuilt = convcalc.build_module(spec)
    assert parameters(rebuilt) == parameters(model)
    exported = round_trip(
        tmp_path, f"tests.test_import_fixes:{factory.__name__}", ",".join(map(str, shape))
    )
    assert parameters(exported) == parameters(model)


def test_convnext_layer_norm_2d_imports_with_its_own_size(tmp_path, torchvision_models):
    layer_norm_2d = torchvision_models.convnext.LayerNorm2d
    model = nn.Sequential(nn.Conv2d(3, 96, 4, 4), layer_norm_2d(96, eps=1e-6))  # ConvNeXt's stem
    spec = from_torch(model, (3, 224, 224))
    assert convcalc_numbers(spec) == torch_numbers(model, (3, 224, 224))
    assert parameters(convcalc.build_module(spec)) == parameters(model)
    code = tmp_path / "stem.py"
    code.write_text(export_pytorch(spec), encoding="utf-8")
    assert parameters(built(code)) == parameters(model)
    # read as its base class, nn.LayerNorm(96) cannot take [N, 96, 56, 56]: refused, not
    # imported with weights of shape (96, 56, 56)
    with pytest.raises(ModelImportError, match=r"base class's forward, which may not fit$"):
        from_torch(model, (3, 224, 224), leaf_modules=[layer_norm_2d])


# -- 2. trainability per parameter tensor -----------------------------------------------


class MixedTrainable(nn.Module):
    """torchinfo's fixture: fully, partly (bias frozen) and not trainable convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.fully_trainable = nn.Conv1d(1, 1, 1)
        self.partially_trainable = nn.Conv1d(1, 1, 1, bias=True)
        self.partially_trainable.bias.requires_grad = False
        self.non_trainable = nn.Conv1d(1, 1, 1, 1, bias=True)
        self.non_trainable.weight.requires_grad = False
        self.non_trainable.bias.requires_grad = False
        self.dropout = nn.Dropout()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.non_trainable(self.partially_trainable(self.fully_trainable(x))))


class MixedFunctional(nn.Module):
    """The same, through torch.nn.functional calls on the module's parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.conv.weight.requires_grad = False
        self.norm = nn.LayerNorm(6)
        self.norm.bias.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.conv2d(x, self.conv.weight, self.conv.bias)
        return nn.functional.layer_norm(x, (6,), self.norm.weight, self.norm.bias)


@pytest.mark.parametrize(
    ("factory", "shape"), [(MixedTrainable, (1, 10)), (MixedFunctional, (3, 8, 8))]
)
def test_partly_frozen_layers_count_trainable_parameters_as_torch(factory, shape):
    model = factory()
    spec = from_torch(model, shape)
    assert convcalc_numbers(spec) == torch_numbers(model, shape)
    assert parameters(convcalc.build_module(spec)) == parameters(model)


def test_mixed_trainable_round_trips_through_the_commands(tmp_path):
    model = MixedTrainable()
    exported = round_trip(tmp_path, "tests.test_import_fixes:MixedTrainable", "1,10")
    assert parameters(exported) == parameters(model)
    trainable = [p.requires_grad for p in model.parameters()]
    assert trainable.count(True) == 3 and trainable.count(False) == 3  # torchinfo's count


PARAMETERISED = [
    pytest.param(spec, shape, id=spec["type"])
    for spec, shape in CASES
    if _layer(spec).infer(shape).params
]


@pytest.mark.parametrize(("spec", "shape"), PARAMETERISED)
def test_every_layer_names_its_parameter_tensors_as_torch(spec, shape):
    layer = _layer(spec)
    module = torch_layer(layer, shape)
    tensors = {name: p.numel() for name, p in module.named_parameters()}
    assert dict(layer.infer(shape).parameter_tensors) == tensors
    for name in tensors:  # freeze each tensor in turn: torch's trainable count
        frozen = _layer({**spec, "frozen": [name]})
        module = torch_layer(frozen, shape)
        expected = sum(p.numel() for p in module.parameters() if p.requires_grad)
        assert frozen.trainable_params(frozen.infer(shape)) == expected


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize(("spec", "shape"), PARAMETERISED)
@pytest.mark.parametrize("after_a_trainable_layer", [False, True], ids=["input", "after"])
def test_a_frozen_tensor_changes_what_backward_saves_as_in_torch(
    spec, shape, after_a_trainable_layer
):
    prefix = [_prefix(shape)] if after_a_trainable_layer else []
    for name, _ in _layer(spec).infer(shape).parameter_tensors:
        network = {
            "input": list(shape[1:]),
            "batch_size": shape[0],
            "layers": [*prefix, {**spec, "frozen": [name]}],
        }
        saved = convcalc.analyze(network).totals.saved_bytes
        assert saved == torch_saved_bytes(network), name


def test_freezing_a_tensor_the_layer_lacks_names_the_layer_and_line(write_spec):
    path = write_spec(
        "input: [3, 8, 8]\nlayers:\n"
        "  - {type: conv2d, name: stem, out_channels: 4, kernel_size: 3, bias: false,\n"
        "     frozen: [bias]}\n"
    )
    with pytest.raises(ShapeError) as caught:
        convcalc.analyze(path)
    assert str(caught.value) == (
        f"{path}:3: layers.0 (stem): frozen: conv2d has no parameter 'bias' (it has: weight)"
    )


# -- 3. submodules the forward never calls ---------------------------------------------


class WithAuxiliaryHead(nn.Module):
    """GoogLeNet's pattern: an auxiliary classifier the forward calls in training only."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.aux = nn.Sequential(nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 6 * 6, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(x)


def test_unused_submodules_are_reported_with_their_count():
    model = WithAuxiliaryHead()
    imported = import_model(model, (3, 8, 8))
    assert imported.unused == {"aux": sum(p.numel() for p in model.aux.parameters())}
    report = convcalc.analyze(imported.network)
    assert report.totals.params + imported.unused["aux"] == sum(
        p.numel() for p in model.parameters()
    )
    with pytest.warns(UnusedParametersWarning, match=r"^2,890 parameters .*: aux \(2,890\)$"):
        from_torch(model, (3, 8, 8))
    with pytest.warns(UnusedParametersWarning, match=r"aux \(2,890\)"):
        convcalc.analyze(model, input=[3, 8, 8])


# -- 4. error locations inside torchvision ------------------------------------------------


def test_a_refusal_inside_torchvision_names_torchvisions_file_and_line(torchvision_models):
    # a small vision transformer: its class token is expanded to the batch (no spec layer)
    model = torchvision_models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16
    )
    with pytest.raises(ModelImportError) as caught:
        from_torch(model, (3, 32, 32))
    message = str(caught.value)
    where, line = message.split(": ")[0].rsplit(":", 1)
    torchvision_dir = Path(torchvision_models.__file__).resolve().parent.parent
    assert torchvision_dir in Path(where).resolve().parents  # `site-packages/torch` is a prefix
    source = Path(where).read_text(encoding="utf-8").splitlines()[int(line) - 1]
    assert "expand" in source and message.startswith(f"{where}:{line}: expand (")


# -- 5. inputs: how many, and bare layers -------------------------------------------------


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(y)


class OptionalArguments(nn.Module):
    """torchinfo's RecursiveNet signature: arguments with a default are not inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor, args1=None, args2=None) -> torch.Tensor:
        return self.conv(x)


def test_a_model_with_two_inputs_given_one_shape_is_one_sentence_and_prints_nothing(capfd):
    with pytest.raises(ModelImportError) as caught:
        from_torch(TwoInputs(), (3, 8, 8))
    assert (
        str(caught.value) == "TwoInputs.forward takes 2 inputs (x, y), but 1 input shape was given"
    )
    assert capfd.readouterr() == ("", "")
    result = CliRunner().invoke(
        cli, ["import-torch", "tests.test_import_fixes:TwoInputs", "--input", "3,8,8"]
    )
    assert result.exit_code == 1
    assert result.stderr == f"error: {caught.value}\n"
    assert capfd.readouterr() == ("", "")


def test_more_shapes_than_inputs_is_one_sentence():
    with pytest.raises(
        ModelImportError,
        match=r"^Conv2d.forward takes 1 input \(input\), but 2 input shapes were given$",
    ):
        from_torch(nn.Conv2d(3, 4, 3), {"a": (3, 8, 8), "b": (3, 8, 8)})


def test_two_inputs_with_two_shapes_import():
    model = TwoInputs()
    report = convcalc.analyze(from_torch(model, {"x": (3, 8, 8), "y": (1, 8, 8)}))
    output = model(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8))
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert report.output_shape == tuple(output.shape)


@pytest.mark.parametrize(
    ("factory", "shape"),
    [
        (OptionalArguments, (3, 8, 8)),
        (lambda: nn.Conv2d(3, 8, 3), (3, 10, 10)),
        (lambda: nn.Linear(8, 64), (8,)),
        (lambda: nn.Linear(8, 64), (16, 8)),  # torch applies it to the last dimension
    ],
    ids=["optional_arguments", "conv2d", "linear", "linear_on_the_last_dimension"],
)
def test_optional_arguments_and_bare_layers_import_as_torch(factory, shape):
    model = factory()
    assert convcalc_numbers(from_torch(model, shape)) == torch_numbers(model, shape)


def test_no_warning_when_nothing_is_left_out():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_torch(nn.Linear(8, 64), (16, 8))
