"""Benchmark of scheduling: simulated quality, urgent latency, claim cost.

1. The simulator replays a mixed workload (urgent and bulk tasks, nodes of
   speeds 1, 2 and 4) under the default cost policy, pure priority and FIFO,
   and prints waits per class, weighted completion time, makespan, deadline
   misses and the longest wait.
2. On the real runtime: 2,000 queued low-priority tasks of 5 ms on one node
   of 2 slots in its own process; a client in another process submits 20
   high-priority 5 ms tasks back to back (a burst, ten runs) and then one at
   a time (submit, wait, next); the submit-to-finish times (p50, max) beside
   the floor and the goals (burst p50 at most 35 ms and max at most 70 ms in
   every run, one at a time p50 at most 8 ms), each marked ok or MISSED.
3. Claim cost against queue length: claims per second of batches of 16 with
   1,000 and with 100,000 ready tasks queued (medians of three turns), on
   disk and in memory (where the commit's fsync, which varies more than the
   claim's own work, is left out); the goal: at most 1.2x slower.

    python bench/bench_scheduling.py [--quick]
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

import apps  # noqa: E402
from accord.scheduling import CostPolicy, FifoPolicy, NodeSpec, PriorityPolicy  # noqa: E402
from accord.scheduling.policy import EdfPolicy, SmithPolicy  # noqa: E402
from accord.scheduling.sim import (  # noqa: E402
    CLAIM_PER_LEVEL,
    WORKLOADS,
    percentile,
    simulate,
    starvation_bound,
)
from accord.store.records import NewRun, NewTask  # noqa: E402
from accord.store.sqlite.store import SqliteStore  # noqa: E402


def simulation() -> None:
    """The default policy against FIFO, pure priority, Smith's rule and EDF
    on three workloads. The baselines rank every ready task; the default is
    simulated with the claim path's candidate bound, as it runs."""
    for name, workload in WORKLOADS.items():
        tasks, nodes = workload()
        print(
            f"\nsimulated workload {name!r}: {len(tasks)} tasks "
            f"({', '.join(f'{n.name} v={n.speed:g}' for n in nodes)})"
        )
        print(
            f"{'policy':<9} {'weighted compl.':>15} {'urgent p99 wait':>15} "
            f"{'longest wait':>12} {'bound':>8} {'deadline misses':>15}"
        )
        reports = {}
        for policy in (FifoPolicy(), PriorityPolicy(), SmithPolicy(), EdfPolicy(), CostPolicy()):
            per_level = CLAIM_PER_LEVEL if isinstance(policy, CostPolicy) else None
            report = reports[policy.name] = simulate(tasks, nodes, policy, per_level=per_level)
            urgent = [o.wait for o in report.outcomes if o.task.label == "urgent"]
            bound = starvation_bound(tasks, nodes, policy)
            print(
                f"{policy.name:<9} {report.weighted_completion:>13.1f} s "
                f"{percentile(urgent, 0.99):>13.1f} s {report.longest_wait:>10.1f} s "
                f"{'-' if bound == float('inf') else f'{bound:.0f} s':>8} "
                f"{report.deadline_misses:>15}"
            )
        best = min(reports[n].weighted_completion for n in ("fifo", "priority", "smith"))
        cost = reports["cost"]
        fifo_p99 = percentile(
            [o.wait for o in reports["fifo"].outcomes if o.task.label == "urgent"], 0.99
        )
        cost_p99 = percentile([o.wait for o in cost.outcomes if o.task.label == "urgent"], 0.99)
        print(
            f"cost: weighted completion {cost.weighted_completion / best - 1:+.1%} against the "
            f"best baseline, urgent p99 wait {fifo_p99 / cost_p99:.1f}x lower than FIFO's"
        )


