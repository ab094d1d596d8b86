"""The chaos checker (RELIABILITY.md §4.1, checker 1): :func:`snapshot` reads
the final task rows, and :func:`account`, a pure function over the submitted
ids, those rows and the executions, returns the queue-accounting figures
(submitted, completed, lost, duplicated, unexpected, executions,
max_exec_per_task, fenced_rejections, ...); :func:`report` prints them.
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from accord import serde
from accord.store.base import Store
from support.recorder import Execution, Fault


# -- final rows -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Row:
    """A task's final row in the store, with its result decoded."""

    id: int
    run_id: int
    name: str
    state: str
    fence: int
    attempts: int
    max_attempts: int
    result: Any
    error: str | None
    error_type: str | None


def snapshot(store: Store, run_ids: Iterable[int]) -> list[Row]:
    """Every task row of the given runs, read through the store's API."""
    rows: list[Row] = []
    for run_id in run_ids:
        infos = store.tasks(run_id)
        results = {r.id: r for r in store.results([t.id for t in infos])}
        for t in infos:
            raw = results[t.id].result
            rows.append(
                Row(
                    id=t.id,
                    run_id=t.run_id,
                    name=t.name,
                    state=t.state.value,
                    fence=t.fence,
                    attempts=t.attempts,
                    max_attempts=t.max_attempts,
                    result=serde.loads(raw) if raw is not None else None,
                    error=t.error,
                    error_type=t.error_type,
                )
            )
    return rows


# -- the checker ------------------------------------------------------------
def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# How long after its node a slot may still start a task it had been sent.
SLOT_DEATH_S = 0.5


def hits(executions: Sequence[Execution], faults: Sequence[Fault]) -> dict[int, int]:
    """For each task, how many of its executions a fault hit: the execution
    ran on the faulted node (its slot's parent) and started before the fault,
    or never returned (a slot dies a moment after its node: it may start a
    task already in its pipe just after the fault was logged). A fault that
    ``blocks`` also hits the executions that ran while it lasted."""
    out: dict[int, int] = defaultdict(int)
    for e in executions:
        if any(f.pid == e.ppid and _hit(e, f) for f in faults):
            out[e.task_id] += 1
    return dict(out)


def _hit(e: Execution, f: Fault) -> bool:
    if e.end is None or e.start <= f.start + SLOT_DEATH_S:
        return True
    return f.blocks and f.end is not None and e.start <= f.end + SLOT_DEATH_S


def reclaim_gaps(executions: Sequence[Execution], faults: Sequence[Fault]) -> list[float]:
    """For each execution a fault cut short, the seconds from the fault to
    the start of the next execution of the same task."""
    by_task: dict[int, list[Execution]] = defaultdict(list)
    for e in executions:
        by_task[e.task_id].append(e)
    gaps = []
    for runs in by_task.values():
        runs.sort(key=lambda e: e.start)
        for e, nxt in itertools.pairwise(runs):
            cut = [f for f in faults if f.pid == e.ppid and e.start <= f.start <= nxt.start]
            if cut:
                gaps.append(nxt.start - min(f.start for f in cut))
    return gaps


