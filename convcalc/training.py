"""``convcalc train``: train a spec in PyTorch on real data, and hold the calculator's
estimates (MACs, training memory) against what the run measures.

One process, or one per rank under ``torchrun`` (DistributedDataParallel: gloo on CPU,
nccl on CUDA). Only rank 0 prints and writes. After every epoch the run directory holds
a complete state, each file written under a temporary name and renamed:

- ``metrics.json``: the settings and one entry per finished epoch;
- ``model.pt``: the weights (a ``state_dict`` for ``build_module(spec)``);
- ``checkpoint.pt``: weights, optimizer state, random-number state, for ``--resume``;
- ``curves.png``: loss and accuracy per epoch;
- ``spec.yaml``: the spec.

A run that goes wrong without failing (the loss grows by orders of magnitude, or the
validation accuracy ends no better than guessing) says so in one warning line, kept in
``TrainResult.warnings`` and ``metrics.json``.
"""

from __future__ import annotations

import datetime
import importlib
import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import yaml

from convcalc.analysis import analyze
from convcalc.data import Dataset, load_data, split_indices
from convcalc.errors import DataError, Problem, ShapeError, TrainingError
from convcalc.layers import Leaf
from convcalc.loader import load_spec
from convcalc.report import OPTIMIZER_STATES, Report, TrainingMemory
from convcalc.spec import Network
from convcalc.torch_bridge import build_module, import_torch

__all__ = [
    "DEFAULT_LR",
    "EpochMetrics",
    "Interrupted",
    "Settings",
    "TrainResult",
    "filter_grid",
    "train",
]

DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
SGD_MOMENTUM = 0.9
# A training step costs about three forward passes (forward, then the gradients with
# respect to the activations and to the weights), and a multiply-accumulate is 2 FLOPs.
FLOPS_PER_MAC_TRAINING = 3 * 2
# A loss this many times its start (the first step's, or a uniform guess's ln(classes) if
# larger) has diverged: two orders of magnitude, far beyond the noise of a healthy run.
DIVERGED_LOSS_FACTOR = 100
# TensorBoard's filter image: each weight drawn as a square of at most this many pixels,
# filters drawn at least FILTER_MIN_SIDE pixels wide where that stays within the limit,
# FILTER_GAP pixels of FILTER_GAP_COLOUR between them, the whole at most
# FILTER_GRID_MAX_SIDE pixels a side (or one pixel a weight, if even that is larger).
FILTER_MAX_SCALE = 8
FILTER_MIN_SIDE = 48
FILTER_GAP = 2
FILTER_GAP_COLOUR = (0.2, 0.45, 0.8)  # blue: not a grey any filter pixel can be
FILTER_GRID_MAX_SIDE = 1024

METRICS, MODEL, CHECKPOINT, CURVES, SPEC = (
    "metrics.json",
    "model.pt",
    "checkpoint.pt",
    "curves.png",
    "spec.yaml",
)


@dataclass(frozen=True)
class Settings:
    """What a run was asked to do; saved in ``metrics.json`` and reused by ``--resume``."""

    data: str
    epochs: int = 10
    batch_size: int = 64
    lr: float | None = None  # None: the optimizer's default (DEFAULT_LR)
    optimizer: str = "adam"
    seed: int = 0
    device: str = "cpu"
    validation: float = 0.2

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    seconds: float  # training and validation of this epoch
    samples_per_second: float  # training samples, all ranks
    finished_at: float  # Unix time, for measuring time to accuracy from outside