def urgent_latency(
    count_low: int, count_high: int, burst: bool, overtaken: list[int] | None = None
) -> list[float]:
    """Submit-to-end times of ``count_high`` priority-10 tasks submitted from
    this process behind ``count_low`` queued 5 ms tasks, on a node with 2
    slots in its own process: back to back (``burst``) or one at a time.
    With ``burst``, appends to ``overtaken`` how many backlog tasks ended
    while urgent ones were pending."""
    overtaken = [] if overtaken is None else overtaken
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/sched.db"
        app = apps.app
        app.runtime.reopen(url)
        env = dict(os.environ, ACCORD_STORE=url, PYTHONPATH=str(HERE))
        low = apps.work.with_options(priority=0)
        backlog = low.map([(0.005,)] * count_low)
        node = subprocess.Popen(
            [sys.executable, "-m", "accord", "worker", "--app", "apps:app", "--slots", "2"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            high = apps.work.with_options(priority=10)
            # The node is up, its slots started and busy with the backlog.
            backlog[40].result(timeout=120)
            times = []
            if burst:
                submitted = []
                for _ in range(count_high):
                    submitted.append((time.time(), high.submit(0.005)))
                ends = []
                for at, handle in submitted:
                    handle.result(timeout=60)
                    end = handle.info().finished_at
                    assert end is not None
                    times.append(end - at)
                    ends.append(end)
                # Backlog tasks that ended while the urgent ones were pending: a
                # count, which the machine's load does not change the way it
                # changes the times (the two slots in flight at the first
                # submit, and what the node took before it saw the work).
                overtaken.append(
                    sum(
                        1
                        for h in backlog
                        if (info := h.info()).finished_at is not None
                        and submitted[0][0] < info.finished_at < max(ends)
                    )
                )
            else:
                for _ in range(count_high):
                    started = time.perf_counter()
                    high.submit(0.005).result(timeout=60)
                    times.append(time.perf_counter() - started)
                    time.sleep(0.05)
        finally:
            node.send_signal(signal.SIGTERM)
            node.wait(timeout=60)
            app.runtime.reopen()
    return times


def claim_rate(queued: int, claims: int = 300, batch: int = 16, folder: str | None = None) -> float:
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
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
    low, high = (1000, 5) if args.quick else (2000, 20)
    runs = 2 if args.quick else 10
    print(
        f"\nurgent work ({high} priority-10 5 ms tasks behind {low} queued 5 ms tasks, "
        f"one node of 2 slots in another process; floor: p50 ~{(high / 2 + 1) / 2 * 5:.0f} ms, "
        f"max ~{(high / 2 + 0.5) * 5:.0f} ms):"
    )
    missed = 0
    for run in range(runs):
        overtaken: list[int] = []
        times = urgent_latency(low, high, burst=True, overtaken=overtaken)
        p50, top = percentile(times, 0.5) * 1000, max(times) * 1000
        good = p50 <= 35 and top <= 70
        missed += not good
        print(
            f"  burst run {run + 1}: p50 {p50:.1f} ms, max {top:.1f} ms "
            f"{'ok' if good else 'MISSED'} (goal p50 <= 35, max <= 70); "
            f"backlog tasks ended meanwhile: {overtaken[0]}"
        )
    print(f"  bursts: {runs - missed} of {runs} runs within the goal")
    times = urgent_latency(low, high, burst=False)
    p50 = percentile(times, 0.5) * 1000
    print(
        f"  one at a time: p50 {p50:.1f} ms, max {max(times) * 1000:.1f} ms "
        f"{'ok' if p50 <= 8 else 'MISSED'} (goal p50 <= 8 ms; floor ~5 ms)"
    )
    small, large = (1000, 20_000) if args.quick else (1000, 100_000)
    # Each claim is one durable commit, whose fsync varies from one moment to
    # the next by more than the claim's own work: measure the two sizes in
    # turn, three times, and also in memory (/dev/shm), where the figure is
    # the claim path's alone.
    folders: list[tuple[str, str | None]] = [("on disk", None)]
    if os.path.isdir("/dev/shm"):
        folders.append(("in memory", "/dev/shm"))
    for where, folder in folders:
        rates: dict[int, list[float]] = {small: [], large: []}
        for _ in range(1 if args.quick else 3):
            for queued in (small, large):
                rates[queued].append(claim_rate(queued, folder=folder))
        a, b = percentile(rates[small], 0.5), percentile(rates[large], 0.5)
        print(
            f"claims/s (batches of 16, {where}, median of {len(rates[small])}): {a:.0f} with "
            f"{small} queued, {b:.0f} with {large} queued (ratio {a / b:.2f} "
            f"{'ok' if a / b <= 1.2 else 'MISSED'}; goal at most 1.20)"
        )


if __name__ == "__main__":
    main()
