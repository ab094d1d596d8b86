"""Q6: an SQLite writer SIGKILLed while it holds the write lock.

The kernel drops the dead process's file locks; its uncommitted pages (some
already spilled into the WAL) are ignored by every reader and overwritten by
the next writer. Nodes and clients wait at most the busy timeout meanwhile.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import accord
from accord.store import SqliteStore
from accord.tasks.handles import Handle
from apps import chaos
from support.checker import account, report, snapshot
from support.cluster import Cluster
from support.common import wait_for
from support.recorder import Fault

pytestmark = pytest.mark.chaos

LEASE = 2.0
HOLD = 1.0  # seconds the doomed writer holds the lock before it is killed

# Takes the write lock, writes enough rows that the page cache spills
# uncommitted pages into the WAL, says so, and waits to be killed.
LOCKER = """
import os, sqlite3, sys, time
path, ready = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(path, isolation_level=None, timeout=30)
conn.execute("PRAGMA cache_size=8")
conn.execute("BEGIN IMMEDIATE")
with open(ready + ".locked", "w") as f:
    f.write(repr(time.monotonic()))  # one clock for every process of the machine
for i in range(1500):
    conn.execute(
        "INSERT INTO events (at, kind, detail) VALUES (?, 'chaos_locker', ?)",
        (time.time(), "x" * 2000),
    )
with open(ready + ".tmp", "w") as f:
    f.write(str(os.path.getsize(path + "-wal")))
os.rename(ready + ".tmp", ready)
time.sleep(600)
"""


class Client:
    """Submits one task after another from a thread, timing each submit."""

    def __init__(self, app: accord.App) -> None:
        self.app = app
        self.acked: list[tuple[int, Handle[dict[str, Any]], float, float]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        key = 0
        while not self._stop.is_set():
            invoked = time.monotonic()
            try:
                handle = chaos.work.submit(key, 0.0)
            except Exception as exc:  # counted: the scenario expects none
                self.errors.append(repr(exc))
            else:
                self.acked.append((key, handle, invoked, time.monotonic()))
            key += 1
            time.sleep(0.02)

    def __enter__(self) -> Client:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


@pytest.mark.sqlite_only
@pytest.mark.timeout(90)
def test_q6_writer_killed_holding_the_lock(tmp_path: Path, app: accord.App) -> None:
    """Q6: a process SIGKILLed inside ``BEGIN IMMEDIATE`` (with uncommitted
    pages in the WAL) while two nodes claim and a client submits. Nobody
    waits longer than the busy timeout, nothing acknowledged is lost, the
    dead writer's rows never appear, ``integrity_check`` is ok."""
    started = time.monotonic()
    store = app.store
    assert isinstance(store, SqliteStore)
    db = store.path
    ready = tmp_path / "locker.ready"
    with Cluster(tmp_path, app.store_url, n=2, slots=2, lease=LEASE) as cluster:
        cluster.start()
        cluster.wait_ready(store)
        with Client(app) as client:
            wait_for(lambda: len(client.acked) >= 10, 20, "first submits")
            with open(tmp_path / "locker.log", "wb") as log:
                locker = subprocess.Popen(
                    [sys.executable, "-c", LOCKER, db, str(ready)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                wait_for(ready.exists, 30, "the locker taking the lock")
                # From BEGIN IMMEDIATE, not from "ready": writing its rows takes
                # the locker a while, and the nodes wait for the lock all along.
                locked_at = float(Path(f"{ready}.locked").read_text())
                time.sleep(HOLD)
                killed_at = time.monotonic()
                locker.send_signal(signal.SIGKILL)
            finally:
                locker.kill()
                code = locker.wait(10)
            # Holding the store for half a lease is a fault for every node: one
            # that cannot heartbeat for lease - interval stops its attempts
            # (they run again), so each may hit the tasks then running.
            held = [
                Fault("store_locked", i, cluster.pid(i), locked_at, killed_at, blocks=True)
                for i in range(cluster.n)
            ]
            acked_before = len(client.acked)
            wait_for(lambda: len(client.acked) >= acked_before + 10, 30, "submits after the kill")
        handles = [h for _, h, _, _ in client.acked]
        for handle in handles:
            handle.result(timeout=60)
        rows = snapshot(store, sorted({store.task(h.id).run_id for h in handles}))
        executions = cluster.executions()
        alive = [cluster.alive(i) for i in range(cluster.n)]
        unavailable = cluster.count_in_logs("store unavailable")
        fenced = cluster.fenced_rejections()
    latencies = [done - invoked for _, _, invoked, done in client.acked]
    blocked = [done - invoked for _, _, invoked, done in client.acked if invoked < killed_at < done]
    after = [e.end for e in executions if e.end is not None and e.end > killed_at]
    figures = account(
        [h.id for h in handles],
        rows,
        executions,
        expected={h.id: chaos.square(k) for k, h, _, _ in client.acked},
        faults=held,
        fenced_rejections=fenced,
    )
    with sqlite3.connect(db) as conn:
        leftovers = conn.execute(
            "SELECT count(*) FROM events WHERE kind = 'chaos_locker'"
        ).fetchone()[0]
    conn.close()
    integrity = store.integrity_check()
    report(
        "Q6",
        figures,
        client_errors=len(client.errors),
        wal_bytes_when_killed=int(ready.read_text()),
        held_s=round(killed_at - locked_at, 3),
        max_submit_latency_s=round(max(latencies), 3),
        blocked_submit_s=round(max(blocked, default=0.0), 3),
        recovery_time_s=round(min(after) - killed_at, 3) if after else None,
        node_store_errors=unavailable,
        integrity=integrity,
        wall_s=round(time.monotonic() - started, 2),
    )
    assert code == -signal.SIGKILL
    assert integrity == "ok"
    assert leftovers == 0, "rows of the killed, uncommitted transaction are visible"
    assert client.errors == []
    assert max(latencies) < store.busy_timeout
    assert all(alive), "a node died"
    assert unavailable == 0, "a node saw the store as unavailable"
    assert after, "no task finished after the writer died"
    assert figures["completed"] == figures["submitted"] == len(handles)
    assert figures["lost"] == figures["duplicated"] == figures["unexpected"] == 0
    assert figures["invariant_violations"] == 0, figures["violations"]
