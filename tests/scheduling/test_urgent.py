"""Urgent work under a backlog, with the node and the client in separate
processes as users run them: urgent tasks overtake the backlog the node has
already prefetched, however many of them arrive and in how many claims.

The checks are orders of events (each attempt records its own start; the
store records each claim), never times: they hold on a loaded machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import accord
from apps import sched as s
from support import TESTS, bind, subprocess_env


@pytest.fixture
def app(store_url: str) -> Iterator[accord.App]:
    yield bind(s.app, store_url)
    s.app.close()


def test_urgent_tasks_from_another_process_overtake_the_prefetched_backlog(
    app: accord.App, store_url: str, tmp_path: Path
) -> None:
    """A node of 2 process slots works through 600 low-priority 5 ms tasks,
    prefetching several ahead; the test process submits 12 priority-10 tasks.
    Once an urgent task has started, no backlog task may start before every
    urgent task has: urgent work
    goes ahead of the local queue, all of it, though more of it is ready
    than one urgent claim takes and the first one claimed already heads the
    queue."""
    folder = str(tmp_path / "records")
    os.mkdir(folder)
    backlog = s.nap.with_options(priority=0).map([(i, 0.005, folder) for i in range(600)])
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "accord", "worker", "--app", "apps.sched:app", "--slots", "2"],
            env=subprocess_env(store_url),
            cwd=TESTS,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # The node is up and busy with the backlog, its prefetch measured.
        backlog[60].result(timeout=120)
        # In one commit: from its first urgent claim on, the node could
        # know of all of them.
        urgent = s.nap.with_options(priority=10).map([(f"u{i}", 0.005, folder) for i in range(12)])
        for handle in urgent:
            handle.result(timeout=120)
    finally:
        worker.terminate()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, 9)
            worker.wait(10)
    starts = {
        entry["task_id"]: entry["wall"]
        for entry in s.read_records(folder)
        if entry["ev"] == "start"
    }
    urgent_ids = {h.id for h in urgent}
    first_urgent_start = min(starts[i] for i in {h.id for h in urgent})
    last_urgent_start = max(starts[i] for i in urgent_ids)
    overtook = sorted(
        task_id
        for task_id, at in starts.items()
        if task_id not in urgent_ids and first_urgent_start < at < last_urgent_start
    )
    assert overtook == [], (len(overtook), log.read_text()[-2000:])
