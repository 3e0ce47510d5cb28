"""The public API: every name in ``convcalc.__all__`` exists, and every public function
works any number of times in a fresh interpreter (a function that shares its name with a
submodule is replaced by the module once the module is imported: none may)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import convcalc

from .conftest import SPECS_DIR

SCRIPT = textwrap.dedent(
    """
    import torch
    import convcalc

    spec = {"input": [3, 8, 8], "layers": [{"type": "conv2d", "out_channels": 4,
            "kernel_size": 3}, "relu", "flatten", {"type": "linear", "out_features": 2}]}
    other = {**spec, "layers": spec["layers"][:-1] + [{"type": "linear", "out_features": 5}]}
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    for _ in range(2):
        assert convcalc.load_spec(spec).input == [3, 8, 8]
        assert convcalc.analyze(spec).totals.params == 112 + 288 + 2
        assert convcalc.compare(spec, other).totals[0][1:] == (402, 837)
        assert convcalc.from_torch(model, (3, 8, 8)).layers[0].type == "conv2d"
        assert convcalc.analyze(model, input=(3, 8, 8)).totals.params == 112
        module = convcalc.build_module(spec)
        assert sum(p.numel() for p in module.parameters()) == 402
        assert convcalc.fit(spec, "1MiB").batch.batch_size > 1
        cost = convcalc.estimate(convcalc.analyze(spec), convcalc.device_profile("t4"))
        assert cost.layer("layers.0").flops == 2 * 4 * 6 * 6 * 27
        assert convcalc.profile(spec, runs=1, warmup=0).layers[0].measured > 0
        assert set(convcalc.calibrate(quick=True, repeats=1).efficiency) >= {"conv"}
    print("ok")
    """
)


def test_every_public_name_exists():
    for name in convcalc.__all__:
        assert hasattr(convcalc, name), name


def test_public_functions_work_twice_in_a_fresh_interpreter():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_report_is_short_to_print_and_iterates_over_its_rows():
    report = convcalc.analyze(SPECS_DIR / "resnet50.yaml")
    text = repr(report)
    assert len(text) < 200
    assert text.startswith("<Report resnet50: ") and "25,557,032 params" in text
    assert list(report) == list(report.rows)
    assert len(report) == len(report.rows)


def test_comparison_reads_like_a_report():
    comparison = convcalc.compare(SPECS_DIR / "alexnet.yaml", SPECS_DIR / "vgg16.yaml")
    assert isinstance(comparison, convcalc.Comparison)
    _, a, b = comparison.totals[0]
    assert (a, b) == (61_100_840, 138_357_544)


def test_analyze_takes_a_torch_module_with_its_input_shape():
    import torch

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.Flatten()
    ).eval()
    model[1].requires_grad_(False)
    report = convcalc.analyze(model, input=[3, 32, 32], batch_size=4)
    with torch.no_grad():
        output = model(torch.zeros(4, 3, 32, 32))
    assert report.output_shape == tuple(output.shape)
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert report.totals.trainable_params == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )


def test_a_module_without_an_input_shape_is_one_sentence():
    import torch

    with pytest.raises(convcalc.ModelImportError) as caught:
        convcalc.analyze(torch.nn.Conv2d(3, 4, 3))
    assert str(caught.value) == (
        "analyze() needs the input shape of the Conv2d module: "
        "analyze(model, input=[3, 224, 224]) (one sample, channels first)"
    )


@pytest.mark.parametrize("value", [3, 2.5, [1, 3, 32, 32], None, b"input: [3]"])
def test_analyze_names_a_wrong_type_in_one_sentence(value):
    with pytest.raises(convcalc.ConvCalcError) as caught:
        convcalc.analyze(value)
    assert str(caught.value) == (
        "analyze() takes a spec (a path, YAML text, a dict or a Network) or a "
        f"torch.nn.Module, not {type(value).__name__}"
    )


@pytest.mark.parametrize("value", [{}, {"model": "resnet18"}])
def test_analyze_of_a_mapping_that_is_no_spec_is_a_spec_error(value):
    with pytest.raises(convcalc.SpecValidationError, match="missing required field 'input'"):
        convcalc.analyze(value)


def test_analyze_imports_torch_only_for_a_module():
    script = textwrap.dedent(
        """
        import sys
        import convcalc

        spec = {"input": [3, 8, 8], "layers": ["flatten"]}
        assert convcalc.analyze(spec).output_shape == (1, 192)
        for value in (3, None, [3, 8, 8]):
            try:
                convcalc.analyze(value)
            except convcalc.ConvCalcError:
                pass
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
