"""Load on `convcalc serve`: POST /api/analyze of ResNet-50 at a fixed rate, on loopback.

Prints figures; asserts nothing. Target (issue 14): 200 analysis requests per second of
ResNet-50 for 10 s from a local client, no error, p99 latency under 100 ms.

The server keeps its last answers, so by default (the same spec each time, as a page
re-sending its text) most requests are answered from that cache; ``--distinct`` makes every
request's spec different (a comment with the request's number), so each one is analysed
from the start: the server's real analysis capacity.

Starts `convcalc serve` (no spec file) on a free 127.0.0.1 port, waits until it answers,
sends a few warm-up requests, then sends requests open-loop (each at its scheduled time,
whether or not the earlier ones have been answered) from an asyncio client. Bounded: at
most rate x seconds requests, each with a timeout, and a global deadline. The server is
stopped at the end (terminate, then kill).

    python benchmarks/bench_serve.py [--rate 200] [--seconds 10] [--distinct]
                                     [--spec specs/resnet50.yaml]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
REQUEST_TIMEOUT = 10.0  # seconds, one request
DRAIN = 30.0  # seconds after the last send before the run is cut short
WARMUP = 5  # requests before measuring (the first one imports and warms caches)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def convcalc_command() -> list[str]:
    script = Path(sys.executable).parent / "convcalc"
    if script.exists():
        return [str(script)]
    found = shutil.which("convcalc")
    if found:
        return [found]
    raise SystemExit("cannot find the convcalc command (activate the virtual environment)")


def proc_status(pid: int, key: str) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds the process has used (from /proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_ready(client: httpx.AsyncClient, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"convcalc serve exited with status {process.returncode}")
        try:
            response = await client.get("/api/examples", timeout=1.0)
            if response.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.05)
    raise SystemExit(f"convcalc serve did not answer within {timeout:.0f} s")


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = max(0, min(len(sorted_values) - 1, int(-(-fraction * len(sorted_values) // 1)) - 1))
    return sorted_values[index]


async def load(
    client: httpx.AsyncClient, body_of: Callable[[int], dict], rate: float, seconds: float
) -> tuple[list[tuple[float, int | str]], float, float]:
    """Send ``rate * seconds`` requests open-loop; (latency s, status or exception name) of
    each, the wall time from the first send to the last answer, and the worst lag between a
    request's scheduled time and its actual send (the client's own delay)."""
    count = int(rate * seconds)
    results: list[tuple[float, int | str]] = []
    worst_lag = 0.0

    async def one(scheduled: float, body: dict) -> None:
        nonlocal worst_lag
        start = time.perf_counter()
        worst_lag = max(worst_lag, start - scheduled)
        try:
            response = await client.post("/api/analyze", json=body, timeout=REQUEST_TIMEOUT)
            await response.aread()
            outcome: int | str = response.status_code
        except Exception as error:  # an error to count, never a crash
            outcome = type(error).__name__
        results.append((time.perf_counter() - start, outcome))

    tasks = []
    begin = time.perf_counter()
    for i in range(count):
        scheduled = begin + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled, body_of(i))))
    _, pending = await asyncio.wait(tasks, timeout=DRAIN)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    wall = time.perf_counter() - begin
    results.extend(
        (float("nan"), "unanswered (drain deadline)") for _ in range(count - len(results))
    )
    return results, wall, worst_lag


async def bench(
    rate: float, seconds: float, spec: Path, distinct: bool, server_log: Path | None
) -> None:
    text = spec.read_text(encoding="utf-8")
    body = {"spec": text, "explain": False, "picture": False}

    def body_of(i: int) -> dict:
        return {**body, "spec": f"{text}# request {i}\n"} if distinct else body

    port = free_port()
    command = [*convcalc_command(), "serve", "--port", str(port), "--host", "127.0.0.1"]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=limits, trust_env=False
        ) as client:
            await wait_ready(client, process, timeout=20.0)
            for _ in range(WARMUP):
                response = await client.post("/api/analyze", json=body, timeout=REQUEST_TIMEOUT)
                if response.status_code != 200:
                    raise SystemExit(
                        f"warm-up request answered {response.status_code}: {response.text[:300]}"
                    )
            size = len(response.content)
            cpu_before = cpu_seconds(process.pid)
            results, wall, worst_lag = await asyncio.wait_for(
                load(client, body_of, rate, seconds), timeout=seconds + DRAIN + 10
            )
            cpu_after = cpu_seconds(process.pid)
        peak = proc_status(process.pid, "VmHWM")
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    stderr = process.stderr.read() if process.stderr else ""
    if server_log is not None:
        server_log.write_text(stderr, encoding="utf-8")

    sent = len(results)
    ok = sorted(latency for latency, outcome in results if outcome == 200)
    errors: dict[str, int] = {}
    for _, outcome in results:
        if outcome != 200:
            errors[str(outcome)] = errors.get(str(outcome), 0) + 1
    ms = lambda seconds: f"{seconds * 1000:.1f} ms"  # noqa: E731

    print(f"spec: {spec.name} ({len(text):,} characters; response {size:,} bytes)")
    print(f"target: {rate:g} requests/s for {seconds:g} s, open loop, picture off")
    print(
        "specs: a different one each request (every request analysed)"
        if distinct
        else "specs: the same each request (answered from the server's cache after the first)"
    )
    print(f"requests sent: {sent}")
    print(f"errors: {sum(errors.values())}" + (f" {errors}" if errors else ""))
    print(f"achieved rate: {len(ok) / wall:.1f} answered/s ({sent} in {wall:.2f} s)")
    if ok:
        print(
            f"latency: p50 {ms(statistics.median(ok))}, p90 {ms(percentile(ok, 0.90))}, "
            f"p99 {ms(percentile(ok, 0.99))}, max {ms(ok[-1])}"
        )
    print(f"client send lag: worst {ms(worst_lag)} behind schedule")
    if cpu_before is not None and cpu_after is not None and sent:
        used = cpu_after - cpu_before
        print(
            f"server CPU: {used:.2f} s over {wall:.2f} s ({used / wall:.0%} of one core), "
            f"{used / sent * 1000:.1f} ms per request"
        )
    print(f"server peak RSS (VmHWM): {peak or 'unknown'}")
    print(f"CPUs: {os.cpu_count()} (shared by server and client)")
    if stderr.strip():
        print("server stderr (last lines):")
        for line in stderr.strip().splitlines()[-5:]:
            print(f"  {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the run")
    parser.add_argument("--spec", type=Path, default=ROOT / "specs" / "resnet50.yaml")
    parser.add_argument(
        "--distinct", action="store_true", help="a different spec each request (no cache hits)"
    )
    parser.add_argument("--server-log", type=Path, help="write the server's stderr here")
    args = parser.parse_args()
    if args.rate <= 0 or args.seconds <= 0:
        parser.error("--rate and --seconds must be positive")
    asyncio.run(bench(args.rate, args.seconds, args.spec, args.distinct, args.server_log))


if __name__ == "__main__":
    main()