@dataclass
class TrainResult:
    """A finished (or interrupted) run."""

    out: Path
    settings: Settings
    epochs: list[EpochMetrics]
    samples_per_second: float = 0.0
    gflops_per_second: float = 0.0
    peak_memory_bytes: int = 0  # CPU: RSS growth during training; CUDA: max allocated
    estimated_memory: TrainingMemory | None = None
    world_size: int = 1
    notes: list[str] = field(default_factory=list)
    # what went wrong without stopping the run (divergence, chance accuracy); each also
    # reported as a "warning: " line
    warnings: list[str] = field(default_factory=list)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the last finished epoch is saved in ``out``."""

    def __init__(self, out: Path, epochs_done: int) -> None:
        super().__init__(f"interrupted after epoch {epochs_done}")
        self.out = out
        self.epochs_done = epochs_done


def train(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Network,
    data: str | None = None,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    optimizer: str | None = None,
    seed: int | None = None,
    device: str | None = None,
    validation: float | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = None,
    on_epoch_end: Callable[[EpochMetrics], None] | None = None,
    tensorboard: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Train ``spec`` on ``data`` (``digits``, ``PATH.npz`` or ``mnist:DIR``).

    Options left as None take their defaults (see ``Settings``), or with ``resume``
    (a run directory) the saved run's, and ``epochs`` may then extend it. ``progress``
    shows a tqdm bar (default: when stderr is a terminal); ``echo`` receives each
    line the run reports (default: print); ``tensorboard`` is a directory for
    TensorBoard event files (loss and learning rate per step, metrics per epoch, the
    first layer's filters as images).
    """
    given = {
        "data": data,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer,
        "seed": seed,
        "device": device,
        "validation": validation,
    }
    run = _Run(spec, given, out, resume, progress, echo, on_epoch_end, tensorboard)
    try:
        return run.run()
    except KeyboardInterrupt:
        raise Interrupted(run.out, len(run.history)) from None


