"""Benchmark of scheduling: simulated quality, urgent latency, claim cost.

1. The simulator replays a mixed workload (urgent and bulk tasks, nodes of
   speeds 1, 2 and 4) under the default cost policy, pure priority and FIFO,
   and prints waits per class, weighted completion time, makespan, deadline
   misses and the longest wait.
2. On the real runtime: 5,000 queued low-priority tasks of 5 ms on a node
   with 2 slots; 20 high-priority tasks are submitted one by one; their
   submit-to-finish times (p50, max).
3. Claim cost against queue length: claims per second of batches of 16 with
   1,000 and with 100,000 ready tasks queued.

    python bench/bench_scheduling.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import apps  # noqa: E402
from accord.scheduling import CostPolicy, FifoPolicy, NodeSpec, PriorityPolicy  # noqa: E402
from accord.scheduling.sim import mixed_workload, percentile, simulate  # noqa: E402
from accord.store.base import NewRun, NewTask  # noqa: E402
from accord.store.sqlite import SqliteStore  # noqa: E402


def simulation() -> None:
    tasks, nodes = mixed_workload()
    print(
        f"simulated workload: {len(tasks)} tasks "
        f"({', '.join(f'{n.name} v={n.speed:g}' for n in nodes)})"
    )
    header = (
        f"{'policy':<9} {'class':<7} {'n':>5} {'mean wait':>10} {'p99 wait':>10} {'max wait':>10}"
    )
    for policy in (CostPolicy(), PriorityPolicy(), FifoPolicy()):
        report = simulate(tasks, nodes, policy)
        print(
            f"\n{policy.name}: weighted completion {report.weighted_completion:8.1f} s, "
            f"makespan {report.makespan:7.1f} s, deadline misses {report.deadline_misses}, "
            f"longest wait {report.longest_wait:7.1f} s"
        )
        print(header)
        for label, outcomes in sorted(report.by_label().items()):
            waits = [o.wait for o in outcomes]
            print(
                f"{policy.name:<9} {label:<7} {len(waits):>5} {statistics.mean(waits):>10.1f} "
                f"{percentile(waits, 0.99):>10.1f} {max(waits):>10.1f}"
            )


def urgent_latency(count_low: int, count_high: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/sched.db"
        app = apps.app
        app._url = url
        env = dict(os.environ, ACCORD_STORE=url, PYTHONPATH=str(HERE))
        low = apps.work.with_options(priority=0)
        low.map([(0.005,)] * count_low)
        node = subprocess.Popen(
            [sys.executable, "-m", "accord", "worker", "--app", "apps:app", "--slots", "2"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            high = apps.work.with_options(priority=10)
            time.sleep(2.0)  # the node is up and busy with low-priority work
            times = []
            for _ in range(count_high):
                started = time.perf_counter()
                high.submit(0.005).result(timeout=60)
                times.append(time.perf_counter() - started)
                time.sleep(0.05)
        finally:
            node.send_signal(signal.SIGTERM)
            node.wait(timeout=60)
            app.close()
            app._closed = False
            app._store = None
    return times


def claim_rate(queued: int, claims: int = 300, batch: int = 16) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(f"{tmp}/claims.db")
        for start in range(0, queued + claims * batch, 10_000):
            chunk = min(10_000, queued + claims * batch - start)
            store.submit(
                [
                    NewTask(name="noop", queue="q", args=b"\x92\x90\x80", priority=i % 3)
                    for i in range(chunk)
                ],
                run=NewRun(app="q", name="load", rooted=False),
            )
        node = store.register_node(
            name="bench", host="h", pid=1, queue="q", slots=16, mode="thread", capabilities=[]
        )
        spec = NodeSpec(capacity={"cpu": 1e9})
        started = time.perf_counter()
        for _ in range(claims):
            _, got = store.exchange(node, [], queue="q", claim=batch, lease_ttl=600, node=spec)
            assert len(got) == batch
        rate = claims / (time.perf_counter() - started)
        store.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    simulation()
    low, high = (1000, 5) if args.quick else (5000, 20)
    times = urgent_latency(low, high)
    print(
        f"\nurgent latency ({high} priority-10 tasks behind {low} queued 5 ms tasks, 2 slots): "
        f"p50 {percentile(times, 0.5) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms"
    )
    small, large = (1000, 20_000) if args.quick else (1000, 100_000)
    rate_small = claim_rate(small)
    rate_large = claim_rate(large)
    print(
        f"claims/s (batches of 16): {rate_small:.0f} with {small} queued, "
        f"{rate_large:.0f} with {large} queued (ratio {rate_small / rate_large:.2f})"
    )


if __name__ == "__main__":
    main()
