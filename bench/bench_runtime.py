"""Benchmark of the durable task runtime on the embedded (SQLite) store.

Prints, with durable commits (WAL, synchronous=FULL):
- end-to-end throughput of 10,000 and 50,000 no-op tasks (submit to last result);
- p50 and p99 of 500 sequential single-task round trips (submit -> result);
- the time of a 1,000-wide fan-out plus fan-in workflow;
- a node's start to its first result, and its resident memory when idle;
- the machine's own baseline beside them: durable one-row commits per
  second in plain SQLite (a round trip is at least two such commits).

Each figure uses one node process (`accord worker`) with 2 slots, started
before the clock runs unless the figure is about start-up.

    python bench/bench_runtime.py [--quick] [--mode process|thread]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_state import raw_commits_per_second  # noqa: E402

import accord  # noqa: E402
import apps  # noqa: E402


def start_node(url: str, mode: str, slots: int = 2) -> subprocess.Popen[bytes]:
    env = dict(os.environ, ACCORD_STORE=url, PYTHONPATH=str(HERE))
    log = open(Path(tempfile.gettempdir()) / f"accord-bench-node-{os.getpid()}.log", "ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "accord",
            "worker",
            "--app",
            "apps:app",
            "--slots",
            str(slots),
            "--mode",
            mode,
        ],
        env=env,
        stdout=log,
        stderr=log,
    )


def wait_for_node(app: accord.App, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while app.live_nodes() == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("node did not start")
        time.sleep(0.02)
    # One task through, so the slots are warm.
    apps.noop.submit().result(timeout=timeout)


def stop_node(node: subprocess.Popen[bytes]) -> None:
    node.send_signal(signal.SIGTERM)
    try:
        node.wait(timeout=30)
    except subprocess.TimeoutExpired:
        node.kill()
        node.wait()


def throughput(app: accord.App, count: int) -> float:
    started = time.perf_counter()
    handles = apps.noop.map([()] * count)
    run = app.get_run(handles[0].info().run_id)
    run.wait(timeout=600)
    elapsed = time.perf_counter() - started
    return count / elapsed


def round_trips(count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        apps.noop.submit().result(timeout=30)
        times.append(time.perf_counter() - started)
    return times


def fan(app: accord.App, width: int) -> float:
    started = time.perf_counter()
    value = app.start(apps.fan, width).wait(timeout=120)
    elapsed = time.perf_counter() - started
    assert value == sum(range(width)), value
    return elapsed


def start_to_first_result(url: str, mode: str) -> tuple[float, float, float]:
    """Seconds from starting a node process to the first result, and idle RSS (MB)."""
    import psutil

    handle = apps.noop.submit()
    started = time.perf_counter()
    node = start_node(url, mode)
    try:
        handle.result(timeout=60)
        first = time.perf_counter() - started
        time.sleep(2.0)
        proc = psutil.Process(node.pid)
        own = proc.memory_info().rss / 2**20
        children = sum(c.memory_info().rss for c in proc.children(recursive=True)) / 2**20
    finally:
        stop_node(node)
    return first, own, children


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    parser.add_argument("--mode", default="process", choices=["process", "thread"])
    args = parser.parse_args()
    small, large, trips, width = (
        (1000, 2000, 50, 200) if args.quick else (10_000, 50_000, 500, 1000)
    )
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        app = apps.app
        app.use_store(url)
        print(
            f"accord {accord.__version__} runtime benchmark: SQLite WAL synchronous=FULL, "
            f"1 node, 2 {args.mode} slots, {os.cpu_count()} CPUs"
        )
        raw = raw_commits_per_second(Path(tmp), 1, 1.0)
        print(f"baseline: plain SQLite commits:  {raw:8.0f} /s ({1000 / raw:.2f} ms each)")
        first, own_rss, child_rss = start_to_first_result(url, args.mode)
        print(f"node start to first result:     {first * 1000:8.1f} ms")
        print(
            f"idle node resident memory:      {own_rss:8.1f} MB "
            f"(+ {child_rss:.1f} MB in its slot processes)"
        )
        node = start_node(url, args.mode)
        try:
            wait_for_node(app)
            for count in (small, large):
                rate = throughput(app, count)
                print(f"throughput, {count:>6} no-op tasks: {rate:8.0f} tasks/s")
            times = round_trips(trips)
            print(
                f"round trip ({trips} sequential):  p50 {pct(times, 0.5) * 1000:6.2f} ms   "
                f"p99 {pct(times, 0.99) * 1000:6.2f} ms"
            )
            took = fan(app, width)
            print(f"fan-out {width} + fan-in:         {took * 1000:8.1f} ms")
        finally:
            stop_node(node)
            app.close()


if __name__ == "__main__":
    main()