class _Run:
    def __init__(
        self,
        spec: Any,
        given: dict[str, Any],
        out: Any,
        resume: Any,
        progress: bool | None,
        echo: Callable[[str], None] | None,
        on_epoch_end: Callable[[EpochMetrics], None] | None,
        tensorboard: Any = None,
    ) -> None:
        self.torch = import_torch()
        self.tensorboard_dir = None if tensorboard is None else Path(tensorboard)
        self.board: Any = None  # the SummaryWriter, on rank 0 while training
        self.network = load_spec(spec)
        self.spec_text = _spec_text(spec, self.network)
        self.resume = Path(resume) if resume is not None else None
        self.history: list[EpochMetrics] = []
        self.first_loss: float | None = None  # of this process's first step
        self.settings = self._settings(given)
        self.rank, self.world = self._distributed()
        self.out = self._out_dir(out)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.echo_line = echo or print
        self.on_epoch_end = on_epoch_end

    # -- settings, output directory, processes -----------------------------------------

    def _settings(self, given: dict[str, Any]) -> Settings:
        explicit = {k: v for k, v in given.items() if v is not None}
        if self.resume is None:
            if "data" not in explicit:
                raise TrainingError("no training data: give --data digits, PATH.npz or mnist:DIR")
            settings = Settings(**explicit)
        else:
            saved = self._saved_run()
            changed = {
                k: v for k, v in explicit.items() if k != "epochs" and getattr(saved, k) != v
            }
            if changed:
                first = next(iter(changed))
                raise TrainingError(
                    f"{self.resume}: the run was trained with {first} "
                    f"{getattr(saved, first)!r}, not {changed[first]!r}; only --epochs may "
                    f"change when resuming"
                )
            settings = replace(saved, epochs=explicit.get("epochs", saved.epochs))
        if settings.optimizer not in OPTIMIZER_STATES:
            raise TrainingError(
                f"unknown optimizer {settings.optimizer!r}; use one of "
                f"{', '.join(OPTIMIZER_STATES)}"
            )
        for name in ("epochs", "batch_size"):
            if getattr(settings, name) < 1:
                raise TrainingError(f"{name} must be at least 1, got {getattr(settings, name)}")
        if not settings.learning_rate > 0 or not math.isfinite(settings.learning_rate):
            raise TrainingError(f"the learning rate must be positive, got {settings.lr}")
        if not 0 < settings.validation < 1:
            raise TrainingError(
                f"the validation fraction must be between 0 and 1, got {settings.validation}"
            )
        return settings

    def _saved_run(self) -> Settings:
        assert self.resume is not None
        for name in (METRICS, CHECKPOINT, SPEC):
            if not (self.resume / name).is_file():
                raise TrainingError(f"{self.resume}: nothing to resume: {name} is missing")
        try:
            metrics = json.loads((self.resume / METRICS).read_text(encoding="utf-8"))
            settings = Settings(**metrics["settings"])
            self.history = [EpochMetrics(**epoch) for epoch in metrics["epochs"]]
        except (ValueError, KeyError, TypeError) as error:
            raise TrainingError(
                f"{self.resume / METRICS}: not a convcalc metrics file ({error})"
            ) from None
        saved_spec = load_spec(self.resume / SPEC)
        if saved_spec.model_dump() != self.network.model_dump():
            raise TrainingError(
                f"{self.network.source}: differs from the spec {self.resume} was trained with "
                f"({self.resume / SPEC}); resume with that spec"
            )
        return settings

    def _distributed(self) -> tuple[int, int]:
        """(rank, world size): torchrun sets WORLD_SIZE, RANK and LOCAL_RANK."""
        torch = self.torch
        if self.settings.device == "cuda" and not torch.cuda.is_available():
            raise TrainingError(
                f"--device cuda: CUDA is not available (torch {torch.__version__} "
                f"{'built with CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU-only'})"
            )
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return 0, 1
        import torch.distributed as dist

        if self.settings.device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.settings.device == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size()

    def _out_dir(self, out: Any) -> Path:
        if self.resume is not None:
            if out is not None and Path(out) != self.resume:
                raise TrainingError("--out and --resume name different directories")
            return self.resume
        if out is not None:
            path = Path(out)
            if (path / METRICS).exists():
                raise TrainingError(
                    f"{path}: already holds a run; continue it with --resume {path}, "
                    f"or choose another --out"
                )
            return path
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{self.network.name}-{stamp}"
        suffix = 1
        while path.exists():  # two runs in one second
            suffix += 1
            path = Path("runs") / f"{self.network.name}-{stamp}-{suffix}"
        if self.world > 1:  # every rank must agree on rank 0's clock
            path = Path(self._broadcast(str(path)))
        return path

    def _broadcast(self, value: str) -> str:
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return str(box[0])

    def echo(self, line: str) -> None:
        if self.rank == 0:
            self.echo_line(line)

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> TrainResult:
        torch = self.torch
        settings = self.settings
        report = analyze(self.network, batch_size=settings.batch_size)
        dataset = load_data(settings.data, self.network.input)
        last_layer = self._check_fit(report, dataset)
        for note in dataset.notes:
            self.echo(note)
        train_idx, val_idx = split_indices(len(dataset), settings.validation)
        device = torch.device(settings.device)
        dtype = getattr(torch, self.network.dtype)
        x = torch.from_numpy(dataset.x).to(device=device, dtype=dtype)
        y = torch.from_numpy(dataset.y).to(device)
        chance = float(np.bincount(dataset.y[val_idx]).max()) / len(val_idx)

        loss_fn = _loss(torch, last_layer)
        self._warm_up(loss_fn, x[:1].expand(settings.batch_size, *x.shape[1:]), y[:1])
        baseline = self._memory_now()
        torch.manual_seed(settings.seed)
        model = build_module(self.network).to(device=device, dtype=dtype)
        optimizer = self._optimizer(model)
        start_epoch = self._restore(model, optimizer) if self.resume else 0
        trained = model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            trained = DistributedDataParallel(model)

        macs_per_sample = report.totals.macs / settings.batch_size
        estimate = report.training_memory(settings.optimizer)
        result = TrainResult(
            self.out,
            settings,
            list(self.history),
            estimated_memory=estimate,
            world_size=self.world,
            notes=list(dataset.notes),
        )
        self.echo(
            f"training {self.network.name} on {dataset.source}: {len(train_idx):,} samples, "
            f"{len(val_idx):,} for validation, {dataset.classes} classes; "
            f"{settings.optimizer} lr {settings.learning_rate:g}, batch {settings.batch_size}"
            + (f", {self.world} processes" if self.world > 1 else "")
        )
        if start_epoch >= settings.epochs:
            self.echo(
                f"{self.out}: already trained {start_epoch} epochs; ask for more with --epochs"
            )
            return result
        peak = baseline
        train_seconds = 0.0
        train_samples = 0
        self.board = self._summary_writer()
        self.step = start_epoch * math.ceil(len(train_idx) / self.world / settings.batch_size)
        try:
            for epoch in range(start_epoch + 1, settings.epochs + 1):
                began = time.perf_counter()
                loss, samples, epoch_peak = self._train_epoch(
                    trained, optimizer, loss_fn, x, y, train_idx, epoch
                )
                trained_for = time.perf_counter() - began
                peak = max(peak, epoch_peak)
                train_seconds += trained_for
                train_samples += samples
                val_loss, accuracy = self._validate(model, loss_fn, x, y, val_idx)
                metrics = EpochMetrics(
                    epoch=epoch,
                    train_loss=loss,
                    val_loss=val_loss,
                    val_accuracy=accuracy,
                    seconds=time.perf_counter() - began,
                    samples_per_second=samples / trained_for,
                    finished_at=time.time(),
                )
                self.history.append(metrics)
                result.epochs.append(metrics)
                if self.rank == 0:
                    self._save(model, optimizer, epoch)
                self.echo(
                    f"epoch {epoch}/{settings.epochs}: train loss {loss:.4f}, val loss "
                    f"{val_loss:.4f}, val accuracy {accuracy:.2%} ({metrics.seconds:.1f} s)"
                )
                if not result.warnings:  # one warning a run says enough
                    start = self._start_loss(dataset.classes)
                    self._warn(result, _diverged(metrics, start, settings.learning_rate))
                self._board_epoch(metrics, model, optimizer)
                if self.on_epoch_end is not None:
                    self.on_epoch_end(metrics)
        finally:
            self._plot()
            if self.board is not None:
                self.board.close()

        result.samples_per_second = train_samples / train_seconds
        result.gflops_per_second = (
            result.samples_per_second * macs_per_sample * FLOPS_PER_MAC_TRAINING / 1e9
        )
        result.peak_memory_bytes = self._peak_memory(peak, baseline)
        self._summary(result)
        if not result.warnings:
            last = result.epochs[-1]
            self._warn(result, _at_chance(last, chance, len(val_idx), settings.learning_rate))
        if self.rank == 0:
            self._write_metrics(result)
        return result

    def _start_loss(self, classes: int) -> float:
        """What the loss is compared with to call it diverged: the first step's, or a
        uniform guess's if that is larger (a run resumed from good weights starts low)."""
        return max(self.first_loss or 0.0, math.log(classes))

    def _warn(self, result: TrainResult, message: str | None) -> None:
        if message is not None:
            result.warnings.append(message)
            self.echo(f"warning: {message}")

    def _check_fit(self, report: Report, dataset: Dataset) -> str:
        """The loss to use (see ``_loss``), once the output fits the labels."""
        last = self.network.layers[-1]
        row = report.top_level_output()

        def problem(message: str) -> Problem:
            return Problem(message, self.network.source, last.line, row.path, last.name)

        if len(report.output_shape) != 2:
            raise ShapeError(
                problem(
                    f"the network's output is {_per_batch(report.output_shape)}; training a "
                    f"classifier needs [N, classes]: end the spec with flatten and linear"
                )
            )
        outputs = report.output_shape[1]
        if dataset.classes != outputs:
            raise DataError(
                str(
                    problem(
                        f"outputs {outputs} values per sample, but the labels of "
                        f"{dataset.source} have {dataset.classes} classes "
                        f"(0–{dataset.classes - 1})"
                    )
                )
            )
        kind = last.type if isinstance(last, Leaf) else ""
        if kind == "softmax":
            self.echo(
                f"{row.path}: the spec ends with softmax; training takes the log of its "
                f"output (ending with linear, and letting the loss apply softmax, is stabler)"
            )
        return kind if kind in ("softmax", "logsoftmax") else "linear"

    def _warm_up(self, loss_fn: Any, x: Any, y: Any) -> None:
        """One step on a throw-away model, so that the memory measured during training is
        training's own, not that of imports, thread pools and kernels torch sets up on
        first use. The random-number state is left as it was."""
        torch = self.torch
        for module in ("torch.optim", "torch.utils.data.distributed"):
            importlib.import_module(module)
        if self.rank == 0 and self.progress:
            importlib.import_module("tqdm")
        state = torch.get_rng_state()
        model = build_module(self.network).to(device=x.device, dtype=x.dtype)
        optimizer = self._optimizer(model)
        loss_fn(model(x), y.expand(len(x))).backward()
        optimizer.step()
        del model, optimizer
        torch.set_rng_state(state)

    def _optimizer(self, model: Any) -> Any:
        optim = self.torch.optim
        settings = self.settings
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise TrainingError(
                f"{self.network.source}: every layer is frozen (trainable: false); nothing to train"
            )
        if settings.optimizer == "sgd":
            return optim.SGD(params, lr=settings.learning_rate, momentum=SGD_MOMENTUM)
        if settings.optimizer == "adam":
            return optim.Adam(params, lr=settings.learning_rate)
        return optim.AdamW(params, lr=settings.learning_rate)

    def _restore(self, model: Any, optimizer: Any) -> int:
        assert self.resume is not None
        torch = self.torch
        state = torch.load(self.resume / CHECKPOINT, weights_only=True, map_location="cpu")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if self.settings.device == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        epoch = int(state["epoch"])
        self.history = [EpochMetrics(**e) for e in state["history"]]
        self.echo(f"resuming {self.out} after epoch {epoch}")
        return epoch

    def _train_epoch(
        self, model: Any, optimizer: Any, loss_fn: Any, x: Any, y: Any, indices: Any, epoch: int
    ) -> tuple[float, int, int]:
        """(mean training loss, samples seen by all ranks, peak memory sampled)."""
        torch = self.torch
        from torch.utils.data.distributed import DistributedSampler

        sampler: DistributedSampler[int] = DistributedSampler(
            cast(Any, range(len(indices))),  # any sized sequence will do
            num_replicas=self.world,
            rank=self.rank,
            shuffle=True,
            seed=self.settings.seed,
        )
        sampler.set_epoch(epoch)
        order = torch.as_tensor(indices)[torch.as_tensor(list(sampler))]
        batch = self.settings.batch_size
        model.train()
        bar = self._bar(epoch, len(order) * self.world)
        loss_sum, samples, peak = 0.0, 0, 0
        try:
            for step, start in enumerate(range(0, len(order), batch), start=1):
                chosen = order[start : start + batch].to(x.device)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x[chosen]), y[chosen])
                value = loss.item()
                if self.first_loss is None:
                    self.first_loss = value
                if not math.isfinite(value):
                    raise TrainingError(
                        f"the loss became {value} in epoch {epoch}, step {step}; training "
                        f"diverged: try a lower learning rate than {self.settings.learning_rate:g}"
                    )
                peak = max(peak, self._memory_now())  # saved activations are alive here
                loss.backward()
                optimizer.step()
                peak = max(peak, self._memory_now())
                loss_sum += value * len(chosen)
                samples += len(chosen)
                self.step += 1
                if self.board is not None:
                    self.board.add_scalar("train/loss", value, self.step)
                    self.board.add_scalar("train/lr", optimizer.param_groups[0]["lr"], self.step)
                if bar is not None:
                    bar.update(len(chosen) * self.world)
                    bar.set_postfix(loss=f"{loss_sum / samples:.4f}", refresh=False)
        finally:
            if bar is not None:
                bar.close()
        total = self._sum_over_ranks(loss_sum, samples)
        return total[0] / total[1], int(total[1]), peak

    def _sum_over_ranks(self, *values: float) -> list[float]:
        if self.world == 1:
            return list(values)
        import torch.distributed as dist

        tensor = self.torch.tensor(values, dtype=self.torch.float64)
        dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]

    def _summary_writer(self) -> Any:
        if self.tensorboard_dir is None or self.rank != 0:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrainingError(
                "--tensorboard needs the tensorboard package: pip install 'convcalc[tensorboard]'"
            ) from None
        return SummaryWriter(log_dir=str(self.tensorboard_dir))

    def _board_epoch(self, metrics: EpochMetrics, model: Any, optimizer: Any) -> None:
        """An epoch's metrics, and the first layer's filters as images."""
        board = self.board
        if board is None:
            return
        epoch = metrics.epoch
        board.add_scalar("epoch/train_loss", metrics.train_loss, epoch)
        board.add_scalar("epoch/val_loss", metrics.val_loss, epoch)
        board.add_scalar("epoch/val_accuracy", metrics.val_accuracy, epoch)
        board.add_scalar("epoch/lr", optimizer.param_groups[0]["lr"], epoch)
        first = next(
            ((n, m) for n, m in model.named_modules() if type(m).__name__ == "Conv2d"), None
        )
        if first is not None:
            name, conv = first
            weight = conv.weight.detach().float().cpu().numpy()
            pixels = np.round(filter_grid(weight) * 255).astype(np.uint8)
            board.add_image(f"filters/{name}", pixels, epoch, dataformats="HWC")
        board.flush()

    def _bar(self, epoch: int, total: int) -> Any:
        if self.rank != 0 or not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(
            total=total,
            desc=f"epoch {epoch}/{self.settings.epochs}",
            unit="sample",
            unit_scale=True,
            leave=False,
            dynamic_ncols=True,
        )

    def _validate(
        self, model: Any, loss_fn: Any, x: Any, y: Any, indices: Any
    ) -> tuple[float, float]:
        """(mean loss, accuracy) on the validation samples; ranks share the work."""
        torch = self.torch
        mine = torch.as_tensor(indices[self.rank :: self.world])
        loss_sum, correct = 0.0, 0
        model.eval()
        with torch.no_grad():
            for start in range(0, len(mine), 1024):
                chosen = mine[start : start + 1024].to(x.device)
                output = model(x[chosen])
                loss_sum += loss_fn(output, y[chosen]).item() * len(chosen)
                correct += int((output.argmax(dim=1) == y[chosen]).sum().item())
        loss_total, correct_total, count = self._sum_over_ranks(loss_sum, correct, len(mine))
        return loss_total / count, correct_total / count

    # -- memory ----------------------------------------------------------------------------

    def _memory_now(self) -> int:
        if self.settings.device == "cuda":
            return int(self.torch.cuda.memory_allocated())
        return _rss_bytes()

    def _peak_memory(self, sampled_peak: int, baseline: int) -> int:
        """CPU: growth of the resident set over the baseline; CUDA: peak allocated."""
        if self.settings.device == "cuda":
            return int(self.torch.cuda.max_memory_allocated())
        return max(0, sampled_peak - baseline)

    # -- files -----------------------------------------------------------------------------

    def _save(self, model: Any, optimizer: Any, epoch: int) -> None:
        torch = self.torch
        self.out.mkdir(parents=True, exist_ok=True)
        if not (self.out / SPEC).exists():
            _atomic(self.out / SPEC, lambda path: path.write_text(self.spec_text, encoding="utf-8"))
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "epoch": epoch,
            "history": [asdict(e) for e in self.history],
        }
        if self.settings.device == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state()
        _atomic(self.out / CHECKPOINT, lambda path: torch.save(state, path))
        _atomic(self.out / MODEL, lambda path: torch.save(model.state_dict(), path))
        self._write_metrics(None)

    def _plot(self) -> None:
        """curves.png, at the end of the run (or when it stops early)."""
        if self.rank == 0 and self.history and self.out.is_dir():
            _atomic(self.out / CURVES, lambda path: _plot(self.history, self.network.name, path))

    def _write_metrics(self, result: TrainResult | None) -> None:
        data: dict[str, Any] = {
            "spec": self.network.name,
            "settings": asdict(self.settings),
            "learning_rate": self.settings.learning_rate,
            "world_size": self.world,
            "epochs": [asdict(epoch) for epoch in self.history],
        }
        if result is not None:
            memory = result.estimated_memory
            data["summary"] = {
                "samples_per_second": result.samples_per_second,
                "gflops_per_second": result.gflops_per_second,
                "flops_per_mac": FLOPS_PER_MAC_TRAINING,
                "peak_memory_bytes": result.peak_memory_bytes,
                "peak_memory_measured_as": "max_memory_allocated"
                if self.settings.device == "cuda"
                else "RSS growth during training",
                "estimated_memory": memory.to_dict() if memory else None,
                "warnings": result.warnings,
            }
        text = json.dumps(data, indent=2) + "\n"
        _atomic(self.out / METRICS, lambda path: path.write_text(text, encoding="utf-8"))

    def _summary(self, result: TrainResult) -> None:
        if not result.epochs:
            return
        best = max(result.epochs, key=lambda e: e.val_accuracy)
        memory = result.estimated_memory
        assert memory is not None
        measured = result.peak_memory_bytes
        how = "peak allocated" if self.settings.device == "cuda" else "RSS growth"
        ratio = f" ({measured / memory.total:.2f}× the estimate)" if memory.total else ""
        self.echo(
            f"throughput {result.samples_per_second:,.0f} samples/s, "
            f"{result.gflops_per_second:.2f} GFLOP/s achieved (6 FLOPs per MAC: forward and "
            f"backward ≈ 3 forward passes)"
        )
        self.echo(
            f"memory: {measured / 1e6:,.1f} MB measured ({how}), "
            f"{memory.total / 1e6:,.1f} MB estimated for {memory.optimizer} at batch "
            f"{memory.batch_size}{ratio}"
        )
        self.echo(
            f"best validation accuracy {best.val_accuracy:.2%} (epoch {best.epoch}); "
            f"files in {self.out}"
        )


