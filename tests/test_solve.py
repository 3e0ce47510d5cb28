"""``convcalc solve``: every answer holds in torch, and nothing within the bounds is missed."""

from __future__ import annotations

import itertools
import json
import warnings

import pytest
import torch
from click.testing import CliRunner

import convcalc
from convcalc.cli import cli
from convcalc.solve import solve

SMALL = {"kernel": range(1, 6), "stride": range(1, 5), "dilation": range(1, 3)}


def torch_size(kind: str, n: int, k: int, s: int, p: int, d: int, extra) -> int | None:
    """The output length torch gives, or None when torch refuses."""
    if kind == "conv":
        module = torch.nn.Conv1d(1, 1, k, stride=s, padding=p, dilation=d)
    elif kind == "pool":
        module = torch.nn.MaxPool1d(k, stride=s, padding=p, dilation=d, ceil_mode=extra)
    else:
        module = torch.nn.ConvTranspose1d(
            1, 1, k, stride=s, padding=p, dilation=d, output_padding=extra
        )
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return module(torch.zeros(1, 1, n)).shape[-1]
    except RuntimeError:
        return None


def brute_force(kind: str, n: int) -> dict[int, set[tuple]]:
    """Output size -> every (kernel, stride, padding, dilation, extra) torch maps n onto it."""
    found: dict[int, set[tuple]] = {}
    dilations = range(1, 2) if kind == "pool" else SMALL["dilation"]
    for k, s, d in itertools.product(SMALL["kernel"], SMALL["stride"], dilations):
        span = d * (k - 1) + 1
        for p in range(0, (k // 2 if kind == "pool" else span - 1) + 1):
            extras = (
                [False, True]
                if kind == "pool"
                else range(max(s, d))
                if kind == "convtranspose"
                else [None]
            )
            for extra in extras:
                size = torch_size(kind, n, k, s, p, d, extra)
                if size is not None and size > 0:
                    found.setdefault(size, set()).add((k, s, p, d, extra))
    return found


def as_tuple(solution, kind: str) -> tuple:
    extra = {
        "conv": None,
        "pool": solution.ceil_mode,
        "convtranspose": solution.output_padding,
    }[kind]
    return (solution.kernel, solution.stride, solution.padding, solution.dilation, extra)


@pytest.mark.parametrize("kind", ["conv", "pool", "convtranspose"])
@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_solve_finds_exactly_what_torch_allows(kind, n):
    """Brute force with torch over small bounds: same set of answers for every output."""
    expected = brute_force(kind, n)
    bounds = dict(SMALL, dilation=range(1, 2) if kind == "pool" else SMALL["dilation"])
    for target, combinations in expected.items():
        answers = solve(n, target, kind=kind, **bounds)
        assert {as_tuple(a, kind) for a in answers} == combinations, (kind, n, target)
    # and an output torch never gives has no answer
    unreachable = max(expected) + 1
    assert solve(n, unreachable, kind=kind, **bounds) == []


@pytest.mark.parametrize(
    ("query", "first"),
    [
        ({"input_size": 224, "output_size": 112, "kernel": 3}, (3, 2, 1, 1)),
        ({"input_size": 224, "output_size": 224, "kernel": 3, "stride": 1}, (3, 1, 1, 1)),
        ({"input_size": 227, "output_size": 55, "kernel": 11, "stride": 4}, (11, 4, 0, 1)),
        ({"input_size": 32, "output_size": 16, "kind": "pool"}, (2, 2, 0, 1)),
        ({"input_size": 7, "output_size": 14, "kind": "convtranspose", "stride": 2}, (2, 2, 0, 1)),
    ],
)
def test_simplest_first(query, first):
    (best, *_) = solve(**query)
    assert (best.kernel, best.stride, best.padding, best.dilation) == first
    assert best.covers_input


def test_uncovered_pixels_are_marked_as_the_calculator_warns():
    for solution in solve(224, 54, kernel=11, stride=4, dilation=1):
        spec = {
            "input": [1, 224],
            "layers": [
                {
                    "type": "conv1d",
                    "out_channels": 1,
                    "kernel_size": 11,
                    "stride": 4,
                    "padding": solution.padding,
                }
            ],
        }
        warned = any("never covered" in w.message for w in convcalc.analyze(spec).warnings)
        assert warned == (solution.dropped > 0)
    (alexnet,) = solve(224, 54, kernel=11, stride=4, padding=0, dilation=1)
    assert alexnet.dropped == 1 and alexnet.coverage == "drops the last 1 pixel"
    (skipping,) = solve(225, 113, kernel=1, stride=2, padding=0, dilation=1)
    assert skipping.skipped == 1 and skipping.coverage == "skips 1 of every 2 pixels"
    (both,) = solve(224, 112, kernel=1, stride=2, padding=0, dilation=1)
    assert both.coverage == "drops the last 1 pixel; skips 1 of every 2 pixels"


def test_cli_lists_the_issue_example():
    result = CliRunner().invoke(cli, ["solve", "--in", "224", "--out", "112", "--kernel", "3"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "conv: 224 → 112, 3 solutions, simplest first"
    assert lines[4].split()[:5] == ["3", "2", "1", "1", "yes"]
    data = json.loads(
        CliRunner()
        .invoke(cli, ["solve", "--in", "224", "--out", "112", "--kernel", "3", "-f", "json"])
        .stdout
    )
    assert data[0]["stride"] == 2 and data[0]["padding"] == 1 and data[0]["covers_input"]


def test_cli_ranges_and_nothing_found():
    result = CliRunner().invoke(
        cli,
        [
            "solve",
            "--in",
            "10",
            "--out",
            "4",
            "--kind",
            "pool",
            "--kernel",
            "2:3",
            "--no-ceil-mode",
            "-f",
            "json",
        ],
    )
    assert result.exit_code == 0
    assert {(s["kernel_size"], s["ceil_mode"]) for s in json.loads(result.stdout)} <= {
        (2, False),
        (3, False),
    }
    result = CliRunner().invoke(cli, ["solve", "--in", "5", "--out", "300", "--kernel", "3"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no conv within the bounds turns 5 into 300")
    result = CliRunner().invoke(cli, ["solve", "--in", "5", "--out", "3", "--kernel", "4:2"])
    assert result.exit_code == 2 and "the smaller first" in result.stderr


def test_a_larger_output_suggests_a_transposed_conv():
    """Regression (issue 12): `solve --in 10 --out 100` only said nothing fits."""
    from click.testing import CliRunner

    from convcalc.cli import cli

    result = CliRunner().invoke(cli, ["solve", "--in", "10", "--out", "100"])
    assert result.exit_code == 1
    assert "try --kind convtranspose" in result.stderr
    result = CliRunner().invoke(
        cli, ["solve", "--in", "10", "--out", "100", "--kind", "convtranspose"]
    )
    assert result.exit_code == 0
