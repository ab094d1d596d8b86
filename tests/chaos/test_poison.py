"""Q13: poison tasks. Attempts stop at ``max_attempts`` (retries + 1).

A task whose slot process dies (``os._exit``, SIGSEGV) fails that attempt
with the exit reason; a task that kills its own node is bounded through its
lease expiring, which counts as an attempt. Either way the task ends
``failed`` with the reason, and nothing delivers it again.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest

import accord
from accord.store.records import LEASE_LOSSES
from apps import chaos
from support.checker import report
from support.cluster import Cluster

pytestmark = pytest.mark.chaos

LEASE = 1.0


@pytest.mark.timeout(60)
def test_q13_crashing_task_stops_at_max_attempts(tmp_path: Path, app: accord.App) -> None:
    """Q13: ``os._exit(1)`` and a segfault on every attempt (retries=2): three
    executions each, then ``failed`` with ``WorkerCrashed`` and the exit
    reason; no further delivery; the nodes stay up."""
    started = time.monotonic()
    store = app.store
    with Cluster(tmp_path, app.store_url, n=2, slots=1, lease=LEASE) as cluster:
        cluster.start()
        cluster.wait_ready(store)
        exiting = chaos.crash_exit.submit("exit")
        crashing = chaos.segfault.submit("segv")
        for handle in (exiting, crashing):
            with pytest.raises(accord.TaskFailed):
                handle.result(timeout=30)
        settled = cluster.executions()
        time.sleep(1.5)  # three idle claim polls: would a dead-lettered task come back?
        later = cluster.executions()
        alive = [cluster.alive(i) for i in range(cluster.n)]
    runs = Counter(e.task_id for e in later)
    infos = {h.id: store.task(h.id) for h in (exiting, crashing)}
    report(
        "Q13-crash",
        {
            "executions": len(later),
            "max_exec_per_task": max(runs.values()),
            "dead_lettered": sum(i.state is accord.TaskState.FAILED for i in infos.values()),
            "errors": {i.name: i.error for i in infos.values()},
        },
        wall_s=round(time.monotonic() - started, 2),
    )
    assert len(later) == len(settled), "a failed task was delivered again"
    assert all(alive), "a crashing task took its node down"
    for handle, reason in ((exiting, "exited with code 1"), (crashing, "SIGSEGV")):
        info = infos[handle.id]
        assert info.state is accord.TaskState.FAILED
        assert info.max_attempts == 3
        assert info.attempts == 3
        assert runs[handle.id] == 3
        assert info.error_type == "WorkerCrashed"
        assert info.error is not None and reason in info.error


@pytest.mark.timeout(60)
def test_q13_task_that_kills_its_node_is_bounded_by_lease_expiry(
    tmp_path: Path, app: accord.App
) -> None:
    """Q13: a task that SIGKILLs its own node, on four nodes: each time the
    attempt's lease expires (lease losses do not use up retries) until the
    task has lost it LEASE_LOSSES (3) times; then it fails with
    ``LeaseExpired`` and the fourth node survives."""
    started = time.monotonic()
    store = app.store
    with Cluster(tmp_path, app.store_url, n=4, slots=1, lease=LEASE) as cluster:
        cluster.start()
        cluster.wait_ready(store)
        handle = chaos.kill_node.submit("kill")
        with pytest.raises(accord.TaskFailed) as failed:
            handle.result(timeout=30)
        settled = cluster.executions()
        time.sleep(1.5)
        later = cluster.executions()
        codes = [code for _, _, code in cluster.exit_codes()]
    info = store.task(handle.id)
    kinds = Counter(e.kind for e in store.events(info.run_id) if e.task_id == handle.id)
    report(
        "Q13-kill-node",
        {
            "executions": len(later),
            "dead_lettered": int(info.state is accord.TaskState.FAILED),
            "nodes_killed": codes.count(-signal.SIGKILL),
            "lease_expired": kinds["lease_expired"],
            "error": info.error,
        },
        wall_s=round(time.monotonic() - started, 2),
    )
    assert "LeaseExpired" in str(failed.value)
    assert info.state is accord.TaskState.FAILED
    assert info.error_type == "LeaseExpired"
    assert info.error is not None and "lost its lease 3 times" in info.error
    assert len(settled) == len(later) == LEASE_LOSSES
    assert kinds["lease_expired"] == LEASE_LOSSES
    assert codes.count(-signal.SIGKILL) == LEASE_LOSSES and codes.count(None) == 1
    # The task's failure by lease expiry ended its run too.
    assert store.run(info.run_id).state == "failed"
