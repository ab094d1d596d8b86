"""Q9, clock skew and jumps on PostgreSQL (RELIABILITY.md Q9, G3).

On PostgreSQL every transaction reads the server's ``now()``, so a node's
wrong clock must neither let it steal leases early nor keep them too long.
Three one-node clusters share one store: one node with a correct clock, one
whose wall clock is 90 s behind, and one whose wall clock jumps 10 minutes
ahead while it runs tasks. The clocks are moved with the PyPI package
``libfaketime`` (its vendored ``libfaketime.so.1`` in ``LD_PRELOAD``;
monotonic time is left alone, as Python's sleeps and waits need it).
Tasks last longer than the lease, so they live on heartbeats: no lease
may expire and no completion may be refused while nothing is faulted.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from apps import chaos
from support.checker import account, report, snapshot
from support.cluster import Cluster, chaos_app
from support.common import sql, wait_for
from support.recorder import Execution

pytestmark = pytest.mark.chaos

LEASE = 2.0
TASKS = 24
JUMP_S = 600


def _libfaketime() -> Path | None:
    spec = importlib.util.find_spec("libfaketime")
    if spec is None or spec.origin is None:
        return None
    lib = Path(spec.origin).parent / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"
    return lib if lib.exists() else None


def per_task(executions: list[Execution], task_id: int) -> int:
    return sum(1 for e in executions if e.task_id == task_id)


def _skews(record_dir: Path, base: float) -> dict[int, list[tuple[float, float]]]:
    """Per process, ``(monotonic t, wall-clock skew)`` of each recorded line:
    how far its ``time.time()`` was from this process's, at the same moment."""
    out: dict[int, list[tuple[float, float]]] = {}
    for path in record_dir.glob("exec-*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            out.setdefault(e["ppid"], []).append((e["t"], e["wall"] - e["t"] - base))
    return out


@pytest.mark.timeout(90)
def test_q9_clock_skew_and_jump_on_postgres(tmp_path: Path, pg_url: str) -> None:
    """Q9 (PostgreSQL): 24 tasks of 2.2-3.0 s (longer than the 2 s lease) on
    three two-slot nodes: one on time, one 90 s behind, one jumping +10 min
    3 s into the run. early_steals = 0 (no lease taken over while its
    holder's last heartbeat, by server time, was less than a lease ago), no
    task ran again without a steal or a hand-back by its self-fenced node,
    every task has one result, and both
    skewed nodes ran tasks (the jumper also after its jump)."""
    lib = _libfaketime()
    if lib is None:
        pytest.skip("needs the PyPI package libfaketime (pip install 'libfaketime>=3.0.1')")
    started = time.monotonic()
    base = time.time() - time.monotonic()
    stamp = tmp_path / "faketime-jump"
    stamp.write_text("+0\n")
    common = {"LD_PRELOAD": str(lib), "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    envs = {
        "ontime": {},
        "behind": {**common, "FAKETIME": "-90s"},
        "jumper": {**common, "FAKETIME_TIMESTAMP_FILE": str(stamp), "FAKETIME_NO_CACHE": "1"},
    }
    clusters: dict[str, Cluster] = {}
    with chaos_app(pg_url) as app:
        store = app.store
        try:
            for name, env in envs.items():
                (tmp_path / name).mkdir()
                clusters[name] = Cluster(
                    tmp_path / name, pg_url, n=1, slots=2, lease=LEASE, env=env
                )
                clusters[name].start()
            for cluster in clusters.values():
                cluster.wait_ready(store, timeout=30)
            # Every heartbeat of every node, as the server stamped it.
            beats: dict[int, list[float]] = defaultdict(list)
            watching = threading.Event()

            def watch() -> None:
                while not watching.wait(0.03):
                    for n in store.nodes():
                        seen = beats[n.pid]
                        if not seen or seen[-1] != n.heartbeat_at:
                            seen.append(n.heartbeat_at)

            watcher = threading.Thread(target=watch, name="heartbeats", daemon=True)
            watcher.start()
            handles = chaos.work.map([(k, 2.2 + 0.8 * (k % 5) / 4) for k in range(TASKS)])
            run_id = store.task(handles[0].id).run_id
            time.sleep(3.0)
            stamp.write_text(f"+{JUMP_S}s\n")
            jumped = time.monotonic()
            wait_for(lambda: store.run_state(run_id) != "running", 60, "the run ended", 0.1)
            watching.set()
            watcher.join(10)
            steals = sql(
                pg_url, "SELECT at, task_id FROM events WHERE kind = 'lease_expired' ORDER BY at"
            )
            # A node that went too long without a heartbeat answered stops its
            # attempts and hands them back (self-fencing): they run again.
            handed_back = Counter(
                r[0] for r in sql(pg_url, "SELECT task_id FROM events WHERE kind = 'released'")
            )
            rows = snapshot(store, [run_id])
            executions = [e for c in clusters.values() for e in c.executions()]
            fenced = sum(c.fenced_rejections() for c in clusters.values())
            pids = {name: c.pid(0) for name, c in clusters.items()}
            skews = {
                name: _skews(c.record_dir, base).get(pids[name], []) for name, c in clusters.items()
            }
        finally:
            for cluster in clusters.values():
                cluster.close()
    figures = account(
        [h.id for h in handles],
        rows,
        executions,
        expected={h.id: chaos.square(k) for k, h in enumerate(handles)},
        fenced_rejections=fenced,
    )
    ran = {name: sum(1 for e in executions if e.ppid == pid) for name, pid in pids.items()}
    names = {pid: name for name, pid in pids.items()}
    final = {r.id: r.fence for r in rows}
    # Attempts that lost their task: which node held them, when (s into the run).
    lost_from = [
        (names.get(e.ppid), round(e.start - started, 2), e.end and round(e.end - started, 2))
        for e in executions
        if e.fence != final.get(e.task_id)
    ]
    after_jump = sum(1 for e in executions if e.ppid == pids["jumper"] and e.start > jumped + 0.5)
    seen = {name: sorted({round(s) for _, s in values}) for name, values in skews.items() if values}
    # A steal is early if the holder's last heartbeat before it (server
    # time) was less than a lease ago: it was taken over while heartbeating.
    early, late = [], []
    for at, task_id in steals:
        holders = {e.ppid for e in executions if e.task_id == task_id and e.fence != final[task_id]}
        for pid in holders:
            last = max((b for b in beats.get(pid, []) if b <= at), default=None)
            since = None if last is None else round(at - last, 3)
            (early if since is not None and since < LEASE else late).append(
                (names.get(pid), task_id, since)
            )
    stolen = Counter(task_id for _, task_id in steals)
    excess = {
        e.task_id
        for e in executions
        if per_task(executions, e.task_id) > 1 + stolen[e.task_id] + handed_back[e.task_id]
    }
    gaps = {
        names.get(pid, str(pid)): round(
            max((b - a for a, b in itertools.pairwise(t)), default=0), 2
        )
        for pid, t in beats.items()
    }
    figures.update(
        early_steals=len(early),
        late_heartbeat_steals=len(late),
        steals=early + late,
        handed_back=sum(handed_back.values()),
        excess_executions=len(excess),
        max_heartbeat_gap_s=gaps,
        ran_per_node=ran,
        jumper_ran_after_jump=after_jump,
        lost_from=lost_from,
        jumped_at_s=round(jumped - started, 2),
        observed_skew_s=seen,
        lease_s=LEASE,
        wall_s=round(time.monotonic() - started, 2),
    )
    report("Q9", figures)
    # The faults really were there: the nodes' tasks saw their clocks moved.
    assert any(abs(s + 90) < 5 for s in seen.get("behind", [])), seen
    assert any(abs(s - JUMP_S) < 5 for s in seen.get("jumper", [])), seen
    assert all(n > 0 for n in ran.values()), f"a node ran nothing: {ran}"
    assert after_jump > 0, "the jumper ran nothing after its jump"
    assert not early, f"leases taken over while their holder heartbeated: {early}"
    assert figures["lost"] == figures["duplicated"] == figures["unexpected"] == 0
    # A task runs again only after a steal (a heartbeat really missed: see
    # late_heartbeat_steals, and max_heartbeat_gap_s for how late they came)
    # or after its node stopped it and handed it back.
    assert not excess, f"tasks run again without a steal or a hand-back: {sorted(excess)}"
    violations = [v for v in figures["violations"] if "faults hit it" not in v]
    assert not violations, violations
