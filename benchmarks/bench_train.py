"""`convcalc train` on the MNIST CNN spec and scikit-learn's digits, against a plain loop.

Prints figures; asserts nothing. Targets (issue 4): ≥ 97% validation accuracy within
30 s wall, torch import included, on a 2-core CPU; training throughput within 10% of
a hand-written PyTorch loop over the same model and data.

    python benchmarks/bench_train.py [--epochs 10] [--rounds 2]

Both are run as fresh processes, alternately, `--rounds` times each. Time to accuracy
is measured from the moment the process is started to the end of the first epoch whose
validation accuracy reaches 97% (`finished_at` in metrics.json). Throughput counts
training steps only (validation and start-up excluded) in both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "mnist_cnn.yaml"
TARGET = 0.97

# The loop a person writes by hand: the same layers, data, split, optimizer and batch
# size, shuffled with randperm each epoch. Prints JSON: throughput and time to accuracy.
PLAIN_LOOP = """
import json, sys, time
started = float(sys.argv[1])
import torch
from torch import nn
from convcalc.data import load_data, split_indices

epochs = int(sys.argv[2])
data = load_data("digits", [1, 28, 28])
train_idx, val_idx = split_indices(len(data.y), 0.2)
x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
xt, yt, xv, yv = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(3136, 10),
)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()
seconds, samples, reached = 0.0, 0, None
for epoch in range(1, epochs + 1):
    model.train()
    began = time.perf_counter()
    order = torch.randperm(len(xt))
    for start in range(0, len(order), 64):
        batch = order[start : start + 64]
        optimizer.zero_grad()
        loss = loss_fn(model(xt[batch]), yt[batch])
        loss.backward()
        optimizer.step()
        samples += len(batch)
    seconds += time.perf_counter() - began
    model.eval()
    with torch.no_grad():
        accuracy = (model(xv).argmax(1) == yv).float().mean().item()
    if reached is None and accuracy >= %(target)s:
        reached = time.time() - started
print(json.dumps({"samples_per_second": samples / seconds, "time_to_target": reached}))
"""


def convcalc_run(epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        started = time.time()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "convcalc",
                "train",
                str(SPEC),
                "--data",
                "digits",
                "--epochs",
                str(epochs),
                "--out",
                str(out),
                "--no-progress",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            env=_environment(),
        )
        wall = time.time() - started
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    reached = next(
        (e["finished_at"] - started for e in metrics["epochs"] if e["val_accuracy"] >= TARGET),
        None,
    )
    summary = metrics["summary"]
    return {
        "wall": wall,
        "time_to_target": reached,
        "accuracy": [e["val_accuracy"] for e in metrics["epochs"]],
        "samples_per_second": summary["samples_per_second"],
        "gflops_per_second": summary["gflops_per_second"],
        "peak_memory": summary["peak_memory_bytes"],
        "estimated_memory": summary["estimated_memory"]["total_bytes"],
    }


def plain_run(epochs: int) -> dict:
    started = time.time()
    finished = subprocess.run(
        [sys.executable, "-c", PLAIN_LOOP % {"target": TARGET}, str(started), str(epochs)],
        check=True,
        capture_output=True,
        text=True,
        env=_environment(),
    )
    return json.loads(finished.stdout)


def _environment() -> dict[str, str]:
    # As a user runs it: Python caches bytecode (some sandboxes turn that off).
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:5.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    ours, plain = [], []
    for _ in range(options.rounds):
        ours.append(convcalc_run(options.epochs))
        plain.append(plain_run(options.epochs))
    print(f"{options.rounds} rounds, {options.epochs} epochs each, {os.cpu_count()} cores\n")
    for i, run in enumerate(ours, start=1):
        accuracy = " ".join(f"{100 * a:.1f}" for a in run["accuracy"])
        print(
            f"convcalc train, round {i}: {TARGET:.0%} after {_seconds(run['time_to_target'])} "
            f"(wall {run['wall']:.1f} s for all epochs); validation accuracy per epoch: "
            f"{accuracy}"
        )
    for i, run in enumerate(plain, start=1):
        print(f"plain loop,     round {i}: {TARGET:.0%} after {_seconds(run['time_to_target'])}")
    ours_rate = statistics.median(r["samples_per_second"] for r in ours)
    plain_rate = statistics.median(r["samples_per_second"] for r in plain)
    print(
        f"\ntraining throughput (median): convcalc {ours_rate:,.0f} samples/s, plain loop "
        f"{plain_rate:,.0f} samples/s: {ours_rate / plain_rate:.1%} of the plain loop"
    )
    gflops = statistics.median(r["gflops_per_second"] for r in ours)
    print(f"achieved: {gflops:.1f} GFLOP/s (6 FLOPs per MAC of the calculator)")
    for i, run in enumerate(ours, start=1):
        measured, estimated = run["peak_memory"], run["estimated_memory"]
        print(
            f"memory, round {i}: measured {measured / 1e6:.1f} MB (RSS growth) vs estimated "
            f"{estimated / 1e6:.1f} MB (adam, batch 64): {measured / estimated:.2f}×"
        )


if __name__ == "__main__":
    main()