def _loss(torch: Any, last: str) -> Any:
    """Cross-entropy on what the network's last layer gives: scores, log-probabilities
    (logsoftmax) or probabilities (softmax)."""
    if last == "logsoftmax":
        return torch.nn.NLLLoss()
    if last == "softmax":
        nll = torch.nn.NLLLoss()
        return lambda probabilities, target: nll(torch.log(probabilities.clamp_min(1e-12)), target)
    return torch.nn.CrossEntropyLoss()


def _diverged(epoch: EpochMetrics, start: float, learning_rate: float) -> str | None:
    """Why ``epoch`` looks diverged from a loss of ``start``, or None if it does not.

    >>> exploded = EpochMetrics(1, 3.7e14, 2.8e6, 0.078, 1, 1, 0)
    >>> print(_diverged(exploded, 2.3, 1e6))  # doctest: +NORMALIZE_WHITESPACE
    training diverged: the training loss grew from 2.3 at the start to 3.7e+14 in epoch 1;
    try a lower learning rate than 1e+06
    >>> nan = EpochMetrics(2, 1.5, float("nan"), 0.1, 1, 1, 0)
    >>> print(_diverged(nan, 2.3, 0.05))  # doctest: +NORMALIZE_WHITESPACE
    training diverged: the validation loss became nan in epoch 2; try a lower learning rate
    than 0.05
    >>> _diverged(EpochMetrics(1, 2.0, 1.5, 0.6, 1, 1, 0), 2.3, 0.05) is None
    True
    """
    hint = f"try a lower learning rate than {learning_rate:g}"
    for name, loss in (("training", epoch.train_loss), ("validation", epoch.val_loss)):
        if not math.isfinite(loss):
            return (
                f"training diverged: the {name} loss became {loss} in epoch {epoch.epoch}; {hint}"
            )
        if loss > DIVERGED_LOSS_FACTOR * start:
            return (
                f"training diverged: the {name} loss grew from {start:.3g} at the start to "
                f"{loss:.3g} in epoch {epoch.epoch}; {hint}"
            )
    return None


