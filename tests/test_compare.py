"""``convcalc compare``: totals and per-block deltas equal the two analyses' differences."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

import convcalc
from convcalc.cli import cli
from convcalc.compare import compare

from .conftest import GOLDEN_DIR, ROOT, SPECS_DIR

R18, R50 = str(SPECS_DIR / "resnet18.yaml"), str(SPECS_DIR / "resnet50.yaml")


def test_totals_are_the_analyses_differences():
    data = compare(R18, R50).to_dict()
    a, b = convcalc.analyze(R18).totals, convcalc.analyze(R50).totals
    for field in ("params", "trainable_params", "macs", "param_bytes", "activation_bytes"):
        entry = data["totals"][field]
        assert (entry["a"], entry["b"]) == (getattr(a, field), getattr(b, field))
        assert entry["delta"] == getattr(b, field) - getattr(a, field)
        assert entry["relative"] == pytest.approx(entry["delta"] / entry["a"])
    # the published receptive fields of the last feature maps
    assert data["receptive_field"]["a"]["size"] == [435, 435]
    assert data["receptive_field"]["b"]["size"] == [427, 427]


def test_top_level_blocks_pair_by_name_then_by_path_and_type():
    data = compare(R18, R50).to_dict(depth=1)
    assert data["depth"] == 1
    blocks = {entry["a"]["path"]: entry for entry in data["layers"]}
    layer3 = blocks["layers.6"]
    assert layer3["a"]["name"] == layer3["b"]["name"] == "layer3"
    assert layer3["a"]["params"] == convcalc.analyze(R18).row("layer3").params
    assert layer3["b"]["params"] == convcalc.analyze(R50).row("layer3").params
    assert blocks["layers.2"]["a"]["type"] == blocks["layers.2"]["b"]["type"] == "relu"


def one_sided(comparison, depth=None):
    """(side, path, type) of each row with no counterpart."""
    return [
        ("a", a.path, a.type) if b is None else ("b", b.path, b.type)
        for a, b in comparison.pairs(depth)
        if a is None or b is None
    ]


def test_a_layer_inserted_leaves_the_others_paired():
    before = {
        "input": [3, 32, 32],
        "layers": [{"type": "conv2d", "name": "stem", "out_channels": 8, "kernel_size": 3}, "relu"],
    }
    after = {
        "input": [3, 32, 32],
        "layers": [
            {"type": "conv2d", "name": "stem", "out_channels": 16, "kernel_size": 3},
            "batchnorm2d",
            "relu",
        ],
    }
    pairs = [
        (a and a.path, b and b.path, a and a.type, b and b.type)
        for a, b in compare(before, after).pairs()
    ]
    assert pairs == [
        ("layers.0", "layers.0", "conv2d", "conv2d"),  # by name
        (None, "layers.1", None, "batchnorm2d"),
        ("layers.1", "layers.2", "relu", "relu"),  # by order and type
    ]


# Where the names in the specs say each conv and linear layer belongs
ALEXNET_PAIRS = [
    ("conv1", "layers.0.0", "layers.0"),
    ("conv2", "layers.0.3", "layers.4"),
    ("conv3", "layers.0.6", "layers.8"),
    ("conv4", "layers.0.8", "layers.10"),
    ("conv5", "layers.0.10", "layers.12"),
    ("fc6", "layers.3.1", "layers.17"),
    ("fc7", "layers.3.4", "layers.20"),
    ("fc8", "layers.3.6", "layers.22"),
]


def test_alexnet_pairs_across_nesting():
    """torchvision's AlexNet (``features`` and ``classifier`` blocks) against the paper's
    (one flat list): every conv and linear layer pairs with its namesake, the unnamed ReLUs,
    pools, flatten and dropouts in order, and only the paper's two LRN layers and
    torchvision's adaptive pool are on one side."""
    comparison = compare(SPECS_DIR / "alexnet.yaml", SPECS_DIR / "alexnet_original.yaml")
    pairs = comparison.pairs()
    paired = {a.path: b.path for a, b in pairs if a is not None and b is not None}
    for name, a_path, b_path in ALEXNET_PAIRS:
        assert paired[a_path] == b_path, name
    assert one_sided(comparison) == [
        ("b", "layers.2", "localresponsenorm"),
        ("b", "layers.6", "localresponsenorm"),
        ("a", "layers.1", "adaptiveavgpool2d"),
    ]
    assert all(a.type == b.type for a, b in pairs if a is not None and b is not None)


@pytest.mark.parametrize(
    ("spec", "where", "index"),
    [
        ("alexnet", (), 1),  # every later top-level path shifts by one
        ("alexnet", (0, "layers"), 4),  # inside the features block
        ("resnet18", (), 4),  # before layer1: its blocks keep their place under the name
        ("resnet18", (5, "layers", 0, "layers"), 2),  # in layer2's first residual body
        ("resnet50", (), 0),
        ("mobilenet_v2", (), 2),
        ("unet_small", (2, "branches", 1), 1),  # in a concat's branch
    ],
)
def test_a_spec_against_itself_with_one_more_layer(spec, where, index):
    path = SPECS_DIR / f"{spec}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    layers = data["layers"]
    for key in where:  # down to the list that gets the new layer
        layers = layers[key]
    layers.insert(index, "identity")
    comparison = compare(path, data)
    assert [side for side, _, kind in one_sided(comparison)] == ["b"]
    assert [kind for _, _, kind in one_sided(comparison)] == ["identity"]
    for a, b in comparison.pairs():
        if a is not None and b is not None:
            same = ("name", "type", "output_shape", "params", "macs")
            assert [getattr(a, f) for f in same] == [getattr(b, f) for f in same], a.path


