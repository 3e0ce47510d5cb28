"""``convcalc draw`` and ``Report._repr_html_``: the picture's content (read from the graph:
DAGs with skips, gates, splits and several outputs; folding; --depth; wrapping into
columns; the legend), the page's self-containment, the clear message without Graphviz,
and the pages in a real browser (headless Chromium)."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

import convcalc
from convcalc.cli import cli
from convcalc.draw import GRAPHVIZ_MISSING, draw

from .conftest import SPECS_DIR, headless_chromium

SVG = "{http://www.w3.org/2000/svg}"

pytestmark = pytest.mark.skipif(
    shutil.which("dot") is None, reason="Graphviz is not installed (.ci/run installs it)"
)


def texts(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg).iter(f"{SVG}text")]


def nodes(svg: str, kind: str = "") -> list[list[str]]:
    """The text lines of every drawn node whose class has ``kind`` (box, merge, add, cat,
    mul, split, input, output, block, conv, ...), in the order dot wrote them."""
    found = []
    for g in ET.fromstring(svg).iter(f"{SVG}g"):
        classes = (g.get("class") or "").split()
        if "node" in classes and (not kind or kind in classes):
            found.append([t.text or "" for t in g.iter(f"{SVG}text")])
    return found


def titles(svg: str, kind: str = "box") -> list[str]:
    return [lines[0] for lines in nodes(svg, kind)]


def swatch(svg: str, title: str) -> tuple[float, float]:
    """(width, height) of the coloured swatch in the box with this title."""
    for g in ET.fromstring(svg).iter(f"{SVG}g"):
        text = g.find(f"{SVG}text")
        if "node" in (g.get("class") or "").split() and text is not None and text.text == title:
            for polygon in g.iter(f"{SVG}polygon"):
                if polygon.get("stroke") == "transparent":
                    points = [
                        tuple(map(float, p.split(","))) for p in polygon.get("points").split()
                    ]
                    xs, ys = [p[0] for p in points], [p[1] for p in points]
                    return max(xs) - min(xs), max(ys) - min(ys)
    raise AssertionError(f"no box {title!r}")


def edge_labels(svg: str) -> list[str]:
    return [
        t.text or ""
        for g in ET.fromstring(svg).iter(f"{SVG}g")
        if "edge" in (g.get("class") or "").split()
        for t in g.iter(f"{SVG}text")
    ]


def columns(svg: str) -> list[ET.Element]:
    return [s for s in ET.fromstring(svg).iter(f"{SVG}svg") if s.get("class") == "column"]


# -- DAG specs (spec v2) ------------------------------------------------------------------


def conv(name=None, out=16, k=3, s=1, frm=None, groups=1, act="silu", **extra):
    layer = {
        "type": "conv2d",
        "out_channels": out,
        "kernel_size": k,
        "stride": s,
        "padding": k // 2,
        "bias": False,
        **extra,
    }
    if groups != 1:
        layer["groups"] = groups
    if frm:
        layer["from"] = frm
    return [layer, {"type": "batchnorm2d"}, {"type": act, **({"name": name} if name else {})}]


YOLO_NECK = {
    "version": 2,
    "name": "yolo_neck",
    "inputs": {"p3": [128, 80, 80], "p4": [256, 40, 40], "p5": [512, 20, 20]},
    "layers": [
        *conv("h5", 256, 1, frm="p5"),
        {"type": "upsample", "scale_factor": 2, "mode": "nearest"},
        {"type": "cat", "name": "cat4", "from": ["layers.3", "p4"]},
        *conv("td4", 256, 3),
        *conv("l4", 128, 1),
        {"type": "upsample", "scale_factor": 2, "mode": "nearest"},
        {"type": "cat", "name": "cat3", "from": ["layers.11", "p3"]},
        *conv("n3", 128, 3),
        *conv("down3", 128, 3, 2),
        {"type": "cat", "name": "pan4", "from": ["layers.18", "l4"]},
        *conv("n4", 256, 3),
        *conv("down4", 256, 3, 2),
        {"type": "cat", "name": "pan5", "from": ["layers.25", "h5"]},
        *conv("n5", 512, 3),
    ],
    "outputs": ["n3", "n4", "n5"],
}

DENSENET = {
    "version": 2,
    "name": "densenet_block",
    "input": [3, 32, 32],
    "blocks": {
        "dense_layer": {
            "params": {"growth": 12},
            "layers": [
                {"type": "batchnorm2d"},
                {"type": "relu"},
                {"type": "conv2d", "out_channels": "4 * growth", "kernel_size": 1, "bias": False},
                {"type": "batchnorm2d"},
                {"type": "relu"},
                {
                    "type": "conv2d",
                    "out_channels": "growth",
                    "kernel_size": 3,
                    "padding": 1,
                    "bias": False,
                },
            ],
        }
    },
    "layers": [
        {"type": "conv2d", "name": "x0", "out_channels": 24, "kernel_size": 3, "padding": 1},
        {"type": "dense_layer", "name": "f1"},
        {"type": "cat", "name": "c1", "from": ["x0", "f1"]},
        {"type": "dense_layer", "name": "f2"},
        {"type": "cat", "name": "c2", "from": ["x0", "f1", "f2"]},
        {"type": "dense_layer", "name": "f3"},
        {"type": "cat", "name": "c3", "from": ["x0", "f1", "f2", "f3"]},
        {"type": "dense_layer", "name": "f4"},
        {"type": "cat", "name": "c4", "from": ["x0", "f1", "f2", "f3", "f4"]},
        {"type": "batchnorm2d"},
        {"type": "relu"},
        {"type": "conv2d", "name": "transition", "out_channels": 36, "kernel_size": 1},
        {"type": "avgpool2d", "kernel_size": 2, "stride": 2},
    ],
}


def _mbconv(residual):
    layers = [
        {
            "type": "conv2d",
            "name": "expand",
            "out_channels": "cin * expand",
            "kernel_size": 1,
            "bias": False,
        },
        {"type": "batchnorm2d"},
        {"type": "silu"},
        {
            "type": "conv2d",
            "name": "dw",
            "out_channels": "cin * expand",
            "kernel_size": "k",
            "stride": "s",
            "padding": "k // 2",
            "groups": "cin * expand",
            "bias": False,
        },
        {"type": "batchnorm2d"},
        {"type": "silu", "name": "act"},
        {"type": "adaptiveavgpool2d", "output_size": 1},
        {"type": "conv2d", "out_channels": "max(1, cin // 4)", "kernel_size": 1},
        {"type": "silu"},
        {"type": "conv2d", "out_channels": "cin * expand", "kernel_size": 1},
        {"type": "sigmoid", "name": "gate"},
        {"type": "mul", "name": "se", "from": ["act", "gate"]},
        {
            "type": "conv2d",
            "name": "project",
            "out_channels": "cout",
            "kernel_size": 1,
            "bias": False,
        },
        {"type": "batchnorm2d", "name": "bn"},
    ]
    if residual:
        layers.append({"type": "add", "from": ["input", "bn"]})
    return {"params": {"cin": None, "cout": None, "expand": 6, "k": 3, "s": 1}, "layers": layers}


def _stage(cin, cout, expand, k, s, n):
    out = [{"type": "mbconv_down", "cin": cin, "cout": cout, "expand": expand, "k": k, "s": s}]
    out += [
        {"type": "mbconv", "cin": cout, "cout": cout, "expand": expand, "k": k}
        for _ in range(n - 1)
    ]
    return out


EFFICIENTNET = {
    "version": 2,
    "name": "efficientnet_b0_like",
    "input": [3, 224, 224],
    "blocks": {"mbconv": _mbconv(True), "mbconv_down": _mbconv(False)},
    "layers": [
        *conv("stem", 32, 3, 2),
        *_stage(32, 16, 1, 3, 1, 1),
        *_stage(16, 24, 6, 3, 2, 2),
        *_stage(24, 40, 6, 5, 2, 2),
        *_stage(40, 80, 6, 3, 2, 3),
        *_stage(80, 112, 6, 5, 1, 3),
        *_stage(112, 192, 6, 5, 2, 4),
        *_stage(192, 320, 6, 3, 1, 1),
        *conv("head", 1280, 1),
        {"type": "adaptiveavgpool2d", "output_size": 1},
        {"type": "flatten"},
        {"type": "dropout", "p": 0.2},
        {"type": "linear", "name": "classifier", "out_features": 1000},
    ],
}


SKIP_CAT = """
version: 2
name: skip_cat
input: [3, 32, 32]
layers:
  - {type: conv2d, name: stem, out_channels: 16, kernel_size: 3, padding: 1}
  - relu
  - {type: conv2d, out_channels: 16, kernel_size: 3, padding: 1}
  - batchnorm2d
  - {type: relu, name: c2}
  - {type: cat, name: skip, from: [stem, c2]}
  - relu
  - {type: conv2d, name: head, out_channels: 8, kernel_size: 3, stride: 2, dilation: 2, padding: 2}
