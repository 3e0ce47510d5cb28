"""``convcalc train``: data sources, the run directory, determinism, resuming,
torchrun, and every bad input named in the issue."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import convcalc
from convcalc.cli import cli
from convcalc.data import load_data, split_indices
from convcalc.errors import DataError, ShapeError, TrainingError
from convcalc.training import (
    FILTER_GAP_COLOUR,
    EpochMetrics,
    Interrupted,
    _at_chance,
    _diverged,
    filter_grid,
    train,
)

TINY = """\
name: tiny
input: [1, 8, 8]
layers:
  - {type: conv2d, name: conv, out_channels: 4, kernel_size: 3, padding: 1}
  - relu
  - {type: maxpool2d, kernel_size: 2}
  - {type: dropout, p: 0.2}
  - flatten
  - {type: linear, name: fc, out_features: 3}
"""
TIMING = {"seconds", "samples_per_second", "finished_at"}


def bars(samples: int = 120, size: int = 8, classes: int = 3, seed: int = 0):
    """Images whose class is where a bright vertical bar stands."""
    rng = np.random.default_rng(seed)
    y = np.arange(samples) % classes
    x = rng.random((samples, size, size)) * 0.3
    for image, label in zip(x, y):
        image[:, 2 * label : 2 * label + 2] += 0.7
    return x.astype(np.float32), y


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY, encoding="utf-8")
    return path


@pytest.fixture
def npz(tmp_path: Path) -> Path:
    path = tmp_path / "bars.npz"
    x, y = bars()
    np.savez(path, x=x, y=y)
    return path


def quiet_train(spec, data, **options):
    options.setdefault("epochs", 2)
    options.setdefault("lr", 0.05)
    return train(spec, str(data), echo=lambda line: None, **options)


def train_arguments(spec: Path, data: Path, out: Path, *more: str) -> list[str]:
    """``train SPEC --data DATA`` for two quick epochs into ``out``."""
    return [
        "train",
        str(spec),
        "--data",
        str(data),
        "--epochs",
        "2",
        "--lr",
        "0.05",
        "--out",
        str(out),
        *more,
    ]


def epochs_without_timing(out: Path) -> list[dict]:
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return [{k: v for k, v in e.items() if k not in TIMING} for e in metrics["epochs"]]


# -- data sources --------------------------------------------------------------------------


def test_digits_are_scikit_learns():
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = load_data("digits", [1, 8, 8])
    assert data.x.shape == (1797, 1, 8, 8) and data.x.dtype == np.float32
    np.testing.assert_array_equal(data.x[:, 0], (digits.images / 16).astype(np.float32))
    np.testing.assert_array_equal(data.y, digits.target)
    assert data.notes == ()


def test_digits_are_resized_to_the_spec_and_it_is_said():
    data = load_data("digits", [1, 28, 28])
    assert data.x.shape == (1797, 1, 28, 28)
    assert data.notes == ("digits: resized the 8×8 images to the spec's 28×28 input",)
    assert data.x.min() >= 0 and data.x.max() <= 1


def test_npz_uint8_is_scaled_and_channels_are_optional(tmp_path):
    path = tmp_path / "u8.npz"
    np.savez(path, x=np.full((4, 1, 5, 5), 255, np.uint8), y=np.array([0, 1, 0, 1]))
    data = load_data(str(path), [1, 5, 5])
    assert data.x.shape == (4, 1, 5, 5) and float(data.x.max()) == 1.0
    assert data.classes == 2


def test_validation_split_is_fixed_and_disjoint():
    train_a, val_a = split_indices(100, 0.2)
    _, val_b = split_indices(100, 0.2)
    np.testing.assert_array_equal(val_a, val_b)
    assert len(val_a) == 20 and not set(train_a) & set(val_a)
    assert sorted([*train_a, *val_a]) == list(range(100))


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_files(tmp_path, compress):
    x, y = bars(samples=30, size=28)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", x * 255 / x.max(), compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", y, compress)
    data = load_data(f"mnist:{tmp_path}", [1, 28, 28])
    assert data.x.shape == (30, 1, 28, 28)
    np.testing.assert_array_equal(data.y, y)
    assert float(data.x.max()) == 1.0


def _bad_npz(tmp_path: Path, **arrays) -> str:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


BAD_DATA = [
    (lambda p: str(p / "missing.npz"), "missing.npz: no such file"),
    (
        lambda p: (p / "junk.npz").write_text("not a zip") and str(p / "junk.npz"),
        "cannot read it as a .npz archive",
    ),
    (
        lambda p: _bad_npz(p, images=np.zeros((2, 8, 8)), labels=np.zeros(2)),
        "needs arrays named 'x' (images) and 'y' (labels); it has 'images', 'labels'",
    ),
    (
        lambda p: _bad_npz(p, x=np.zeros((2, 8, 8), np.int32), y=np.zeros(2, int)),
        "x must be uint8 (0–255) or float, got int32",
    ),
    (
        lambda p: _bad_npz(p, x=np.zeros((2, 8)), y=np.zeros(2, int)),
        "x must be (N, H, W) or (N, C, H, W) for a spec with input [1, 8, 8], got shape (2, 8)",
    ),
    (
        lambda p: _bad_npz(p, x=np.zeros((2, 3, 8, 8)), y=np.zeros(2, int)),
        "the images have 3 channels but the spec's input has 1",
    ),
    (
        lambda p: _bad_npz(p, x=np.zeros((2, 8, 8)), y=np.array([0.5, 1.0])),
        "y must hold integer class labels, got float64",
    ),
    (
        lambda p: _bad_npz(p, x=np.zeros((2, 8, 8)), y=np.array([0, -1])),
        "labels must be 0 or more, found -1",
    ),
    (
        lambda p: _bad_npz(p, x=np.zeros((3, 8, 8)), y=np.array([0, 1])),
        "x has 3 samples but y has 2 labels",
    ),
    (
        lambda p: _bad_npz(p, x=np.full((2, 8, 8), np.nan), y=np.array([0, 1])),
        "x holds NaN or infinite values",
    ),
    (lambda p: str(p / "nowhere"), "unknown data source"),
    (lambda p: f"mnist:{p / 'nowhere'}", "no such directory"),
    (lambda p: f"mnist:{p}", "train-images-idx3-ubyte (or train-images-idx3-ubyte.gz) is missing"),
]


@pytest.mark.parametrize(("make", "message"), BAD_DATA)
def test_bad_data_is_one_clear_error(tmp_path, make, message):
    with pytest.raises(DataError) as caught:
        load_data(make(tmp_path), [1, 8, 8])
    assert message in str(caught.value)


def test_bad_idx_files(tmp_path):
    images = tmp_path / "train-images-idx3-ubyte"
    labels = tmp_path / "train-labels-idx1-ubyte"
    write_idx(labels, np.zeros(4))
    images.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 12)
    with pytest.raises(DataError, match="not an idx file of unsigned bytes"):
        load_data(f"mnist:{tmp_path}", [1, 2, 2])
    write_idx(images, np.zeros((4, 2, 2)))
    images.write_bytes(images.read_bytes()[:-3])
    with pytest.raises(DataError, match="holds 13 bytes of data but its header says 4×2×2 = 16"):
        load_data(f"mnist:{tmp_path}", [1, 2, 2])
    write_idx(images, np.zeros((5, 2, 2)))
    with pytest.raises(DataError, match="5 images but 4 labels"):
        load_data(f"mnist:{tmp_path}", [1, 2, 2])


# -- a run and its files -------------------------------------------------------------------


def test_a_run_leaves_metrics_curves_weights_and_the_spec(tiny, npz, tmp_path):
    out = tmp_path / "run"
    lines: list[str] = []
    result = train(str(tiny), str(npz), epochs=3, lr=0.05, out=out, echo=lines.append)
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "curves.png",
        "metrics.json",
        "model.pt",
        "spec.yaml",
    ]
    assert (out / "spec.yaml").read_text(encoding="utf-8") == TINY
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["settings"]["optimizer"] == "adam" and metrics["learning_rate"] == 0.05
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    assert metrics["summary"]["flops_per_mac"] == 6
    assert result.epochs[-1].val_accuracy == metrics["epochs"][-1]["val_accuracy"] > 0.9
    # the weights load, safely, into the module the spec builds
    model = convcalc.build_module(tiny)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    # one line per epoch, then the summary
    assert sum(line.startswith("epoch ") for line in lines) == 3
    assert any(line.startswith("throughput ") and "GFLOP/s" in line for line in lines)
    assert any(line.startswith("memory: ") and "estimated for adam" in line for line in lines)
    # a healthy run warns of nothing
    assert result.warnings == [] and metrics["summary"]["warnings"] == []
    assert not any("warning" in line for line in lines)


def test_achieved_gflops_follow_from_the_calculators_macs(tiny, npz, tmp_path):
    result = quiet_train(tiny, npz, out=tmp_path / "run")
    macs = convcalc.analyze(tiny).totals.macs  # per sample: batch 1
    expected = result.samples_per_second * macs * 6 / 1e9
    assert result.gflops_per_second == pytest.approx(expected)
    assert result.estimated_memory == convcalc.analyze(tiny, batch_size=64).training_memory("adam")


def test_same_seed_same_metrics(tiny, npz, tmp_path):
    quiet_train(tiny, npz, out=tmp_path / "a", seed=3)
    quiet_train(tiny, npz, out=tmp_path / "b", seed=3)
    quiet_train(tiny, npz, out=tmp_path / "c", seed=4)
    assert epochs_without_timing(tmp_path / "a") == epochs_without_timing(tmp_path / "b")
    assert epochs_without_timing(tmp_path / "a") != epochs_without_timing(tmp_path / "c")


def test_interrupted_run_resumes_to_the_same_result(tiny, npz, tmp_path):
    quiet_train(tiny, npz, out=tmp_path / "whole", epochs=3)

    def stop_after_first(metrics):
        if metrics.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as caught:
        quiet_train(tiny, npz, out=tmp_path / "cut", epochs=3, on_epoch_end=stop_after_first)
    assert caught.value.epochs_done == 1 and caught.value.out == tmp_path / "cut"
    assert len(epochs_without_timing(tmp_path / "cut")) == 1
    assert not list((tmp_path / "cut").glob(".*.tmp"))
    train(str(tiny), resume=tmp_path / "cut", echo=lambda line: None)
    assert epochs_without_timing(tmp_path / "cut") == epochs_without_timing(tmp_path / "whole")
    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(whole[k], cut[k]) for k in whole)


def test_resume_can_extend_the_epochs(tiny, npz, tmp_path):
    quiet_train(tiny, npz, out=tmp_path / "run", epochs=1)
    result = train(str(tiny), resume=tmp_path / "run", epochs=2, echo=lambda line: None)
    assert [e.epoch for e in result.epochs] == [1, 2]


def test_ctrl_c_in_a_real_process_keeps_the_last_epoch(tiny, tmp_path):
    data = tmp_path / "big.npz"
    x, y = bars(samples=6000)
    np.savez(data, x=x, y=y)
    out = tmp_path / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "convcalc",
            "train",
            str(tiny),
            "--data",
            str(data),
            "--epochs",
            "1000",
            "--batch-size",
            "8",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "metrics.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "interrupted: epochs 1–" in stderr and f"--resume {out}" in stderr
    assert "Traceback" not in stderr
    done = len(epochs_without_timing(out))
    assert done >= 1
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == done


# -- bad runs ------------------------------------------------------------------------------


def test_labels_must_match_the_outputs(tmp_path, tiny):
    data = tmp_path / "two.npz"
    x, y = bars(classes=2)
    np.savez(data, x=x, y=y)
    with pytest.raises(DataError) as caught:
        quiet_train(tiny, data, out=tmp_path / "run")
    assert str(caught.value) == (
        f"{tiny}:9: layers.5 (fc): outputs 3 values per sample, but the labels of {data} "
        f"have 2 classes (0–1)"
    )
    assert not (tmp_path / "run").exists()


def test_output_must_be_batch_by_classes(tmp_path, npz):
    spec = tmp_path / "maps.yaml"
    spec.write_text(
        "input: [1, 8, 8]\nlayers:\n  - {type: conv2d, out_channels: 3, kernel_size: 3}\n",
        encoding="utf-8",
    )
    with pytest.raises(
        ShapeError,
        match=r"maps.yaml:3: layers.0: the network's output is "
        r"\[N, 3, 6, 6\]; training a classifier needs \[N, classes\]",
    ):
        quiet_train(spec, npz, out=tmp_path / "run")


def test_nan_loss_stops_at_once_and_writes_nothing(tmp_path, tiny):
    data = tmp_path / "huge.npz"
    x, y = bars()
    np.savez(data, x=x * 1e38, y=y)
    with pytest.raises(
        TrainingError,
        match=r"the loss became (nan|inf) in epoch 1, step 1; .* try a "
        r"lower learning rate than 0.05",
    ):
        quiet_train(tiny, data, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_nan_loss_is_one_line_and_exit_1(tmp_path, tiny):
    data = tmp_path / "huge.npz"
    x, y = bars()
    np.savez(data, x=x * 1e38, y=y)
    result = CliRunner().invoke(cli, train_arguments(tiny, data, tmp_path / "run"))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the loss became") and "Traceback" not in result.output
    assert result.stderr.count("\n") == 1


# -- a run that goes wrong without failing: one warning, exit 0 ----------------------------


def test_the_diverging_run_of_the_issue_warns(tiny, npz, tmp_path):
    out = tmp_path / "run"
    arguments = train_arguments(tiny, npz, out, "--lr", "1e6", "--optimizer", "sgd")
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, result.stdout
    assert re.fullmatch(
        r"warning: training diverged: the training loss grew from 1\.\d+ at the start to "
        r"[\d.]+e\+\d+ in epoch 1; try a lower learning rate than 1e\+06",
        warnings[0],
    )
    # said as soon as the epoch shows it, before the next epoch
    lines = result.stdout.splitlines()
    assert lines[lines.index(warnings[0]) - 1].startswith("epoch 1/2: ")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["summary"]["warnings"] == [warnings[0].removeprefix("warning: ")]


def test_a_run_that_learns_nothing_warns_at_the_end(tiny, npz, tmp_path):
    lines: list[str] = []
    result = train(
        str(tiny),
        str(npz),
        epochs=2,
        lr=1e-9,
        optimizer="sgd",
        out=tmp_path / "r",
        echo=lines.append,
    )
    (warning,) = result.warnings
    assert re.fullmatch(
        r"the validation accuracy \d+\.\d\d% after epoch 2 is no better than chance "
        r"\(37\.50%, always guessing the most common class\); try another learning rate than "
        r"1e-09 or more epochs",
        warning,
    )
    assert lines[-1] == f"warning: {warning}"


def epoch(train_loss: float, val_loss: float = 1.0, accuracy: float = 0.9) -> EpochMetrics:
    return EpochMetrics(3, train_loss, val_loss, accuracy, 1.0, 1.0, 0.0)


@pytest.mark.parametrize(
    ("metrics", "start", "expected"),
    [
        (epoch(2.0), 2.0, None),
        (epoch(200.0), 2.0, None),  # 100 times the start: not yet
        (epoch(200.5), 2.0, "the training loss grew from 2 at the start to 200 in epoch 3"),
        (
            epoch(1.0, val_loss=1e4),
            2.3,
            "the validation loss grew from 2.3 at the start to 1e+04 in epoch 3",
        ),
        (epoch(1.0, val_loss=float("nan")), 2.3, "the validation loss became nan in epoch 3"),
        (epoch(float("inf")), 2.3, "the training loss became inf in epoch 3"),
        (epoch(0.0, val_loss=0.0), 0.0, None),  # one class: the loss is always 0
    ],
)
def test_diverged(metrics, start, expected):
    message = _diverged(metrics, start, 0.5)
    if expected is None:
        assert message is None
    else:
        assert message == f"training diverged: {expected}; try a lower learning rate than 0.5"


@pytest.mark.parametrize(
    ("accuracy", "chance", "samples", "warns"),
    [
        (0.10, 0.10, 359, True),
        (0.13, 0.10, 359, True),  # two standard errors above chance: 13.17%
        (0.14, 0.10, 359, False),
        (0.50, 0.375, 24, True),  # few samples, wide luck: 37.5% + 19.8%
        (0.60, 0.375, 24, False),
        (0.00, 0.375, 24, True),
        (1.00, 1.0, 24, True),  # one class: nothing to learn
    ],
)
def test_at_chance(accuracy, chance, samples, warns):
    message = _at_chance(epoch(1.0, accuracy=accuracy), chance, samples, 0.5)
    assert (message is not None) == warns
    if warns:
        assert f"validation accuracy {accuracy:.2%} after epoch 3" in message
        assert f"chance ({chance:.2%}, always guessing" in message


def test_cuda_without_cuda(tiny, npz, tmp_path):
    if torch.cuda.is_available():  # pragma: no cover - these machines have no GPU
        pytest.skip("this machine has CUDA")
    with pytest.raises(TrainingError, match="--device cuda: CUDA is not available"):
        quiet_train(tiny, npz, device="cuda", out=tmp_path / "run")


def test_resume_problems(tiny, npz, tmp_path):
    with pytest.raises(TrainingError, match=r"nothing to resume: metrics\.json is missing"):
        train(str(tiny), resume=tmp_path, echo=print)
    quiet_train(tiny, npz, out=tmp_path / "run", epochs=1)
    with pytest.raises(TrainingError, match="was trained with optimizer 'adam', not 'sgd'"):
        train(str(tiny), resume=tmp_path / "run", optimizer="sgd", echo=print)
    with pytest.raises(TrainingError, match="already holds a run; continue it with --resume"):
        quiet_train(tiny, npz, out=tmp_path / "run")
    other = tmp_path / "other.yaml"
    other.write_text(TINY.replace("out_channels: 4", "out_channels: 5"), encoding="utf-8")
    with pytest.raises(TrainingError, match=r"differs from the spec .* was trained with"):
        train(str(other), resume=tmp_path / "run", echo=print)


@pytest.mark.parametrize("last", ["softmax", "logsoftmax"])
def test_probability_outputs_train_with_the_right_loss(tmp_path, npz, last):
    spec = tmp_path / "soft.yaml"
    spec.write_text(TINY + f"  - {{type: {last}, dim: 1}}\n", encoding="utf-8")
    result = quiet_train(spec, npz, out=tmp_path / "run", epochs=4)
    assert result.epochs[-1].val_loss < result.epochs[0].val_loss


def test_a_frozen_network_has_nothing_to_train(tmp_path, npz):
    spec = tmp_path / "frozen.yaml"
    spec.write_text(
        "input: [1, 8, 8]\nlayers:\n  - flatten\n"
        "  - {type: linear, out_features: 3, trainable: false}\n",
        encoding="utf-8",
    )
    with pytest.raises(TrainingError, match="every layer is frozen"):
        quiet_train(spec, npz, out=tmp_path / "run")


# -- the command ---------------------------------------------------------------------------


def test_cli_trains_and_reports(tiny, npz, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        train_arguments(tiny, npz, out, "--progress"),
    )
    assert result.exit_code == 0, result.output
    assert "epoch 2/2: train loss" in result.stdout
    assert "epoch 1/2" in result.stderr  # the tqdm bar
    assert "warning" not in result.output
    assert (out / "model.pt").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "nowhere.npz"], "error: nowhere.npz: no such file"),
        ([], "error: no training data: give --data digits, PATH.npz or mnist:DIR"),
        (["--data", "digits"], "error: "),  # 10 classes but the tiny spec outputs 3
    ],
)
def test_cli_errors_are_one_line(tiny, tmp_path, args, message):
    result = CliRunner().invoke(cli, ["train", str(tiny), "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == 1
    assert result.stderr.startswith(message) and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


# -- torchrun ------------------------------------------------------------------------------


def test_torchrun_two_processes_on_loopback(tiny, npz, tmp_path):
    out = tmp_path / "run"
    before = sorted(p.name for p in tmp_path.iterdir())
    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    environment["OMP_NUM_THREADS"] = "1"
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "convcalc",
            *train_arguments(tiny, npz, out, "--no-progress"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
        cwd=tmp_path,
    )
    assert finished.returncode == 0, finished.stderr  # torchrun: every rank exited 0
    assert finished.stdout.count("epoch 2/2:") == 1  # only rank 0 prints
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["world_size"] == 2 and len(metrics["epochs"]) == 2
    after = sorted(p.name for p in tmp_path.iterdir())
    assert after == sorted([*before, "run"])  # written once, and nowhere else
    assert not list(out.glob(".*.tmp"))


def test_settings_round_trip_through_metrics(tiny, npz, tmp_path):
    result = quiet_train(tiny, npz, out=tmp_path / "run", optimizer="sgd", batch_size=16)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    assert saved["settings"] == dataclasses.asdict(result.settings)
    shutil.rmtree(tmp_path / "run")


def test_tensorboard_event_files_hold_the_run(tiny, npz, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = tmp_path / "board"
    result = quiet_train(tiny, npz, out=tmp_path / "run", epochs=2, tensorboard=board)
    events = EventAccumulator(str(board), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {
        "train/loss",
        "train/lr",
        "epoch/train_loss",
        "epoch/val_loss",
        "epoch/val_accuracy",
        "epoch/lr",
    } <= set(tags["scalars"])
    accuracy = [e.value for e in events.Scalars("epoch/val_accuracy")]
    assert accuracy == pytest.approx([e.val_accuracy for e in result.epochs])
    steps = events.Scalars("train/loss")
    assert [s.step for s in steps] == list(range(1, len(steps) + 1))
    assert len(steps) == 2 * 2  # 96 training samples in batches of 64, two epochs
    assert [s.value for s in events.Scalars("train/lr")] == pytest.approx([0.05] * 4)
    (images,) = [t for t in tags["images"] if t.startswith("filters/")]
    assert images.startswith("filters/layers.0")
    assert [e.step for e in events.Images(images)] == [1, 2]
    # 4 filters 3×3 in 2 rows of 2, 24 pixels each, 2-pixel gaps: 2 + 2 × (24 + 2)
    last = events.Images(images)[-1]
    assert (last.width, last.height) == (54, 54)
    picture = np.asarray(Image.open(io.BytesIO(last.encoded_image_string)).convert("RGB"))
    gap = np.round(np.array(FILTER_GAP_COLOUR) * 255)
    for lines in (picture[:2], picture[26:28], picture[:, :2], picture[:, 26:28]):
        assert (lines == gap).all()
    # the picture of the last epoch is that of the weights saved after it
    weight = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["layers.0.weight"]
    expected = np.round(filter_grid(weight.numpy()) * 255)
    np.testing.assert_array_equal(picture, expected)
    first = picture[2:26, 2:26]  # each filter spans black to white
    assert first.min() == 0 and first.max() == 255


# -- the filter image --------------------------------------------------------------------------


def test_filter_grid_gaps_scaling_and_normalisation():
    weight = np.arange(5 * 9, dtype=np.float64).reshape(5, 1, 3, 3)
    weight[1] *= -10  # each filter is scaled to its own range
    grid = filter_grid(weight)
    # 5 filters: rows of 3, two rows; 3×3 weights of 8×8 pixels; gaps of 2
    assert grid.shape == (2 + 2 * (24 + 2), 2 + 3 * (24 + 2), 3)
    gap = np.array(FILTER_GAP_COLOUR)
    tops, lefts = [2, 28], [2, 28, 54]
    covered = np.zeros(grid.shape[:2], bool)
    for index in range(5):
        top, left = tops[index // 3], lefts[index % 3]
        tile = grid[top : top + 24, left : left + 24]
        covered[top : top + 24, left : left + 24] = True
        assert (tile == tile[..., :1]).all()  # grey
        expected = np.arange(9).reshape(3, 3) / 8
        if index == 1:
            expected = expected[::-1, ::-1]
        np.testing.assert_allclose(tile[..., 0], np.kron(expected, np.ones((8, 8))))
    assert (grid[~covered] == gap).all()  # gaps, border and the empty sixth cell


def test_filter_grid_colour_channels_and_size_limit():
    rng = np.random.default_rng(0)
    colour = filter_grid(rng.normal(size=(2, 3, 5, 5)))
    assert colour.shape == (2 + 1 * (40 + 2), 2 + 2 * (40 + 2), 3)  # 8 pixels a weight
    tile = colour[2:42, 2:42]
    assert not (tile == tile[..., :1]).all()  # in colour
    assert tile.min() == 0 and tile.max() == 1
    mean = filter_grid(np.stack([np.ones((1, 3, 3)), np.eye(3)[None] * 2], axis=1))
    np.testing.assert_allclose(mean[2:26:8, 2:26:8, 0], np.eye(3))  # the channels' mean
    constant = filter_grid(np.ones((1, 1, 3, 3)))
    assert (constant[2:26, 2:26] == 0).all()  # no range: black, not NaN
    assert max(filter_grid(np.zeros((256, 3, 11, 11))).shape) <= 1024
    # 64 columns of 3×3 filters: the largest scale that fits in 1024 pixels is 4
    assert filter_grid(np.zeros((4096, 1, 3, 3))).shape == (2 + 64 * 14, 2 + 64 * 14, 3)