@pytest.mark.parametrize("depth", [None, 1, 2, 3, 4])
@pytest.mark.parametrize(
    ("a", "b"),
    [("resnet18", "resnet50"), ("alexnet", "alexnet_original"), ("unet_small", "mobilenet_v2")],
)
def test_each_side_shows_every_layer_once_and_adds_up_to_its_totals(a, b, depth):
    comparison = compare(SPECS_DIR / f"{a}.yaml", SPECS_DIR / f"{b}.yaml")
    pairs = comparison.pairs(depth)
    for report, rows in (
        (comparison.a, [x for x, _ in pairs if x is not None]),
        (comparison.b, [y for _, y in pairs if y is not None]),
    ):
        assert sum(row.params for row in rows) == report.totals.params
        assert sum(row.macs for row in rows) == report.totals.macs
        assert all(depth is None or row.depth <= depth for row in rows)
        order = [row.path for row in report.rows]
        assert [order.index(row.path) for row in rows] == sorted(
            order.index(row.path) for row in rows
        )


# (A path, B path) at each depth, read off the two specs: layer1 is a repeat of two
# basic blocks in ResNet-18 but a residual, a ReLU and a repeat of two bottlenecks in
# ResNet-50, so nothing in it pairs at depth 2; layers 2-4 pair their first block and
# its ReLU, and then a second basic block faces a repeat of bottlenecks.
TOP = [f"layers.{i}" for i in range(11)]
R18_R50 = {
    1: [(path, path) for path in TOP],
    2: [
        *[(path, path) for path in TOP[:4]],
        ("layers.4.0", None),
        ("layers.4.1", None),
        (None, "layers.4.0"),
        (None, "layers.4.1"),
        (None, "layers.4.2"),
        *[
            pair
            for stage in (5, 6, 7)
            for pair in [
                (f"layers.{stage}.0", f"layers.{stage}.0"),
                (f"layers.{stage}.1", f"layers.{stage}.1"),
                (f"layers.{stage}.2", None),
                (f"layers.{stage}.3", None),
                (None, f"layers.{stage}.2"),
            ]
        ],
        *[(path, path) for path in TOP[8:]],
    ],
}


@pytest.mark.parametrize("depth", [1, 2])
def test_resnet18_against_resnet50_by_depth(depth):
    pairs = [(a and a.path, b and b.path) for a, b in compare(R18, R50).pairs(depth)]
    assert pairs == R18_R50[depth]


def test_resnet_blocks_pair_in_order_at_full_depth():
    """The n-th basic block of a stage faces the n-th bottleneck: the first four layers of
    its body pair, the bottleneck's third conv, its BN and ReLU and a new shortcut do not."""
    pairs = {a.path: b.path for a, b in compare(R18, R50).pairs() if a and b}
    assert pairs["layers.4.0.0.body.0"] == "layers.4.0.body.0"
    assert pairs["layers.4.0.1"] == "layers.4.1"  # the ReLU after the add
    assert pairs["layers.4.1.0.body.3"] == "layers.4.2.0.0.body.3"
    assert pairs["layers.5.0.shortcut.0"] == "layers.5.0.shortcut.0"
    assert pairs["layers.5.2.body.0"] == "layers.5.2.0.0.body.0"
    assert "layers.4.0.shortcut.0" not in pairs.values()


def test_golden_alexnet_against_the_paper(regen_golden, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(
        cli, ["compare", "specs/alexnet.yaml", "specs/alexnet_original.yaml"]
    )
    assert result.exit_code == 0
    golden = GOLDEN_DIR / "compare_alexnet_alexnet_original.txt"
    if regen_golden:
        golden.write_text(result.stdout, encoding="utf-8")
    assert result.stdout == golden.read_text(encoding="utf-8")


def test_cli_depth():
    result = CliRunner().invoke(cli, ["compare", R18, R50, "--depth", "1"])
    assert result.exit_code == 0
    layer3 = next(line for line in result.stdout.splitlines() if "(layer3)" in line)
    assert layer3.split()[:5] == ["layers.6", "(layer3)", "layers.6", "(layer3)", "sequential"]
    assert "layers.6.0" not in result.stdout
    data = json.loads(
        CliRunner().invoke(cli, ["compare", R18, R50, "--depth", "2", "-f", "json"]).stdout
    )
    assert data["depth"] == 2
    assert len(data["layers"]) == len(R18_R50[2])


def test_cli_table_and_markdown():
    result = CliRunner().invoke(cli, ["compare", R18, R50])
    assert result.exit_code == 0
    assert (
        "Params" in result.stdout and "+13,867,520" in result.stdout and "+118.6%" in result.stdout
    )
    assert "435×435 (stride 32)" in result.stdout
    markdown = CliRunner().invoke(cli, ["compare", R18, R50, "--format", "markdown"])
    assert markdown.exit_code == 0
    assert markdown.stdout.startswith(f"**A: {R18} (resnet18), B: {R50} (resnet50)**")
    assert "|:--" in markdown.stdout
    data = json.loads(CliRunner().invoke(cli, ["compare", R18, R50, "-f", "json"]).stdout)
    assert data["output_shape"] == {"a": [1, 1000], "b": [1, 1000]}


def test_overrides_apply_to_both():
    data = json.loads(
        CliRunner().invoke(cli, ["compare", R18, R50, "--input", "3,64,64", "-f", "json"]).stdout
    )
    assert data["totals"]["macs"]["a"] == convcalc.analyze(R18, input=[3, 64, 64]).totals.macs
    assert data["totals"]["macs"]["b"] == convcalc.analyze(R50, input=[3, 64, 64]).totals.macs