def _at_chance(
    epoch: EpochMetrics, chance: float, samples: int, learning_rate: float
) -> str | None:
    """A warning if ``epoch``'s validation accuracy is no better than ``chance`` (always
    guessing the most common class) on ``samples`` samples, else None. "No better" is
    within two standard errors of a guess's accuracy: what luck alone gives.

    >>> guessing = EpochMetrics(10, 2.3, 2.3, 0.11, 1, 1, 0)
    >>> print(_at_chance(guessing, 0.1, 359, 1e-7))  # doctest: +NORMALIZE_WHITESPACE
    the validation accuracy 11.00% after epoch 10 is no better than chance (10.00%, always
    guessing the most common class); try another learning rate than 1e-07 or more epochs
    >>> _at_chance(EpochMetrics(10, 0.1, 0.1, 0.97, 1, 1, 0), 0.1, 359, 1e-3) is None
    True
    """
    luck = 2 * math.sqrt(chance * (1 - chance) / samples)
    if epoch.val_accuracy > chance + luck:
        return None
    return (
        f"the validation accuracy {epoch.val_accuracy:.2%} after epoch {epoch.epoch} is no "
        f"better than chance ({chance:.2%}, always guessing the most common class); try "
        f"another learning rate than {learning_rate:g} or more epochs"
    )


