"""``convcalc maps``: hand-made filters find the edges they are made for, the picture is
written, and every bad input is one clear message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import convcalc
from convcalc.cli import cli
from convcalc.errors import MapsError
from convcalc.maps import activation_maps, hand_made_filters

from .conftest import SPECS_DIR

EDGES = SPECS_DIR / "edge_filters.yaml"  # conv1: four 4×4 filters on a 28×28 grey image


def edge_image(tmp_path, vertical: bool = True, at: int = 14, size: int = 28):
    """Dark on one side of a straight edge, light on the other, as a PNG."""
    pixels = np.zeros((size, size), dtype=np.uint8)
    if vertical:
        pixels[:, at:] = 255
    else:
        pixels[at:, :] = 255
    path = tmp_path / "edge.png"
    Image.fromarray(pixels, mode="L").save(path)
    return path


def test_vertical_edge_filter_peaks_exactly_along_a_vertical_edge(tmp_path):
    result = activation_maps(
        EDGES, str(edge_image(tmp_path, at=14)), filters="edges", layers=["conv1"]
    )
    ((_, maps),) = result.layers
    vertical = maps[0]  # −1 on its left half, +1 on its right half
    peak = vertical.max()
    columns = {int(c) for c in np.argwhere(vertical == peak)[:, 1]}
    # the 4-wide window straddles the edge evenly when it starts 2 pixels before it
    assert columns == {12}
    assert (vertical[:, 12] == peak).all()  # along the whole edge
    assert peak == pytest.approx(8.0)  # 2 columns of +1 on light, 4 rows
    # its negative is lowest there, and the horizontal filters see nothing
    assert maps[1][:, 12].max() == pytest.approx(-8.0)
    assert np.abs(maps[2]).max() == pytest.approx(0.0) and np.abs(maps[3]).max() == 0


def test_horizontal_edge_filter_peaks_along_a_horizontal_edge(tmp_path):
    result = activation_maps(
        EDGES, str(edge_image(tmp_path, vertical=False, at=9)), filters="edges", layers=["relu1"]
    )
    maps = result.layers[0][1]
    rows = {int(r) for r in np.argwhere(maps[2] == maps[2].max())[:, 0]}
    assert rows == {7} and maps[0].max() == 0  # after ReLU


def test_filters_match_the_tutorial():
    row = convcalc.analyze(EDGES).row("conv1")
    weight = hand_made_filters("edges", (4, 1, 4, 4), row)
    tutorial = np.array([[-1, -1, 1, 1]] * 4, dtype=np.float32)
    for index, expected in enumerate([tutorial, -tutorial, tutorial.T, -tutorial.T]):
        np.testing.assert_array_equal(weight[index, 0], expected)
    sobel = hand_made_filters("sobel", (4, 3, 3, 3), row)
    gx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)
    np.testing.assert_allclose(sobel[0, 0], gx / 3)  # the same on each of 3 input channels
    blur = hand_made_filters("blur", (2, 1, 3, 3), row)
    assert (blur == np.float32(1 / 9)).all()


def test_npy_filters_and_their_shape(tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, np.ones((4, 1, 4, 4), dtype=np.float32))
    result = activation_maps(EDGES, "digits:3", filters=str(good), layers=["conv1"])
    image = torch.from_numpy(result.image)
    expected = torch.nn.functional.conv2d(image[None], torch.ones(4, 1, 4, 4))[0].numpy()
    np.testing.assert_allclose(result.layers[0][1], expected, rtol=1e-5)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones((3, 3)))
    with pytest.raises(
        MapsError,
        match=r"bad.npy: the array has shape \[3, 3\] but "
        r"layers.0 \(conv1\)'s weight has shape \[4, 1, 4, 4\]",
    ):
        activation_maps(EDGES, "digits:3", filters=str(bad))


def test_weights_from_training_and_their_mismatches(tmp_path):
    model = convcalc.build_module(EDGES)
    good = tmp_path / "model.pt"
    torch.save(model.state_dict(), good)
    result = activation_maps(EDGES, "digits:5", weights=str(good), layers=["pool1"])
    assert result.layers[0][1].shape == (4, 12, 12)
    other = convcalc.build_module(str(EDGES).replace("edge_filters", "mnist_cnn"))
    wrong = tmp_path / "wrong.pt"
    torch.save(other.state_dict(), wrong)
    with pytest.raises(
        MapsError,
        match=r"wrong.pt: layers.0.weight has shape \[32, 1, 3, 3\] "
        r"but the spec's is \[4, 1, 4, 4\]",
    ):
        activation_maps(EDGES, "digits:5", weights=str(wrong))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"image": "missing.png"}, "missing.png: no such image file"),
        ({"image": "digits:5000"}, "give digits:N with N from 0 to 1796"),
        (
            {"image": "digits:1", "layers": ["conv2"]},
            "no layer named 'conv2'; did you mean 'conv1'?",
        ),
        ({"image": "digits:1", "layers": ["layers.9"]}, "no layer named 'layers.9'"),
        ({"image": "digits:1", "filters": "stripes"}, "unknown filters 'stripes'"),
        (
            {"image": "digits:1", "filters": "sobel"},
            "sobel sets 3×3 filters but layers.0 (conv1) has a 4×4 kernel",
        ),
        (
            {"image": "digits:1", "filters": "edges", "weights": "x.pt"},
            "give --weights or --filters, not both",
        ),
    ],
)
def test_bad_input_is_one_message(options, message):
    image = options.pop("image")
    with pytest.raises(MapsError) as caught:
        activation_maps(EDGES, image, **options)
    assert message in str(caught.value)


def test_unreadable_image(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    with pytest.raises(MapsError, match=r"junk\.png: cannot read it as an image"):
        activation_maps(EDGES, str(junk))


def test_colour_image_is_converted_and_resized(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (40, 30), (200, 100, 50)).save(path)
    result = activation_maps(EDGES, str(path))
    assert result.image.shape == (1, 28, 28)
    assert result.notes[:2] == [
        f"{path}: converted from RGB to L",
        f"{path}: resized from 40×30 to the spec's 28×28 input",
    ]


def test_cli_writes_the_png(tmp_path):
    out = tmp_path / "maps.png"
    result = CliRunner().invoke(
        cli,
        [
            "maps",
            str(EDGES),
            "--image",
            "digits:0",
            "--filters",
            "edges",
            "--layers",
            "conv1,relu1",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "digits:0: resized from 8×8 to the spec's 28×28 input" in result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as picture:
        width, height = picture.size
    assert width > 300 and height > 400  # input, filters and two layers of maps
    bad = CliRunner().invoke(cli, ["maps", str(EDGES), "--image", "nope.png", "-o", str(out)])
    assert bad.exit_code == 1 and bad.stderr == "error: nope.png: no such image file\n"


def test_a_layer_without_maps_is_refused():
    with pytest.raises(MapsError, match=r"layers\.7 \(fc\) outputs \[1, 10\], not maps"):
        activation_maps(SPECS_DIR / "mnist_cnn.yaml", "digits:2", layers=["fc"])
