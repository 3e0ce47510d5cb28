"""Models in (``from_torch``, ``convcalc import-torch``) and specs out (``convcalc export``).

torch is the referee: an imported spec has the model's ``sum(p.numel())`` and the MACs
``FlopCounterMode`` counts; an exported module builds, runs to the calculator's output
shape, has its parameter count and ``build_module``'s parameter names, and is ruff-clean.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import convcalc
import convcalc.torch_modules
from convcalc.cli import cli
from convcalc.errors import ModelImportError
from convcalc.export import export_pytorch
from convcalc.layers import Leaf
from convcalc.torch_import import from_torch

from . import torchvision_like as models
from .conftest import SPECS_DIR
from .test_differential import stage

RUFF = [sys.executable, "-m", "ruff"]


def torch_numbers(model: torch.nn.Module, shape: tuple[int, ...]) -> tuple[int, int, tuple]:
    """(parameters, MACs, output shape) of one sample, by torch."""
    params, _, macs, output = torch_counts(model, shape)
    return params, macs, output


def torch_counts(model: torch.nn.Module, shape: tuple[int, ...]) -> tuple[int, int, int, tuple]:
    """(parameters, trainable parameters, MACs, output shape) of one sample, by torch."""
    counter = FlopCounterMode(display=False)
    model.eval()
    with counter, torch.no_grad():
        output = model(torch.zeros(1, *shape))
    return (
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        counter.get_total_flops() // 2,
        tuple(output.shape),
    )


@pytest.mark.parametrize(
    ("factory", "shape"),
    [
        (models.resnet_basic, (3, 64, 64)),
        (models.resnet_bottleneck, (3, 64, 64)),
        (models.InceptionNet, (3, 32, 32)),
        (models.MobileNetLike, (3, 32, 32)),
        (models.Functional, (1, 16, 16)),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_imported_spec_counts_what_torch_counts(factory, shape):
    model = factory()
    report = convcalc.analyze(from_torch(model, shape))
    params, macs, output = torch_numbers(model, shape)
    assert report.totals.params == params
    assert report.totals.macs == macs
    assert report.output_shape == output


def test_additions_and_cat_are_merge_layers_reading_named_layers():
    resnet = from_torch(models.resnet_basic(), (3, 64, 64))
    assert resnet.version == 2 and all(isinstance(layer, Leaf) for layer in resnet.layers)
    adds = [layer for layer in resnet.layers if layer.type == "add"]
    assert [a.name for a in adds] == [
        "layer1.0.add",
        "layer1.1.add",
        "layer2.0.add",
        "layer2.1.add",
    ]
    assert adds[0].from_ == ["layer1.0.bn2", "maxpool"]  # out += identity
    assert adds[2].from_ == ["layer2.0.bn2", "layer2.0.downsample.1"]
    names = [layer.name for layer in resnet.layers]
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"]
    assert names[4:6] == ["layer1.0.conv1", "layer1.0.bn1"]
    inception = from_torch(models.InceptionNet(), (3, 32, 32))
    (cat,) = [layer for layer in inception.layers if layer.type == "cat"]
    assert cat.name == "mixed.cat" and cat.dim == 1
    assert cat.from_ == [
        "mixed.branch1x1.relu",
        "mixed.branch5x5_2.relu",
        "mixed.branch3x3dbl_2.relu",
        "mixed.branch_pool.relu",
    ]
    pool = next(layer for layer in inception.layers if layer.type == "avgpool2d")
    assert pool.name == "mixed.avg_pool2d" and pool.from_ == "stem.relu"  # F.avg_pool2d
    mobile = from_torch(models.MobileNetLike(), (3, 32, 32))
    adds = [layer for layer in mobile.layers if layer.type == "add"]
    assert [a.name for a in adds] == ["features.3.add", "features.5.add"]  # x + self.conv(x)


@st.composite
def network(draw):
    return {
        "input": [3, 16, 16],
        "layers": draw(st.lists(stage(), min_size=1, max_size=4)),
    }


def totals(report):
    """The totals, less the paths they name (paths differ by design): only whether the
    receptive field comes to cover the input is kept. The inference peak is left out too:
    a block is a module that holds its inputs until it returns, and an imported spec is
    flat (tests/test_fit.py holds both peaks to torch)."""
    covers = report.totals.field_covers_input_path is not None
    return dataclasses.replace(
        report.totals,
        largest_activation_path=None,
        field_covers_input_path=covers,
        peak_inference_bytes=0,
    )


def leaf_numbers(report):
    """The leaf rows' numbers; the joins of residual and concat blocks are add and cat
    layers in an imported (flat) spec, so merges are left out on both sides."""
    return [
        (row.type, row.output_shape, row.params, row.trainable_params, row.macs, row.buffers)
        for row in report.rows
        if not row.is_block and row.type not in ("add", "cat")
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(network())
def test_round_trip_spec_module_spec_analyses_identically(spec):
    note(f"spec={spec}")
    try:
        before = convcalc.analyze(spec)
    except convcalc.ShapeError:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        after = convcalc.analyze(from_torch(convcalc.build_module(spec), spec["input"]))
    assert leaf_numbers(after) == leaf_numbers(before)
    assert totals(after) == totals(before)
    assert after.output_shape == before.output_shape
    final = [r.receptive_field for r in before.rows if r.depth == 1][-1]
    assert [r.receptive_field for r in after.rows if r.depth == 1][-1] == final


@pytest.mark.parametrize("path", sorted(SPECS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_spec_round_trips(path):
    before = convcalc.analyze(path)
    after = convcalc.analyze(from_torch(convcalc.build_module(path), before.input_shape[1:]))
    assert leaf_numbers(after) == leaf_numbers(before)
    assert totals(after) == totals(before)


# -- refusals ------------------------------------------------------------------------------


def test_unsupported_op_names_the_op_and_the_line():
    with pytest.raises(ModelImportError) as caught:
        from_torch(models.Unsupported(), (3, 16, 16))
    message = str(caught.value)
    assert message.startswith(f"{models.__file__}:")
    assert "cumsum (an operation convcalc has no layer for) cannot be expressed" in message
    line = int(message.split(":")[1])
    source = Path(models.__file__).read_text(encoding="utf-8").splitlines()
    assert "cumsum" in source[line - 1]


def test_untraceable_model_suggests_the_leaf_option():
    with pytest.raises(ModelImportError, match="keep it whole with --leaf NAME"):
        from_torch(models.Untraceable(), (3, 16, 16))
    # torch.export runs checks on shapes as written; --leaf reads a module as its base
    for leaves in ([], ["CheckedConv"]):
        spec = from_torch(models.WithCheckedConv(), (3, 16, 16), leaf_modules=leaves)
        assert spec.layers[0].type == "conv2d" and spec.layers[0].out_channels == 8


def test_shared_weights_are_refused():
    class Twice(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(self.conv(x))

    with pytest.raises(ModelImportError, match=r"module conv .* is called twice"):
        from_torch(Twice(), (3, 8, 8))


# -- the commands --------------------------------------------------------------------------


def test_import_torch_command_writes_a_spec_that_loads(tmp_path):
    out = tmp_path / "resnet.yaml"
    result = CliRunner().invoke(
        cli,
        [
            "import-torch",
            "tests.torchvision_like:resnet_bottleneck",
            "--input",
            "3,64,64",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = convcalc.analyze(out)
    params, macs, _ = torch_numbers(models.resnet_bottleneck(), (3, 64, 64))
    assert (report.totals.params, report.totals.macs) == (params, macs)
    assert out.read_text(encoding="utf-8").startswith(
        "# Imported by convcalc from tests.torchvision_like:resnet_bottleneck"
    )


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("tests.nowhere:model", "cannot import 'tests.nowhere': No module named 'tests.nowhere'"),
        ("tests.torchvision_like:nothing", "'tests.torchvision_like' has no 'nothing'"),
        ("tests.torchvision_like", "give the model as package.module:factory"),
        ("tests.torchvision_like:raises", "raises() raised RuntimeError: no weights here"),
        ("tests.torchvision_like:Untraceable", "torch.export cannot capture Untraceable"),
        ("tests.torchvision_like:Unsupported", "cumsum (an operation convcalc has no layer for)"),
    ],
)
def test_import_torch_errors_are_one_line_and_write_nothing(tmp_path, reference, message):
    out = tmp_path / "spec.yaml"
    result = CliRunner().invoke(
        cli, ["import-torch", reference, "--input", "3,16,16", "-o", str(out)]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def load_module(path, name: str):
    spec = importlib.util.spec_from_file_location(f"exported_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted(SPECS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_exported_module_matches_the_calculator(tmp_path, path):
    code = tmp_path / f"{path.stem}.py"
    result = CliRunner().invoke(cli, ["export", str(path), "--to", "pytorch", "-o", str(code)])
    assert result.exit_code == 0
    text = code.read_text(encoding="utf-8")
    assert "import torch\nfrom torch import nn\n" in text
    assert not any(
        line.startswith(("import ", "from ")) and "torch" not in line for line in text.splitlines()
    )  # only torch
    module = load_module(code, path.stem)
    classes = [
        v
        for v in vars(module).values()
        if isinstance(v, type)
        and issubclass(v, torch.nn.Module)
        and v.__module__ == module.__name__
        and not hasattr(convcalc.torch_modules, v.__name__)  # layers torch.nn lacks
    ]
    assert len(classes) == 1
    model = classes[0]().eval()
    report = convcalc.analyze(path)
    assert sum(p.numel() for p in model.parameters()) == report.totals.params
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == report.totals.trainable_params
    with torch.no_grad():
        out = model(torch.zeros(report.input_shape))
    outs = out if isinstance(out, tuple) else (out,)  # several outputs: one tensor each
    assert [tuple(o.shape) for o in outs] == [
        *(report.outputs or {"": report.output_shape}).values()
    ]
    # build_module's parameter names: weights from `convcalc train` load as they are
    reference = convcalc.build_module(path)
    assert list(model.state_dict()) == list(reference.state_dict())
    model.load_state_dict(reference.state_dict())
    assert f"Parameters: {report.totals.params:,}" in text
    lint = subprocess.run(
        [*RUFF, "check", "--isolated", "--select", "E,F,W,I,B,UP", "--ignore", "E501", str(code)],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout


def test_export_runs_as_a_script(tmp_path):
    code = tmp_path / "mnist.py"
    code.write_text(export_pytorch(SPECS_DIR / "mnist_cnn.yaml"), encoding="utf-8")
    run = subprocess.run([sys.executable, str(code)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "torch.Size([1, 10])"


CUSTOM_MODULES_SPEC = {
    "name": "convnext block",
    "input": [3, 16, 16],
    "batch_size": 2,
    "layers": [
        {"type": "conv2d", "out_channels": 8, "kernel_size": 4, "stride": 4},
        "layernorm2d",
        {
            "type": "residual",
            "layers": [
                {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1, "groups": 8},
                {"type": "layernorm2d", "eps": 1e-5, "bias": False},
                {"type": "permute", "order": [0, 2, 3, 1]},
                {"type": "linear", "in_features": 8, "out_features": 32},
                "gelu",
                {"type": "linear", "in_features": 32, "out_features": 8},
                {"type": "permute", "order": [0, 3, 1, 2]},
                {"type": "layerscale", "init_value": 0.5},
                {"type": "stochasticdepth", "p": 0.25, "mode": "batch"},
                {"type": "droppath", "p": 0.1},
            ],
        },
        {"type": "mean", "dim": [2, 3], "keepdim": True},
        "flatten",
    ],
}


def test_exported_custom_modules_match_build_module(tmp_path):
    text = export_pytorch(CUSTOM_MODULES_SPEC)
    assert not any(
        line.startswith(("import ", "from ")) and "torch" not in line for line in text.splitlines()
    )  # the custom classes came along, importing only torch
    for name in ("LayerNorm2d", "LayerScale", "StochasticDepth", "Permute", "Mean"):
        assert f"\nclass {name}(nn.Module):" in text
    # a subclass comes after its base
    assert text.index("\nclass DropPath(StochasticDepth):") > text.index("class StochasticDepth(")
    namespace: dict = {}
    exec(compile(text, "exported.py", "exec"), namespace)
    model = namespace["ConvnextBlock"]().eval()
    reference = convcalc.build_module(CUSTOM_MODULES_SPEC).eval()
    report = convcalc.analyze(CUSTOM_MODULES_SPEC)
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in reference.parameters()) == report.totals.params
    assert list(model.state_dict()) == list(reference.state_dict())
    model.load_state_dict(reference.state_dict())
    x = torch.randn(report.input_shape)
    with torch.no_grad():
        assert tuple(model(x).shape) == tuple(reference(x).shape) == report.output_shape
        assert torch.equal(model(x), reference(x))  # the same modules, the same weights
    code = tmp_path / "exported.py"
    code.write_text(text, encoding="utf-8")
    lint = subprocess.run(
        [*RUFF, "check", "--isolated", "--select", "E,F,W,I,B,UP", "--ignore", "E501", str(code)],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout


def test_custom_modules_import_as_their_layers():
    from convcalc import torch_modules as custom

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 4, stride=4),
        custom.LayerNorm2d(8, eps=1e-5, bias=False),
        custom.Permute([0, 2, 3, 1]),
        torch.nn.GELU(),
        custom.Permute([0, 3, 1, 2]),
        custom.LayerScale(8, init_value=0.5),
        custom.StochasticDepth(0.25, mode="batch"),
        custom.DropPath(0.1),
        custom.Mean([2, 3], keepdim=True),
        torch.nn.Flatten(),
    )
    spec = from_torch(model, (3, 16, 16))
    params, macs, output = torch_numbers(model, (3, 16, 16))
    report = convcalc.analyze(spec)
    assert (report.totals.params, report.totals.macs, report.output_shape) == (params, macs, output)
    layers = [layer.model_dump(exclude_defaults=True, exclude={"name"}) for layer in spec.layers]
    assert layers[1:] == [
        {"type": "layernorm2d", "eps": 1e-5, "bias": False},
        {"type": "permute", "order": (0, 2, 3, 1)},
        {"type": "gelu"},
        {"type": "permute", "order": (0, 3, 1, 2)},
        {"type": "layerscale", "init_value": 0.5},
        {"type": "stochasticdepth", "p": 0.25, "mode": "batch"},
        {"type": "droppath", "p": 0.1},
        {"type": "mean", "dim": (2, 3), "keepdim": True},
        {"type": "flatten"},
    ]


def test_functional_activations_keep_their_arguments():
    functional = torch.nn.functional

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unflatten = torch.nn.Unflatten(1, (2, 2))

        def forward(self, x):
            x = functional.softplus(x, beta=2)
            x = functional.hardtanh(x, -2.0, 2.0)
            x = functional.celu(x, alpha=0.5)
            x = functional.hardshrink(x, 0.3)
            x = torch.selu(functional.mish(functional.softsign(x)))
            return self.unflatten(x)

    spec = from_torch(Model(), (4, 5, 5))
    assert [layer.model_dump(exclude_defaults=True, exclude={"name"}) for layer in spec.layers] == [
        {"type": "softplus", "beta": 2.0},
        {"type": "hardtanh", "min_val": -2.0, "max_val": 2.0},
        {"type": "celu", "alpha": 0.5},
        {"type": "hardshrink", "lambd": 0.3},
        {"type": "softsign"},
        {"type": "mish"},
        {"type": "selu"},
        {"type": "unflatten", "dim": 1, "unflattened_size": (2, 2)},  # not collapsed to 2
    ]
    assert convcalc.analyze(spec).output_shape == (1, 2, 2, 5, 5)
