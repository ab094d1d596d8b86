"""A node never believes in a lease longer than the store grants it.

The store extends leases from the heartbeat transaction's start; a heartbeat
slowed by a lock returns seconds later. The node must count its lease from
before the call, or it would go on running attempts whose leases have run
out (and that another node may already run again).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import accord
from accord import TaskState
from apps import sched as s
from support.common import bind, sql

LEASE = 6.0
BEAT = 1.0
HOLD = 3.0  # how long the heartbeat is held up by a lock (it waits HOLD - BEAT or more)


@pytest.fixture
def app(store_url: str) -> Iterator[accord.App]:
    yield bind(s.app, store_url)
    s.app.close()


@contextmanager
def node_row_locked(store_url: str, node_id: int) -> Iterator[None]:
    """Hold a lock that the node's heartbeat must wait for."""
    if store_url.startswith("sqlite:"):
        conn = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # the database's write lock
        try:
            yield
        finally:
            conn.execute("COMMIT")
            conn.close()
        return
    import psycopg

    with psycopg.connect(store_url) as pg:
        pg.execute("SELECT 1 FROM nodes WHERE id = %s FOR UPDATE", (node_id,))
        yield
        pg.commit()


def wait_for_running(app: accord.App, task_id: int) -> None:
    deadline = time.monotonic() + 30
    while app.store.task(task_id).state is not TaskState.RUNNING:
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.02)


def test_a_slow_heartbeat_does_not_extend_the_nodes_belief(app: accord.App, store_url: str) -> None:
    node = app.node(mode="thread", slots=1, lease_ttl=LEASE, heartbeat=BEAT)
    node.start()
    try:
        handle = s.nap.submit("long", 3 * HOLD + 3)
        wait_for_running(app, handle.id)
        assert node.node_id is not None

        def overshoot() -> float:
            """How far the node's idea of its lease's end lies past the store's.

            The two are read one after the other; a heartbeat that lands
            between the reads would make the node look a beat ahead, so a
            sample is taken again until no heartbeat came between."""
            while True:
                believed = node._heartbeat_ok
                ((lease_end,),) = sql(
                    store_url, "SELECT lease_expires_at FROM tasks WHERE id = ?", (handle.id,)
                )
                store_left = lease_end - app.store.now()
                node_left = believed + node.lease_ttl - time.monotonic()
                if node._heartbeat_ok == believed:
                    return node_left - store_left

        with node_row_locked(store_url, node.node_id):
            time.sleep(HOLD)  # a heartbeat falls due and waits for the lock
        worst = -LEASE
        # The held heartbeat returns now; sample until two more have passed.
        end = time.monotonic() + 2.5 * BEAT
        while time.monotonic() < end:
            worst = max(worst, overshoot())
            time.sleep(0.01)
        assert worst < 0.5, f"the node believed its lease ran {worst:.2f} s past the store's end"
        assert handle.result(timeout=60)["key"] == "long"
    finally:
        node.stop()
        node.join(30)