def account(
    submitted: Iterable[int],
    rows: Sequence[Row],
    executions: Sequence[Execution] | None,
    *,
    expected: Mapping[int, Any] | None = None,
    faults: Sequence[Fault] = (),
    fenced_rejections: int = 0,
) -> dict[str, Any]:
    """Queue accounting (RELIABILITY.md §4.1, checker 1). Pure.

    - ``submitted``: ids of the acknowledged submissions (tasks expected to
      succeed); ``rows``: the final rows of their runs; ``executions``: what
      the recorder saw (None: not recorded); ``expected``: task id -> the
      ``value`` its result must carry; ``faults``: the fault log.
    - ``lost``: a submitted task with no row, or one never finished.
    - ``duplicated``: a task whose recorded result is not the work of exactly
      one current attempt: the result names another task or another fence
      than the row's final one (a stale attempt's completion was accepted),
      no recorded execution of that fence returned it, one fence started more
      than once, or its key was recorded as the result of another row too;
      also a wrong value. Every reason is listed in ``violations``.
    - ``unexpected``: rows or executions of tasks nobody submitted.
    - ``excess_executions``: tasks run more than ``1 + faults that hit them``.
    """
    ids = list(dict.fromkeys(submitted))
    id_set = set(ids)
    by_id = {r.id: r for r in rows}
    violations: list[str] = []
    lost: list[int] = []
    failed: list[int] = []
    bad: set[int] = set()
    execs = list(executions or [])
    per_task = Counter(e.task_id for e in execs)
    per_fence = Counter((e.task_id, e.fence) for e in execs)
    returned = {(e.task_id, e.fence): e for e in execs if e.end is not None}
    keys: dict[Any, list[int]] = defaultdict(list)

    for task_id in ids:
        row = by_id.get(task_id)
        if row is None:
            lost.append(task_id)
            violations.append(f"task {task_id}: acknowledged but has no row")
            continue
        if row.state in ("pending", "ready", "running"):
            lost.append(task_id)
            violations.append(f"task {task_id}: never finished (state {row.state})")
            continue
        if row.state != "succeeded":
            failed.append(task_id)
            continue
        res = row.result
        if not isinstance(res, dict) or "fence" not in res:
            bad.add(task_id)
            violations.append(f"task {task_id}: result {res!r} does not name its attempt")
            continue
        if res.get("task_id") != task_id:
            bad.add(task_id)
            violations.append(f"task {task_id}: result made by task {res.get('task_id')}")
        if res["fence"] != row.fence:
            bad.add(task_id)
            violations.append(
                f"task {task_id}: result from fence {res['fence']}, final fence {row.fence}"
            )
        if executions is not None and (task_id, res["fence"]) not in returned:
            bad.add(task_id)
            violations.append(f"task {task_id}: no recorded execution of fence {res['fence']}")
        if expected is not None and task_id in expected and res.get("value") != expected[task_id]:
            bad.add(task_id)
            violations.append(
                f"task {task_id}: value {res.get('value')!r}, expected {expected[task_id]!r}"
            )
    for row in rows:  # every row, also unexpected ones: a key recorded twice is a duplicate
        if row.state == "succeeded" and isinstance(row.result, dict) and "key" in row.result:
            keys[_hashable(row.result["key"])].append(row.id)
    for key, owners in keys.items():
        if len(owners) > 1:
            bad.update(owners[1:])
            violations.append(f"key {key!r}: result recorded by tasks {owners}")
    for (task_id, fence), n in per_fence.items():
        if n > 1:
            bad.add(task_id)
            violations.append(f"task {task_id}: fence {fence} started {n} times")

    unexpected = sorted({r.id for r in rows if r.id not in id_set})
    unexpected_execs = sorted({e.task_id for e in execs if e.task_id not in id_set})
    for task_id in unexpected:
        violations.append(f"task {task_id}: in the store but never submitted")
    for task_id in unexpected_execs:
        if task_id not in by_id:
            violations.append(f"task {task_id}: executed but never submitted")

    hit = hits(execs, faults)
    excess = sorted(t for t, n in per_task.items() if n > 1 + hit.get(t, 0))
    for task_id in excess:
        violations.append(
            f"task {task_id}: {per_task[task_id]} executions, {hit.get(task_id, 0)} faults hit it"
        )
    gaps = reclaim_gaps(execs, faults)
    return {
        "submitted": len(ids),
        "completed": sum(1 for t in ids if t in by_id and by_id[t].state == "succeeded"),
        "failed": len(failed),
        "lost": len(lost),
        "duplicated": len(bad),
        "unexpected": len(set(unexpected) | set(unexpected_execs)),
        "executions": len(execs) if executions is not None else None,
        "max_exec_per_task": max(per_task.values(), default=0),
        "exec_histogram": dict(sorted(Counter(per_task.values()).items())),
        "excess_executions": len(excess),
        "faults": len(faults),
        "fenced_rejections": fenced_rejections,
        "reclaim_gap_p50_s": _round(statistics.median(gaps)) if gaps else None,
        "reclaim_gap_p99_s": _round(_percentile(gaps, 0.99)),
        "reclaim_gap_max_s": _round(max(gaps, default=None)),
        "invariant_violations": len(violations),
        "violations": violations[:20],
        "lost_ids": lost[:20],
        "duplicated_ids": sorted(bad)[:20],
    }


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else value


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def report(scenario: str, figures: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """Print the scenario's one-line JSON report (seen with ``pytest -s``)."""
    out = {"scenario": scenario, **figures, **extra}
    print(json.dumps(out, default=str))
    return out
