"""Q11, the claim storm, on both backends (RELIABILITY.md Q11, G2, G3).

Sixteen claimers, each a thread with a store and a node of its own, call
``Store.exchange`` in a tight loop over a handful of open tasks. Leases are
short (0.2 s) and an attempt "works" for up to 0.3 s, heartbeating once half
of the time, so leases expire while their holder is still working, other
claimers take the task over with a higher fence, and stale completions race
the new attempt's. Whatever the interleaving, at most one fence of a task
commits a result, it is the row's final fence, and every task ends with one
outcome. Then the idempotent-submit race: the same key from 8 threads at
once gives one task (and one run).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import pytest

from accord import serde
from accord.scheduling.policy import FifoPolicy
from accord.store import open_store
from accord.store.base import Store
from accord.store.records import Completion, NewRun, NewTask, Outcome
from support.checker import report
from support.common import sql

pytestmark = pytest.mark.chaos

QUEUE = "storm"
CLAIMERS = 16
OPEN = 5
STORM_S = 8.0
LEASE = 0.2
WORK_MAX = 0.3


@dataclass(frozen=True, slots=True)
class Step:
    kind: str  # claim, complete, abort
    task_id: int
    fence: int
    claimer: int
    t: float
    ok: bool = True


def _new_task(n: int, key: str | None = None) -> NewTask:
    return NewTask(name="storm", queue=QUEUE, args=serde.dumps([[n], {}]), idempotency_key=key)


def _claimer(
    url: str, index: int, seed: int, stop: threading.Event, log: list[Step], errors: list[Any]
) -> None:
    rng = random.Random(seed * 100 + index)
    store = open_store(url)
    try:
        node = store.register_node(
            name=f"claimer{index}", host="test", pid=index, queue=QUEUE, slots=1,
            mode="thread", capabilities=[],
        )  # fmt: skip
        pending: list[Completion] = []
        while True:
            stopping = stop.is_set()
            accepted, claimed = store.exchange(
                node, pending, queue=QUEUE, claim=0 if stopping else 1, lease_ttl=LEASE
            )
            now = time.monotonic()
            for done, ok in zip(pending, accepted, strict=True):
                log.append(Step("complete", done.task_id, done.fence, index, now, ok))
            pending = []
            if stopping:
                return
            if not claimed:
                time.sleep(0.001)
                continue
            for task in claimed:
                log.append(Step("claim", task.id, task.fence, index, now))
                work = rng.uniform(0.0, WORK_MAX)
                if rng.random() < 0.5:
                    beat = work * rng.uniform(0.3, 0.9)
                    time.sleep(beat)
                    held = store.heartbeat(node, LEASE, 1)
                    if held.get(task.id) != task.fence:
                        log.append(Step("abort", task.id, task.fence, index, time.monotonic()))
                        continue  # lease lost: the attempt stops, no completion
                    time.sleep(work - beat)
                else:
                    time.sleep(work)
                value = {"task_id": task.id, "fence": task.fence, "claimer": index}
                pending.append(Completion(task.id, task.fence, Outcome.OK, serde.dumps(value)))
    except BaseException as exc:
        errors.append(exc)
    finally:
        store.close()


def _storm(url: str, seed: int) -> dict[str, Any]:
    started = time.monotonic()
    stop = threading.Event()
    log: list[Step] = []
    errors: list[Any] = []
    submitted: list[int] = []
    feeder_store = open_store(url)
    try:
        threads = [
            threading.Thread(
                target=_claimer, args=(url, i, seed, stop, log, errors), name=f"claimer{i}"
            )
            for i in range(CLAIMERS)
        ]
        for t in threads:
            t.start()
        # Keep a handful of tasks open for the storm's length.
        open_ids: list[int] = []
        deadline = time.monotonic() + STORM_S
        while time.monotonic() < deadline and not errors:
            if open_ids:
                done = {r.id for r in feeder_store.results(open_ids) if r.state.terminal}
                open_ids = [i for i in open_ids if i not in done]
            while len(open_ids) < OPEN:
                _, (task_id,) = feeder_store.submit(
                    [_new_task(len(submitted))], run=NewRun(app=QUEUE, name="storm")
                )
                open_ids.append(task_id)
                submitted.append(task_id)
            time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join(30)
        assert not errors, errors
        # Drain: one claimer with a long lease ends what the storm left open.
        drained = 0
        drainer = feeder_store.register_node(
            name="drainer", host="test", pid=0, queue=QUEUE, slots=1, mode="thread",
            capabilities=[],
        )  # fmt: skip
        pending: list[Completion] = []
        finish = time.monotonic() + 30
        while time.monotonic() < finish:
            accepted, claimed = feeder_store.exchange(
                drainer, pending, queue=QUEUE, claim=10, lease_ttl=30
            )
            now = time.monotonic()
            for done, ok in zip(pending, accepted, strict=True):
                log.append(Step("complete", done.task_id, done.fence, -1, now, ok))
            pending = []
            for task in claimed:
                log.append(Step("claim", task.id, task.fence, -1, now))
                value = {"task_id": task.id, "fence": task.fence, "claimer": -1}
                pending.append(Completion(task.id, task.fence, Outcome.OK, serde.dumps(value)))
                drained += 1
            results = feeder_store.results(submitted)
            if not pending and all(r.state.terminal for r in results):
                break
            time.sleep(0.05 if not claimed else 0)
        infos = {}
        for r in feeder_store.results(submitted):
            infos[r.id] = r
        rows = {t.id: t for t in (feeder_store.task(i) for i in submitted)}
        steals = sql(url, "SELECT count(*) FROM events WHERE kind = 'lease_expired'")[0][0]
    finally:
        stop.set()
        feeder_store.close()

    claims: dict[int, list[Step]] = defaultdict(list)
    commits: dict[int, list[Step]] = defaultdict(list)
    refused = aborted = 0
    for step in log:
        if step.kind == "claim":
            claims[step.task_id].append(step)
        elif step.kind == "complete" and step.ok:
            commits[step.task_id].append(step)
        elif step.kind == "complete":
            refused += 1
        else:
            aborted += 1
    violations: list[str] = []
    duplicated: set[int] = set()
    lost: list[int] = []
    failed_lease = 0
    for task_id in submitted:
        info, row, won = infos[task_id], rows[task_id], commits.get(task_id, [])
        fences = Counter(s.fence for s in claims.get(task_id, []))
        for fence, n in fences.items():
            if n > 1:
                duplicated.add(task_id)
                violations.append(f"task {task_id}: fence {fence} claimed {n} times")
        if len({s.fence for s in won}) > 1 or len(won) > 1:
            duplicated.add(task_id)
            violations.append(f"task {task_id}: completions of fences {[s.fence for s in won]}")
        if row.state.value == "succeeded":
            value = serde.loads(info.result) if info.result is not None else None
            if len(won) != 1:
                duplicated.add(task_id)
                violations.append(f"task {task_id}: succeeded with {len(won)} accepted results")
            elif value != {"task_id": task_id, "fence": won[0].fence, "claimer": won[0].claimer}:
                duplicated.add(task_id)
                violations.append(f"task {task_id}: result {value!r}, accepted {won[0]}")
            elif row.fence != won[0].fence:
                duplicated.add(task_id)
                violations.append(f"task {task_id}: final fence {row.fence}, result {won[0]}")
        elif row.state.value == "failed" and row.error_type == "LeaseExpired" and not won:
            failed_lease += 1  # every holder lost it: an outcome, not a loss
        else:
            lost.append(task_id)
            violations.append(f"task {task_id}: ended {row.state.value} ({row.error_type})")
    # Claims of a task while another fence's attempt had not yet reported.
    overlaps = 0
    ended = {(s.task_id, s.fence): s.t for s in log if s.kind in ("complete", "abort")}
    for task_id, steps in claims.items():
        for a in steps:
            for b in steps:
                if b.fence > a.fence and b.t < ended.get((task_id, a.fence), float("inf")):
                    overlaps += 1
    return {
        "tasks": len(submitted),
        "claims": sum(len(v) for v in claims.values()),
        "completed": sum(1 for t in submitted if rows[t].state.value == "succeeded"),
        "failed_lease_expired": failed_lease,
        "lost": len(lost),
        "duplicated": len(duplicated),
        "fenced_rejections": refused,
        "aborted_by_heartbeat": aborted,
        "steals": steals,
        "overlaps": overlaps,
        "max_claims_per_task": max((len(v) for v in claims.values()), default=0),
        "drained": drained,
        "invariant_violations": len(violations),
        "violations": violations[:20],
        "seed": seed,
        "wall_s": round(time.monotonic() - started, 2),
    }


@pytest.mark.timeout(90)
@pytest.mark.parametrize("seed", [11])
def test_q11_claim_storm(store_url: str, backend: str, seed: int) -> None:
    """Q11: 16 claimers, 5 open tasks at a time, 8 s; 0.2 s leases, attempts
    of up to 0.3 s. No task has two committed fences, each succeeded task's
    result is its final fence's, every task ends (succeeded, or failed after
    losing its lease too often), and the storm really raced (steals,
    refused completions and overlapping attempts all happened)."""
    figures = _storm(store_url, seed)
    report("Q11-storm", figures, backend=backend)
    assert figures["duplicated"] == 0, figures["violations"]
    assert figures["lost"] == 0, figures["violations"]
    assert figures["invariant_violations"] == 0, figures["violations"]
    assert figures["tasks"] >= 50, "the storm barely ran"
    assert figures["steals"] > 0 and figures["overlaps"] > 0, "nothing raced"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", [12])
def test_q11_idempotent_submit_race(store_url: str, backend: str, seed: int) -> None:
    """Q11: the same idempotency key from 8 threads at once (each with its own
    store, released by a barrier), 20 keys: every thread gets the same task,
    the store holds one task and one run per key."""
    started = time.monotonic()
    threads_n, keys = 8, 20
    barrier = threading.Barrier(threads_n)
    got: dict[str, list[int]] = defaultdict(list)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def racer(index: int) -> None:
        store: Store = open_store(store_url)
        try:
            for k in range(keys):
                key = f"race-{seed}-{k}"
                barrier.wait(30)
                _, (task_id,) = store.submit([_new_task(k, key)], run=NewRun(QUEUE, "race"))
                with lock:
                    got[key].append(task_id)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            store.close()

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    per_key = dict(sql(store_url, "SELECT idempotency_key, count(*) FROM tasks GROUP BY 1"))
    runs = sql(store_url, "SELECT count(*) FROM runs")[0][0]
    split = sorted(k for k, ids in got.items() if len(set(ids)) != 1)
    figures = {
        "keys": keys,
        "threads": threads_n,
        "calls": sum(len(v) for v in got.values()),
        "tasks": sum(per_key.values()),
        "runs": runs,
        "duplicated": sum(1 for n in per_key.values() if n > 1) + len(split),
        "errors": len(errors),
        "wall_s": round(time.monotonic() - started, 2),
    }
    report("Q11-idempotent-race", figures, backend=backend)
    assert not errors, errors
    assert figures["calls"] == keys * threads_n
    assert not split, {k: got[k] for k in split}
    assert per_key == {f"race-{seed}-{k}": 1 for k in range(keys)}
    assert runs == keys, f"{runs} runs for {keys} keys: a losing submit left its run behind"


@pytest.mark.parametrize("policy", [None, FifoPolicy()], ids=["cost", "fifo"])
def test_a_held_task_keeps_lower_priorities_back(pg_url: str, policy: FifoPolicy | None) -> None:
    """G10 on PostgreSQL: a claimer skips a ready task that another
    transaction holds (as a run's end check does) rather than wait for it. It
    must not take work of lower priority in its place: that work would jump
    ahead. Under FIFO, which promises no priority order, it takes it."""
    import psycopg

    with open_store(pg_url) as store:
        _, (low,) = store.submit([_new_task(0)], run=NewRun(app=QUEUE, name="low"))
        _, (high,) = store.submit(
            [NewTask(name="storm", queue=QUEUE, args=serde.dumps([[1], {}]), priority=5)],
            run=NewRun(app=QUEUE, name="high"),
        )
        node = store.register_node(
            name="n", host="test", pid=1, queue=QUEUE, slots=2, mode="thread", capabilities=[]
        )
        with psycopg.connect(pg_url) as holder:
            holder.execute("SELECT id FROM tasks WHERE id = %s FOR SHARE", (high,))
            _, claimed = store.exchange(node, [], queue=QUEUE, claim=2, lease_ttl=30, policy=policy)
            assert [t.id for t in claimed] == ([] if policy is None else [low])
            holder.rollback()
        _, claimed = store.exchange(node, [], queue=QUEUE, claim=2, lease_ttl=30, policy=policy)
        assert [t.id for t in claimed] == ([high, low] if policy is None else [high])