"""

SE_GATE = """
version: 2
name: se_gate
input: [16, 8, 8]
layers:
  - {type: conv2d, name: body, out_channels: 16, kernel_size: 3, padding: 1}
  - {type: adaptiveavgpool2d, output_size: 1}
  - {type: conv2d, out_channels: 4, kernel_size: 1}
  - relu
  - {type: conv2d, out_channels: 16, kernel_size: 1}
  - {type: sigmoid, name: gate}
  - {type: mul, name: scaled, from: [body, gate]}
"""

SPLIT_TWO_OUTPUTS = """
version: 2
name: split_two
inputs: {image: [8, 16, 16], mask: [4, 16, 16]}
layers:
  - {type: chunk, name: parts, chunks: 2, from: image}
  - {type: conv2d, name: a, from: parts.0, out_channels: 4, kernel_size: 3, padding: 1}
  - {type: add, name: sum, from: [a, parts.1, mask]}
  - {type: conv2d, name: logits, out_channels: 2, kernel_size: 1}
outputs: [sum, logits]
"""


def test_mnist_cnn_picture_has_a_box_per_layer_with_its_numbers():
    spec = SPECS_DIR / "mnist_cnn.yaml"
    svg = draw(spec)
    assert titles(svg) == [
        "conv1 + ReLU",
        "maxpool 2×2 s2",
        "conv2 + ReLU",
        "maxpool 2×2 s2",
        "flatten",
        "fc",
    ]
    assert titles(svg, "io") == ["input", "output"]
    report = convcalc.analyze(spec)
    labels = texts(svg)
    for path in ("layers.0", "layers.3", "layers.7"):
        row = report.row(path)
        dims = "×".join(map(str, row.output_shape[1:]))
        assert f"{dims} · {row.params:,} params" in labels
    assert "conv 3×3" in labels and "linear 3136→10" in labels
    assert labels[0] == "mnist_cnn: 50,186 params, 3,869,824 MACs"
    assert "input [1, 1, 28, 28] → output [1, 10]" in labels[1]


def test_swatch_sizes_follow_spatial_size_and_channels():
    svg = draw(SPECS_DIR / "alexnet.yaml")
    names = titles(svg)
    conv1, conv2, conv3 = (
        next(t for t in names if t.startswith(c)) for c in ("conv1", "conv2", "conv3")
    )
    (w1, h1), (w2, h2), (w3, h3) = swatch(svg, conv1), swatch(svg, conv2), swatch(svg, conv3)
    assert h1 > h2 > h3  # 55 > 27 > 13: taller swatches for larger maps
    assert w1 < w2 < w3  # 64 < 192 < 384 channels: wider swatches


def test_residual_and_concat_blocks_meet_at_merge_nodes():
    resnet = draw(SPECS_DIR / "resnet18.yaml")
    assert len(nodes(resnet, "add")) == 8  # eight basic blocks meet at +
    assert all(lines[0] == "+" for lines in nodes(resnet, "add"))
    assert "64×56×56 · ReLU" in texts(resnet)  # the ReLU after the join, folded into it
    unet = draw(SPECS_DIR / "unet_small.yaml")
    assert len(nodes(unet, "cat")) == 3  # three skip connections
    assert "up3" in titles(unet) and "bottom + ReLU" in titles(unet)
    assert "concat" in texts(unet) and "add (residual)" not in texts(unet)  # the legend


def test_depth_draws_blocks_as_one_box():
    svg = draw(SPECS_DIR / "resnet50.yaml", depth=1)
    assert titles(svg, "block") == [
        "layer1 (sequential)",
        "layer2 (sequential)",
        "layer3 (sequential)",
        "layer4 (sequential)",
    ]
    assert nodes(svg, "merge") == []  # the joins are inside the blocks
    assert "block drawn as one box" in texts(svg)
    deeper = draw(SPECS_DIR / "resnet50.yaml", depth=2)
    assert len(nodes(deeper, "block")) == 8  # the first bottleneck and the repeat of each stage
    assert len(columns(deeper)) == 1


def test_skip_with_cat_keeps_the_fan_out_and_shows_conv_geometry():
    svg = draw(SKIP_CAT)
    # stem feeds both the ReLU and the cat: its ReLU is not folded into it
    assert titles(svg) == ["stem", "relu", "conv 3×3 + BN + ReLU (c2)", "head"]
    assert "conv 3×3 s2 d2" in texts(svg)  # kernel, stride, dilation on the conv box
    assert nodes(svg, "cat") == [["©", "skip: 32×32×32 · ReLU"]]
    assert "k×k sS dD: kernel, stride, dilation; dw depthwise" in texts(svg)


def test_se_gate_is_a_mul_node_fed_by_the_body_and_the_gate():
    svg = draw(SE_GATE)
    assert nodes(svg, "mul") == [["×", "scaled: 16×8×8"]]
    assert "conv 1×1 + sigmoid (gate)" in titles(svg)
    root = ET.fromstring(svg)
    edges = [g for g in root.iter(f"{SVG}g") if "edge" in (g.get("class") or "").split()]
    assert len(edges) == 7  # input→body→pool→conv→conv, body→×, gate→×, ×→output
    assert "mul (gate)" in texts(svg)


def test_split_pieces_and_several_inputs_and_outputs():
    svg = draw(SPLIT_TWO_OUTPUTS)
    assert nodes(svg, "split") == [["parts ×2"]]
    assert sorted(edge_labels(svg)) == [".0 4×16×16", ".1 4×16×16"]
    assert titles(svg, "input") == ["image", "mask"]
    assert titles(svg, "output") == ["output sum", "output logits"]
    assert nodes(svg, "add") == [["+", "sum: 4×16×16"]]
    assert (
        "image [1, 8, 16, 16], mask [1, 4, 16, 16] → sum [1, 4, 16, 16], logits [1, 2, 16, 16]"
        in texts(svg)
    )


def test_yolo_neck_densenet_and_efficientnet():
    yolo = draw(YOLO_NECK)
    assert len(nodes(yolo, "cat")) == 4 and len(nodes(yolo, "upsample")) == 2
    assert titles(yolo, "output") == ["output n3", "output n4", "output n5"]
    assert "conv 3×3 s2 + BN + SiLU (down3)" in titles(yolo)
    dense = draw(DENSENET)
    assert [n[0] for n in nodes(dense, "cat")] == ["©"] * 4
    assert sum(1 for t in texts(dense) if t.endswith("(dense_layer)")) == 4  # clusters
    assert len(columns(dense)) == 1  # no cut is crossed by at most two values: not wrapped
    effnet = draw(EFFICIENTNET)
    assert len(nodes(effnet, "dwconv")) == 16 and len(nodes(effnet, "mul")) == 16
    assert "conv 5×5 s2 dw" in texts(effnet)


def test_long_networks_wrap_into_columns():
    svg = draw(EFFICIENTNET)
    parts = columns(svg)
    assert 4 <= len(parts) <= 10
    root = ET.fromstring(svg)
    width, height = float(root.get("width")), float(root.get("height"))
    assert height < 1600 and width < 2600
    ghosts = [lines[0] for lines in nodes(svg, "ghost")]
    assert sum(1 for g in ghosts if g.startswith("on in column")) == len(parts) - 1
    assert "◂ column 1: bn 24×56×56" in ghosts  # a value handed from column 1 to 2
    # a short network stays in one column
    assert len(columns(draw(SPECS_DIR / "mnist_cnn.yaml"))) == 1


def test_html_page_is_self_contained():
    page = draw(SPECS_DIR / "unet_small.yaml", format="html")
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "<link" not in page and " src=" not in page
    assert "xlink" not in page
    assert re.findall(r"https?://[^\"' ]+", page) == ["http://www.w3.org/2000/svg"]
    report = convcalc.analyze(SPECS_DIR / "unet_small.yaml")
    assert page.count("<tr") == len(report.rows) + 1 + 7  # layers, header, totals


def test_report_repr_html_has_the_table_and_the_picture():
    small = convcalc.analyze(SPECS_DIR / "mnist_cnn.yaml")._repr_html_()
    assert "<svg" in small and "<table" in small and "50,186" in small
    big = convcalc.analyze(SPECS_DIR / "resnet50.yaml")._repr_html_()
    assert "layer4 (sequential)" in big  # too big to draw in full: depth 1


def test_cli_writes_svg_and_html(tmp_path):
    for name in ("net.svg", "net.html"):
        result = CliRunner().invoke(
            cli, ["draw", str(SPECS_DIR / "lenet5.yaml"), "-o", str(tmp_path / name)]
        )
        assert result.exit_code == 0 and result.stdout == f"wrote {tmp_path / name}\n"
    ET.parse(tmp_path / "net.svg")
    result = CliRunner().invoke(
        cli, ["draw", str(SPECS_DIR / "lenet5.yaml"), "-o", str(tmp_path / "net.png")]
    )
    assert result.exit_code == 1
    assert "the picture is written as .svg or .html, not '.png'" in result.stderr


def test_without_graphviz_draw_says_so_in_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot on it
    result = CliRunner().invoke(
        cli, ["draw", str(SPECS_DIR / "lenet5.yaml"), "-o", str(tmp_path / "net.svg")]
    )
    assert result.exit_code == 1
    assert result.stderr == f"error: {GRAPHVIZ_MISSING}\n"
    assert not (tmp_path / "net.svg").exists()


# -- in a real browser -------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = headless_chromium(tmp_path_factory.mktemp("chromium"))
    yield driver
    driver.quit()


PAGES = {
    "unet_small": SPECS_DIR / "unet_small.yaml",
    "resnet18": SPECS_DIR / "resnet18.yaml",
    "alexnet_original": SPECS_DIR / "alexnet_original.yaml",
    "yolo_neck": YOLO_NECK,
    "densenet_block": DENSENET,
    "efficientnet_b0_like": EFFICIENTNET,
    "split_two": SPLIT_TWO_OUTPUTS,
}


@pytest.mark.parametrize("name", list(PAGES))
def test_page_renders_in_headless_chromium(browser, tmp_path, name):
    spec = PAGES[name]
    page = tmp_path / f"{name}.html"
    page.write_text(draw(spec, format="html"), encoding="utf-8")
    browser.get(page.as_uri())
    assert browser.title == f"{name} — convcalc"
    width, height = browser.execute_script(
        "const box = document.querySelector('svg').getBoundingClientRect();"
        "return [box.width, box.height];"
    )
    assert width > 500 and height > 150
    rows = browser.execute_script(
        "return document.querySelectorAll('table.layers tbody tr').length"
    )
    assert rows == len(convcalc.analyze(spec).rows)
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    shot = tmp_path / f"{name}.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = Path(__file__).parent.parent / ".screenshots"
    if keep.is_dir():  # mkdir .screenshots to look at them
        shutil.copy(shot, keep / shot.name)
