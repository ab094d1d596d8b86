"""Q15: SIGTERM to a node mid-task (a graceful stop).

The node stops claiming, lets running tasks finish for up to ``--grace``
seconds, then kills what still runs and hands it back at once: another node
starts it long before the lease would have expired. Nothing is lost, and a
released attempt does not count against the task's attempts.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import accord
from apps import chaos
from support.checker import account, report, snapshot
from support.cluster import Cluster

pytestmark = pytest.mark.chaos

# Long enough that a hand-back (release) and a lease expiry are far apart.
LEASE = 4.0


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("grace", "task_s"),
    [(10.0, 2.0), (12.0, 8.0), (0.0, 3.0), (0.5, 3.0)],
    ids=["grace-covers-task", "grace-longer-than-the-lease", "grace-0", "grace-shorter-than-task"],
)
def test_q15_sigterm_mid_task(tmp_path: Path, app: accord.App, grace: float, task_s: float) -> None:
    """Q15: SIGTERM 0.5 s into a task. With a grace that covers the task, it
    completes on its node (one execution) and the node exits 0, also when
    the task runs on for longer than a lease (the stopping node keeps
    heartbeating through its grace). With a
    shorter grace, the task is released when the grace ends and another node
    starts it within lease/2 of that (a lease expiry would take longer)."""
    started = time.monotonic()
    store = app.store
    with Cluster(tmp_path, app.store_url, n=2, slots=1, lease=LEASE, grace=grace) as cluster:
        cluster.start()
        cluster.wait_ready(store)
        handle = chaos.work.submit(3, task_s)
        first = cluster.wait_executions(1, task_id=handle.id)[0]
        victim = cluster.index_of(first.ppid)
        time.sleep(max(0.0, first.start + 0.5 - time.monotonic()))
        fault = cluster.term(victim)
        completes = grace >= task_s
        latency = None
        if not completes:
            second = cluster.wait_executions(2, task_id=handle.id, timeout=LEASE + 10)[1]
            latency = second.start - (fault.start + grace)
        code = cluster.wait_exit(victim, timeout=grace + 15)
        stopped = (fault.end or 0) - fault.start
        value = handle.result(timeout=30)
        info = store.task(handle.id)
        figures = account(
            [handle.id],
            snapshot(store, [info.run_id]),
            cluster.executions(),
            expected={handle.id: chaos.square(3)},
            faults=[fault],
            fenced_rejections=cluster.fenced_rejections(),
        )
    kinds = [e.kind for e in store.events(info.run_id) if e.task_id == handle.id]
    report(
        f"Q15-grace-{grace:g}",
        figures,
        release_latency_s=None if latency is None else round(latency, 3),
        node_stop_s=round(stopped, 3),
        lease_s=LEASE,
        wall_s=round(time.monotonic() - started, 2),
    )
    assert code == 0, cluster.logs()
    assert figures["completed"] == 1
    assert figures["lost"] == figures["duplicated"] == 0
    assert figures["invariant_violations"] == 0, figures["violations"]
    assert "lease_expired" not in kinds
    assert info.attempts == 1  # a hand-back is not an attempt
    if completes:
        assert figures["executions"] == 1
        assert value["fence"] == first.fence
        assert "released" not in kinds
    else:
        assert latency is not None
        assert figures["executions"] == 2
        assert value["fence"] == second.fence > first.fence
        assert second.ppid != first.ppid
        assert "released" in kinds
        assert latency < LEASE / 2, f"released {latency:.2f} s after the grace ended"
