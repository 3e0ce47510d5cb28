"""The public API: every name in ``convcalc.__all__`` exists, and every public function
works any number of times in a fresh interpreter (a function that shares its name with a
submodule is replaced by the module once the module is imported: none may)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
        module = convcalc.build_module(spec)
        assert sum(p.numel() for p in module.parameters()) == 402
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
