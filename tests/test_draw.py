"""``convcalc draw`` and ``Report._repr_html_``: the picture's content, the page's
self-containment, and the page in a real browser (headless Chromium)."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

import convcalc
from convcalc.cli import cli
from convcalc.draw import draw

from .conftest import SPECS_DIR

SVG = "{http://www.w3.org/2000/svg}"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def texts(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg).iter(f"{SVG}text")]


def boxes(svg: str) -> list[str]:
    """The first label line of every box (each box is one <g>)."""
    root = ET.fromstring(svg)
    return [g.find(f"{SVG}text").text for g in root.iter(f"{SVG}g")]


def test_mnist_cnn_picture_has_a_box_per_layer_with_its_numbers():
    spec = SPECS_DIR / "mnist_cnn.yaml"
    svg = draw(spec)
    assert boxes(svg) == [
        "input",
        "conv1 + relu",
        "maxpool2d",
        "conv2 + relu",
        "maxpool2d",
        "flatten",
        "fc",
    ]
    report = convcalc.analyze(spec)
    labels = texts(svg)
    for path in ("layers.0", "layers.3", "layers.7"):
        row = report.row(path)
        assert "×".join(map(str, row.output_shape[1:])) in labels
        assert f"{row.params:,} params" in labels
    assert "RF 10×10 (stride 4)" in labels  # the second pooling's field
    assert labels[0].startswith("mnist_cnn: input [1, 1, 28, 28], 50,186 params")


def test_box_sizes_follow_spatial_size_and_channels():
    root = ET.fromstring(draw(SPECS_DIR / "alexnet.yaml"))
    fronts = [g.find(f"{SVG}rect") for g in root.iter(f"{SVG}g")]
    heights = [float(r.get("height")) for r in fronts]
    widths = [float(r.get("width")) for r in fronts]
    # input 224 > conv1 55 > conv2 27 > conv3 13: taller boxes for larger maps
    assert heights[0] > heights[1] > heights[3] > heights[5]
    # conv1 64 channels < conv2 192 < conv3 384: thicker boxes for more channels
    assert widths[1] < widths[3] < widths[5]


def test_residual_and_concat_blocks_are_drawn_as_such():
    resnet = texts(draw(SPECS_DIR / "resnet18.yaml"))
    assert resnet.count("+") == 8  # eight basic blocks meet at ⊕
    unet = texts(draw(SPECS_DIR / "unet_small.yaml"))
    assert unet.count("©") == 3  # three skip connections
    assert "up3" in unet and "bottom + relu" in unet


def test_depth_draws_blocks_as_one_box():
    labels = boxes(draw(SPECS_DIR / "resnet50.yaml", depth=1))
    assert labels[3:7] == [
        "layer1 (sequential)",
        "layer2 (sequential)",
        "layer3 (sequential)",
        "layer4 (sequential)",
    ]


def test_html_page_is_self_contained():
    page = draw(SPECS_DIR / "unet_small.yaml", format="html")
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "<link" not in page and " src=" not in page
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


# -- in a real browser -------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1400,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.mark.parametrize("name", ["unet_small", "resnet18", "alexnet_original"])
def test_page_renders_in_headless_chromium(browser, tmp_path, name):
    page = tmp_path / f"{name}.html"
    page.write_text(draw(SPECS_DIR / f"{name}.yaml", format="html"), encoding="utf-8")
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
    assert rows == len(convcalc.analyze(SPECS_DIR / f"{name}.yaml").rows)
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    shot = tmp_path / f"{name}.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = Path(__file__).parent.parent / ".screenshots"
    if keep.is_dir():  # mkdir .screenshots to look at them
        shutil.copy(shot, keep / shot.name)
