"""Training data for ``convcalc train``: where it comes from and how it is checked.

Three sources, none downloading anything:

- ``digits``: scikit-learn's bundled 8×8 handwritten digits (1,797 images);
- ``PATH.npz``: arrays ``x`` (N, H, W or N, C, H, W; uint8 scaled to [0, 1], or float)
  and ``y`` (N integer labels);
- ``mnist:DIR``: the MNIST idx files as torchvision downloads them
  (``train-images-idx3-ubyte[.gz]`` and ``train-labels-idx1-ubyte[.gz]``).

Images are brought to the spec's input size (and the caller says so once); a channel
count that differs from the spec's is an error. Every error names the source and the
bad value.
"""

from __future__ import annotations

import gzip
import importlib.util
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convcalc.errors import DataError
from convcalc.layers import SPATIAL_NAMES

__all__ = ["Dataset", "load_data", "split_indices"]

Shape = tuple[int, ...]

VALIDATION_SEED = 0  # the train/validation split is the same for every run


@dataclass(frozen=True)
class Dataset:
    """Samples as float32 ``[N, C, *spatial]`` in the spec's input size, and labels."""

    x: np.ndarray
    y: np.ndarray  # int64
    source: str
    notes: tuple[str, ...] = ()  # what was done to fit the spec, to be said once

    def __len__(self) -> int:
        return len(self.y)

    @property
    def classes(self) -> int:
        return int(self.y.max()) + 1


def load_data(source: str, input_shape: Sequence[int]) -> Dataset:
    """The samples and labels of ``source``, shaped for a spec with this input."""
    if source == "digits":
        x, y = _digits()
    elif source.startswith("mnist:"):
        x, y = _mnist(Path(source.removeprefix("mnist:")))
    elif source.endswith(".npz"):
        x, y = _npz(Path(source))
    else:
        raise DataError(f"unknown data source {source!r}: use digits, a PATH.npz file or mnist:DIR")
    _check_labels(y, len(x), source)
    return _fit(x, y.astype(np.int64), source, tuple(input_shape))


def split_indices(count: int, validation: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) sample indices, the same for every run."""
    order = np.random.default_rng(VALIDATION_SEED).permutation(count)
    held_out = max(1, round(count * validation))
    if held_out >= count:
        raise DataError(f"{count} samples are too few to hold out {validation:.0%} for validation")
    return np.sort(order[held_out:]), np.sort(order[:held_out])


# -- the sources ---------------------------------------------------------------------------


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits, read from the file it ships (importing scikit-learn and
    SciPy would take longer than the file does to read)."""
    found = importlib.util.find_spec("sklearn")
    if found is None or found.origin is None:
        raise DataError(
            "the digits data ships with scikit-learn, which is not installed: "
            "pip install 'convcalc[train]'"
        )
    path = Path(found.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if path.is_file():
        with gzip.open(path, "rt") as text:
            table = np.loadtxt(text, delimiter=",", dtype=np.float32)
        images, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    else:  # pragma: no cover - a scikit-learn that keeps it elsewhere
        from sklearn.datasets import load_digits  # type: ignore[import-untyped]

        digits = load_digits()
        images, labels = digits.images.astype(np.float32), digits.target
    return images / 16.0, labels


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = sorted(archive.files)
            if "x" not in names or "y" not in names:
                raise DataError(
                    f"{path}: needs arrays named 'x' (images) and 'y' (labels); it has "
                    + (", ".join(repr(n) for n in names) or "none")
                )
            x, y = archive["x"], archive["y"]
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"{path}: cannot read it as a .npz archive ({error})") from None
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"{path}: x holds NaN or infinite values")
    else:
        raise DataError(f"{path}: x must be uint8 (0–255) or float, got {x.dtype}")
    return x, _integer_labels(y, str(path))


_IDX_TYPES = {0x08: np.uint8}


def _mnist(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    if not folder.is_dir():
        raise DataError(f"mnist:{folder}: no such directory")
    images = _read_idx(_idx_file(folder, "train-images-idx3-ubyte"), dims=3)
    labels = _read_idx(_idx_file(folder, "train-labels-idx1-ubyte"), dims=1)
    if len(images) != len(labels):
        raise DataError(f"mnist:{folder}: {len(images):,} images but {len(labels):,} labels")
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)


def _idx_file(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"mnist:{folder}: {name} (or {name}.gz) is missing")


def _read_idx(path: Path, dims: int) -> np.ndarray:
    """An idx array: magic 0 0 <type> <dims>, big-endian int32 sizes, then the data."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot read it ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an idx file of unsigned bytes (magic {raw[:4].hex()})")
    if raw[3] != dims:
        raise DataError(f"{path}: has {raw[3]} dimensions, expected {dims}")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DataError(f"{path}: truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"{path}: holds {len(raw) - header:,} bytes of data but its header says "
            f"{'×'.join(map(str, shape))} = {expected - header:,}"
        )
    return np.frombuffer(raw, dtype=_IDX_TYPES[raw[2]], offset=header).reshape(shape)


# -- checks and fitting ------------------------------------------------------------------


def _integer_labels(y: np.ndarray, source: str) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: y must hold integer class labels, got {y.dtype}")
    return y


def _check_labels(y: np.ndarray, samples: int, source: str) -> None:
    if y.ndim != 1:
        raise DataError(f"{source}: y must be one label per sample (N,), got shape {y.shape}")
    if len(y) != samples:
        raise DataError(f"{source}: x has {samples:,} samples but y has {len(y):,} labels")
    if samples == 0:
        raise DataError(f"{source}: holds no samples")
    if y.min() < 0:
        raise DataError(f"{source}: labels must be 0 or more, found {int(y.min())}")


def _fit(x: np.ndarray, y: np.ndarray, source: str, input_shape: Shape) -> Dataset:
    """``x`` as ``[N, C, *spatial]`` in the spec's input size."""
    channels, *spatial = input_shape
    dims = len(spatial)
    if x.ndim == dims + 1:  # one channel, not written out
        x = x[:, None]
    if x.ndim != dims + 2:
        names = ", ".join(SPATIAL_NAMES[dims])
        raise DataError(
            f"{source}: x must be (N, {names}) or (N, C, {names}) for a spec with input "
            f"{list(input_shape)}, got shape {x.shape}"
        )
    if x.shape[1] != channels:
        raise DataError(
            f"{source}: the images have {x.shape[1]} channel{'s' * (x.shape[1] != 1)} but the "
            f"spec's input has {channels} (input: {list(input_shape)})"
        )
    notes: tuple[str, ...] = ()
    if tuple(x.shape[2:]) != tuple(spatial):
        before = "×".join(map(str, x.shape[2:]))
        after = "×".join(map(str, spatial))
        x = _resize(x, tuple(spatial))
        notes = (f"{source}: resized the {before} images to the spec's {after} input",)
    return Dataset(np.ascontiguousarray(x, dtype=np.float32), y, source, notes)


def _resize(x: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Linear interpolation (antialiased when shrinking 2-d images), as torchvision does."""
    import torch
    import torch.nn.functional as F

    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    shrinking = any(s < n for s, n in zip(size, x.shape[2:]))
    tensor = F.interpolate(
        torch.from_numpy(x),
        size=size,
        mode=mode,
        align_corners=False,
        antialias=shrinking and mode == "bilinear",
    )
    return tensor.numpy()