def filter_grid(weight: np.ndarray) -> np.ndarray:
    """A conv layer's filters ([out, in, kh, kw]) as one RGB image ([height, width, 3],
    values in [0, 1]) for TensorBoard: filters in rows of ``ceil(sqrt(out))``, each scaled
    to its own minimum (black) and maximum (white), a filter of 3 input channels in colour
    and any other as the mean over its channels, every weight a square of pixels
    (nearest-neighbour), FILTER_GAP pixels of FILTER_GAP_COLOUR around and between them.

    >>> filter_grid(np.zeros((32, 1, 3, 3))).shape  # mnist_cnn's conv1: 6×6 filters of 24 px
    (158, 158, 3)
    >>> filter_grid(np.zeros((64, 3, 11, 11))).shape  # AlexNet's: 8×8 of 55 px
    (458, 458, 3)
    """
    count, _, height, width = (int(size) for size in weight.shape)
    if weight.shape[1] != 3:
        weight = weight.mean(axis=1, keepdims=True)
    low = weight.min(axis=(1, 2, 3), keepdims=True)
    high = weight.max(axis=(1, 2, 3), keepdims=True)
    spread = np.where(high > low, high - low, 1.0)
    tiles = ((weight - low) / spread).transpose(0, 2, 3, 1)  # [out, kh, kw, 1 or 3]
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)

    def side(scale: int) -> int:
        return FILTER_GAP + max(columns, rows) * (max(height, width) * scale + FILTER_GAP)

    scale = max(1, min(FILTER_MAX_SCALE, math.ceil(FILTER_MIN_SIDE / max(height, width))))
    while scale > 1 and side(scale) > FILTER_GRID_MAX_SIDE:
        scale -= 1
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    step_down, step_across = height * scale + FILTER_GAP, width * scale + FILTER_GAP
    grid = np.empty((FILTER_GAP + rows * step_down, FILTER_GAP + columns * step_across, 3))
    grid[...] = FILTER_GAP_COLOUR
    for index, tile in enumerate(tiles):
        top = FILTER_GAP + (index // columns) * step_down
        left = FILTER_GAP + (index % columns) * step_across
        grid[top : top + height * scale, left : left + width * scale] = tile
    return grid


def _per_batch(shape: tuple[int, ...]) -> str:
    """``[N, 3, 6, 6]``: a shape whatever the batch size."""
    return "[" + ", ".join(["N", *map(str, shape[1:])]) + "]"


def _rss_bytes() -> int:
    """The resident set size now (Linux), else the peak so far."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """Write through a temporary name, then rename: a crash never leaves half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    os.replace(temporary, path)


def _spec_text(spec: Any, network: Network) -> str:
    if isinstance(spec, (str, os.PathLike)) and network.source and Path(network.source).is_file():
        return Path(network.source).read_text(encoding="utf-8")
    if isinstance(spec, Mapping):
        return yaml.safe_dump(dict(spec), sort_keys=False)
    data = network.model_dump(mode="json", exclude_unset=True, by_alias=True)
    return yaml.safe_dump(data, sort_keys=False)


def _plot(history: list[EpochMetrics], name: str, path: Path) -> None:
    from matplotlib.figure import Figure

    epochs = [e.epoch for e in history]
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    loss, accuracy = figure.subplots(1, 2)
    loss.plot(epochs, [e.train_loss for e in history], "o-", label="train")
    loss.plot(epochs, [e.val_loss for e in history], "o-", label="validation")
    loss.set(title=f"{name}: loss", xlabel="epoch", ylabel="cross-entropy")
    loss.legend()
    accuracy.plot(epochs, [100 * e.val_accuracy for e in history], "o-", color="C2")
    accuracy.set(title="validation accuracy", xlabel="epoch", ylabel="%")
    for axes in (loss, accuracy):
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.savefig(path, format="png", dpi=100)
