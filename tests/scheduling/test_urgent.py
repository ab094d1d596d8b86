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
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import accord
from apps import sched as s
from support.common import TESTS, bind, subprocess_env


@pytest.fixture
def app(store_url: str) -> Iterator[accord.App]:
    yield bind(s.app, store_url)
    s.app.close()


def test_urgent_tasks_from_another_process_overtake_the_prefetched_backlog(
    app: accord.App, store_url: str, tmp_path: Path
) -> None:
    """A node of 2 process slots works through 600 low-priority 5 ms tasks,
    prefetching several ahead; the test process submits 12 priority-10 tasks.
    Once an urgent task has started, no backlog task may hold a slot that
    urgent work waits for: none starts and ends while an urgent task has yet
    to start. Urgent work goes ahead of the local queue, all of it, though
    more of it is ready than one urgent claim takes and the first one claimed
    already heads the queue. (A backlog task sent to a free slot beside the
    last urgent one may start a moment before it: two processes.)"""
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
    records = s.read_records(folder)
    starts = {entry["task_id"]: entry["wall"] for entry in records if entry["ev"] == "start"}
    ends = {entry["task_id"]: entry["wall"] for entry in records if entry["ev"] == "end"}
    urgent_ids = {h.id for h in urgent}
    first_urgent_start = min(starts[i] for i in urgent_ids)
    last_urgent_start = max(starts[i] for i in urgent_ids)
    overtook = sorted(
        task_id
        for task_id, at in starts.items()
        if task_id not in urgent_ids
        and first_urgent_start < at
        and ends.get(task_id, float("inf")) < last_urgent_start
    )
    assert overtook == [], (len(overtook), log.read_text()[-2000:])


WAITER = """
import sys, time
from accord.store import open_store
store = open_store(sys.argv[1])
store.changed()
store.wait_changed(0.001)  # binds this waiter's wake-up (SQLite) before it says so
print("waiting", flush=True)
started = time.monotonic()
woke = False
while not woke and time.monotonic() - started < 60.0:
    # (A wait may end early without news, e.g. when a listener connects.)
    woke = store.wait_changed(60.0 - (time.monotonic() - started))
print(woke, time.monotonic() - started, flush=True)
"""


def test_a_commit_wakes_a_waiter_in_another_process_at_once(
    app: accord.App, store_url: str
) -> None:
    """A result waiter in another process is woken by the commit itself, not
    at the end of its wait: ``wait_changed(60)`` returns True long before 60
    s. (On SQLite it used to sleep its whole timeout, so the client's poll
    interval set the round trip; on PostgreSQL a waiter that began before its
    listener had connected slept its whole timeout.)"""
    with subprocess.Popen(
        [sys.executable, "-c", WAITER, store_url],
        env=subprocess_env(store_url),
        cwd=TESTS,
        stdout=subprocess.PIPE,
        text=True,
    ) as waiter:
        try:
            assert waiter.stdout is not None
            assert waiter.stdout.readline().strip() == "waiting"
            # Let it get well into its wait, so that the commit lands during it
            # (a commit before would be seen by its first look, fix or not).
            time.sleep(0.5)
            s.nap.submit("news")
            woke, took = waiter.stdout.readline().split()
        finally:
            waiter.kill()
    assert woke == "True"
    assert float(took) < 30.0, took  # well before its timeout: the commit woke it
