"""Q3 (process faults only): a zombie node, SIGSTOPped for longer than its lease.

While it is stopped its lease expires and another node runs the task to the
end. When it wakes, whatever it tries with the old fence is refused: its
heartbeat no longer lists the task (it stops the attempt) or its completion
is refused. Either way it logs the rejection and the recorded result stays
the other node's.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import accord
from apps import chaos
from support.checker import account, report, snapshot
from support.cluster import Cluster
from support.common import wait_for

pytestmark = pytest.mark.chaos

LEASE = 1.0


@pytest.mark.timeout(60)
def test_q3_zombie_node_is_fenced_after_sigcont(tmp_path: Path, app: accord.App) -> None:
    """Q3: SIGSTOP the holder (node and slot) 0.3 s into a 2 s task, keep it
    stopped until another node has finished the task (at least 1.5 x the
    lease), then SIGCONT: fenced_rejections >= 1, one recorded result (the
    second attempt's), two executions, and the zombie serves on."""
    started = time.monotonic()
    store = app.store
    with Cluster(tmp_path, app.store_url, n=2, slots=1, lease=LEASE) as cluster:
        cluster.start()
        cluster.wait_ready(store)
        handle = chaos.work.submit(5, 2.0)
        first = cluster.wait_executions(1, task_id=handle.id)[0]
        zombie = cluster.index_of(first.ppid)
        time.sleep(max(0.0, first.start + 0.3 - time.monotonic()))
        pause = cluster.pause(zombie)
        try:
            value = handle.result(timeout=30)
        except TimeoutError:
            # Say where it stood (a pause that caught the holder inside a
            # write transaction would show as the other node's lock waits).
            task = store.task(handle.id)
            pytest.fail(
                f"not finished in 30 s: {task.state}, fence {task.fence}\n{cluster.logs()[-4000:]}"
            )
        time.sleep(max(0.0, pause.start + 1.5 * LEASE - time.monotonic()))
        cluster.resume(zombie)
        wait_for(cluster.fenced_rejections, 15, "the zombie's fenced rejection")
        time.sleep(0.5)  # let it settle: nothing more may change
        info = store.task(handle.id)
        executions = cluster.executions()
        figures = account(
            [handle.id],
            snapshot(store, [info.run_id]),
            executions,
            expected={handle.id: chaos.square(5)},
            faults=[pause],
            fenced_rejections=cluster.fenced_rejections(),
        )
        alive = cluster.alive(zombie)
    second = [e for e in executions if e.task_id == handle.id][1]
    report(
        "Q3",
        figures,
        paused_s=round((pause.end or 0) - pause.start, 3),
        zombie_attempt_returned=next(e for e in executions if e.fence == first.fence).end
        is not None,
        wall_s=round(time.monotonic() - started, 2),
    )
    assert alive, "the zombie node died instead of serving on"
    assert figures["fenced_rejections"] >= 1
    assert figures["executions"] == 2
    assert value["fence"] == second.fence == info.fence > first.fence
    assert handle.result(timeout=1) == value
    assert figures["lost"] == figures["duplicated"] == 0
    assert figures["invariant_violations"] == 0, figures["violations"]
