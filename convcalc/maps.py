"""``convcalc maps``: an image through the spec's layers, and a picture of what they do.

The input image, then for each chosen layer its activation maps (and for the first
convolution, when it has at most three input channels, its filters as little images).
Without trained weights, the first convolution can be given hand-made filters, as in
the tutorials: four edge detectors (vertical and horizontal, both signs), Sobel's, a
box blur, or any array from a ``.npy`` file; the other layers use a fixed seed.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convcalc.analysis import analyze
from convcalc.errors import MapsError
from convcalc.loader import load_spec
from convcalc.report import LayerRow, Report
from convcalc.spec import Network
from convcalc.torch_bridge import build_module, import_torch

__all__ = ["FILTER_SETS", "ActivationMaps", "activation_maps", "hand_made_filters"]

FILTER_SETS = ("edges", "sobel", "blur")
MAX_MAPS = 32  # maps drawn per layer


@dataclass
class ActivationMaps:
    """What ``maps`` draws: the input, and per layer its output (and filters)."""

    report: Report
    image: np.ndarray  # [C, H, W], as fed to the network
    layers: list[tuple[LayerRow, np.ndarray]]  # (row, output [C, H, W])
    filters: tuple[LayerRow, np.ndarray] | None  # first conv's weight [C_out, C_in, kh, kw]
    notes: list[str]

    def save(self, path: str | os.PathLike[str]) -> None:
        """One PNG: the input, then the filters and activation maps of each layer."""
        _draw(self, Path(path))


def activation_maps(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Network,
    image: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    layers: Sequence[str] | None = None,
    filters: str | None = None,
    seed: int = 0,
) -> ActivationMaps:
    """Run ``image`` (a PNG/JPEG path, or ``digits:N``) through the spec.

    ``layers``: names or paths (default: every convolution); ``filters``: edges, sobel,
    blur or a ``.npy`` path for the first convolution (not with ``weights``, a
    ``state_dict`` saved by ``convcalc train``).
    """
    torch = import_torch()
    network = load_spec(spec)
    report = analyze(network, batch_size=1)
    if len(network.input) != 3:
        raise MapsError(
            f"{network.source}: maps are drawn for 2-d images; the input is {list(network.input)}"
        )
    notes: list[str] = []
    pixels = _read_image(image, tuple(network.input), notes)
    chosen = _choose_layers(report, layers)
    torch.manual_seed(seed)
    model = build_module(network, report=report).eval()
    first_conv = next((r for r in report.rows if r.type == "conv2d"), None)
    if weights is not None and filters is not None:
        raise MapsError("give --weights or --filters, not both")
    if weights is not None:
        _load_weights(model, Path(weights))
    elif filters is not None:
        if first_conv is None:
            raise MapsError(f"{network.source}: --filters sets the first conv2d, and there is none")
        conv = model.get_submodule(first_conv.path)
        weight = hand_made_filters(filters, tuple(conv.weight.shape), first_conv)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(weight))
            if conv.bias is not None:
                conv.bias.zero_()
        notes.append(f"{first_conv.label}: {filters} filters; other layers from seed {seed}")
    outputs: dict[str, Any] = {}
    hooks = [
        model.get_submodule(row.path).register_forward_hook(
            lambda _m, _i, out, path=row.path: outputs.__setitem__(path, out.detach())
        )
        for row in chosen
    ]
    with torch.no_grad():
        model(torch.from_numpy(pixels[None]))
    for hook in hooks:
        hook.remove()
    shown = None
    if first_conv is not None and first_conv.input_shape[1] <= 3:
        conv = model.get_submodule(first_conv.path)
        shown = (first_conv, conv.weight.detach().numpy().copy())
    maps = [(row, outputs[row.path][0].numpy()) for row in chosen]
    return ActivationMaps(report, pixels, maps, shown, notes)


def hand_made_filters(kind: str, shape: tuple[int, ...], row: LayerRow) -> np.ndarray:
    """A weight of ``shape`` [C_out, C_in, kh, kw]: edges, sobel, blur or a .npy file."""
    out_channels, in_channels, kh, kw = shape
    if kind.endswith(".npy"):
        try:
            array = np.load(kind, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise MapsError(f"{kind}: cannot read it as a .npy array ({error})") from None
        if tuple(array.shape) != shape:
            raise MapsError(
                f"{kind}: the array has shape {list(array.shape)} but {row.label}'s weight "
                f"has shape {list(shape)} (out_channels, in_channels, height, width)"
            )
        return np.asarray(array, dtype=np.float32)
    if kind == "blur":
        return np.full(shape, 1.0 / (kh * kw * in_channels), dtype=np.float32)
    if kind == "edges":
        # the tutorials' four 4×4 filters: dark-to-light left to right, its negative, and
        # both turned to horizontal; any kernel size: halves of −1 and +1
        vertical = np.where(np.arange(kw) < kw / 2, -1.0, 1.0)[None, :].repeat(kh, 0)
        if kw % 2:
            vertical[:, kw // 2] = 0
        horizontal = np.where(np.arange(kh) < kh / 2, -1.0, 1.0)[:, None].repeat(kw, 1)
        if kh % 2:
            horizontal[kh // 2, :] = 0
        bank = [vertical, -vertical, horizontal, -horizontal]
    elif kind == "sobel":
        if (kh, kw) != (3, 3):
            raise MapsError(
                f"--filters sobel sets 3×3 filters but {row.label} has a {kh}×{kw} kernel"
            )
        gx = np.array([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
        bank = [gx, -gx, gx.T, -gx.T]
    else:
        raise MapsError(f"unknown filters {kind!r}: use edges, sobel, blur or a FILE.npy")
    if out_channels < len(bank):
        raise MapsError(
            f"--filters {kind} sets {len(bank)} filters but {row.label} has "
            f"{out_channels} output channel{'s' * (out_channels > 1)}"
        )
    weight = np.zeros(shape, dtype=np.float32)
    for index, kernel in enumerate(bank):
        weight[index] = kernel / in_channels  # the same on every input channel
    rng = np.random.default_rng(0)  # channels past the hand-made ones
    weight[len(bank) :] = rng.normal(0, 0.3, weight[len(bank) :].shape)
    return weight


# -- the image -------------------------------------------------------------------------


def _read_image(source: str, input_shape: tuple[int, ...], notes: list[str]) -> np.ndarray:
    channels, height, width = input_shape
    if channels not in (1, 3):
        raise MapsError(
            f"the spec's input has {channels} channels; images have 1 (grey) or 3 (RGB)"
        )
    from PIL import Image, UnidentifiedImageError

    if source.startswith("digits:"):
        from convcalc.data import load_data

        digits = load_data("digits", [1, 8, 8])
        try:
            index = int(source.removeprefix("digits:"))
            sample = digits.x[index, 0]
        except (ValueError, IndexError):
            raise MapsError(
                f"{source!r}: give digits:N with N from 0 to {len(digits) - 1}"
            ) from None
        picture = Image.fromarray((sample * 255).astype(np.uint8), mode="L")
        notes.append(f"{source}: scikit-learn's digit {int(digits.y[index])}")
    else:
        path = Path(source)
        if not path.is_file():
            raise MapsError(f"{source}: no such image file")
        try:
            with Image.open(path) as opened:
                picture = opened.copy()
        except (UnidentifiedImageError, OSError) as error:
            raise MapsError(f"{source}: cannot read it as an image ({error})") from None
    mode = "L" if channels == 1 else "RGB"
    if picture.mode != mode:
        notes.append(f"{source}: converted from {picture.mode} to {mode}")
        picture = picture.convert(mode)
    if picture.size != (width, height):
        notes.append(
            f"{source}: resized from {picture.size[0]}×{picture.size[1]} to the spec's "
            f"{width}×{height} input"
        )
        picture = picture.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(picture, dtype=np.float32) / 255.0
    return array[None] if channels == 1 else array.transpose(2, 0, 1).copy()


def _choose_layers(report: Report, wanted: Sequence[str] | None) -> list[LayerRow]:
    leaves = [row for row in report.rows if not row.is_block]
    if not wanted:
        chosen = [row for row in leaves if row.type.startswith("conv")]
        if not chosen:
            raise MapsError("the spec has no convolution; choose layers with --layers")
        return chosen
    rows = []
    for name in wanted:
        row = next((r for r in leaves if name in (r.path, r.name)), None)
        if row is None:
            known = [r.name for r in leaves if r.name] + [r.path for r in leaves]
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise MapsError(f"no layer named {name!r}{hint}")
        if len(row.output_shape) != 4:
            raise MapsError(f"{row.label} outputs {list(row.output_shape)}, not maps [N, C, H, W]")
        rows.append(row)
    return rows


def _load_weights(model: Any, path: Path) -> None:
    torch = import_torch()
    if not path.is_file():
        raise MapsError(f"{path}: no such weights file")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # torch raises several kinds
        raise MapsError(f"{path}: cannot read it as saved weights ({error})") from None
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise MapsError(f"{path}: has no {name} (shape {list(tensor.shape)}) that the spec has")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise MapsError(
                f"{path}: {name} has shape {list(state[name].shape)} but the spec's is "
                f"{list(tensor.shape)}"
            )
    extra = [name for name in state if name not in expected]
    if extra:
        raise MapsError(f"{path}: holds {extra[0]}, which the spec does not have")
    model.load_state_dict(state)


# -- the picture -----------------------------------------------------------------------


def _draw(maps: ActivationMaps, path: Path) -> None:
    from matplotlib.figure import Figure

    sections: list[tuple[str, list[np.ndarray], str]] = []  # (title, tiles, colour map)
    image = maps.image
    picture = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    size = "×".join(map(str, image.shape[1:]))
    channels = "1 channel" if image.shape[0] == 1 else f"{image.shape[0]} channels"
    sections.append((f"input: {size}, {channels}", [picture], "gray"))
    if maps.filters is not None:
        row, weight = maps.filters
        tiles = [w[0] if w.shape[0] == 1 else _to_rgb(w) for w in weight[:MAX_MAPS]]
        title = f"{row.label}: {len(weight)} filters {weight.shape[2]}×{weight.shape[3]}"
        sections.append((title, tiles, "RdBu_r"))
    for row, output in maps.layers:
        shown = output[:MAX_MAPS]
        count = (
            f"{len(output)} maps"
            if len(output) <= MAX_MAPS
            else f"first {MAX_MAPS} of {len(output)} maps"
        )
        title = f"{row.label} {row.type}: {count}, {output.shape[1]}×{output.shape[2]}"
        sections.append((title, list(shown), "viridis"))
    columns = min(8, max(len(tiles) for _, tiles, _ in sections))
    heights = [1.1 + 1.35 * math.ceil(len(tiles) / columns) for _, tiles, _ in sections]
    figure = Figure(figsize=(max(columns * 1.35, 4.5), sum(heights)), layout="constrained")
    subfigures = figure.subfigures(len(sections), 1, height_ratios=heights, squeeze=False)
    for subfigure, (title, tiles, colormap) in zip(subfigures[:, 0], sections):
        subfigure.suptitle(title, fontsize=10, x=0.01, ha="left")
        rows = math.ceil(len(tiles) / columns)
        axes = np.atleast_2d(subfigure.subplots(rows, columns))
        for index, axis in enumerate(axes.flat):
            axis.set_axis_off()
            if index >= len(tiles):
                continue
            tile = tiles[index]
            if colormap == "RdBu_r" and tile.ndim == 2:
                bound = float(np.abs(tile).max()) or 1.0
                axis.imshow(tile, cmap=colormap, vmin=-bound, vmax=bound)
            else:
                axis.imshow(tile, cmap=colormap if tile.ndim == 2 else None)
            if len(tiles) > 1:
                axis.set_title(str(index), fontsize=7)
    figure.savefig(path, format="png", dpi=90)


def _to_rgb(weight: np.ndarray) -> np.ndarray:
    """A [3, kh, kw] filter as an RGB image in [0, 1]."""
    rgb = weight.transpose(1, 2, 0)
    low, high = float(rgb.min()), float(rgb.max())
    return (rgb - low) / (high - low) if high > low else np.zeros_like(rgb)
