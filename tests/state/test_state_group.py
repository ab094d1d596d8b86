"""Group commit across processes (SQLite's own machinery): a leader that dies
before or after its commit, and writers killed at random while they commit for
each other (that one runs on PostgreSQL too: acknowledged writes are never
lost there either, and none is applied twice)."""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from state_helpers import finish, spawn

import accord
from accord import serde
from accord.store.sqlite import SqliteStore
from accord.store.sqlite_group import DONE, PENDING, TAKEN
from accord.store.sqlite_state import (
    _decode_outcome,
    _decode_request,
    _encode_list,
    _encode_outcome,
    _encode_request,
    _TxnRequest,
)
from accord.store.state_base import KvPut
from support import sql


def _park(store: SqliteStore, key: str, value: int) -> tuple[int, int]:
    """Park a request as a writer of another process would."""
    request = _TxnRequest([], [KvPut(key, serde.dumps(value))], [], None, None)
    parked = store._commit_group().park(_encode_request(request))
    assert parked is not None
    return parked


@pytest.mark.sqlite_only
def test_a_leader_that_died_after_its_commit(app: accord.App) -> None:
    store = app.store
    assert isinstance(store, SqliteStore)
    group = store._commit_group()
    slot, ticket = _park(store, "st/orphan", 1)
    # The leader takes it, commits it with its outcome, and dies before writing back.
    with store._tx() as tx:
        number = tx.c.execute("SELECT last_group FROM kv_meta").fetchone()[0] + 1
        (taken,) = group.take(number, scan=True)
        outcome = store._txn_body(tx, _decode_request(taken.request))
        tx.c.execute("UPDATE kv_meta SET last_group = ?", (number,))
        tx.c.execute(
            "INSERT INTO kv_groups (id, outcomes) VALUES (?, ?)",
            (number, _encode_list([_encode_outcome(outcome)])),
        )
    assert group.state(slot, ticket) == TAKEN
    app.state.put("next", 2)  # the next leader finishes the orphan from kv_groups
    assert group.state(slot, ticket) == DONE
    data = group.collect(slot, ticket)
    assert data is not None and _decode_outcome(data, []).revision == outcome.revision == 1
    assert [c.revision for c in app.state.history("orphan")] == [1]  # applied once
    assert app.state.revision() == 2


@pytest.mark.sqlite_only
def test_a_leader_that_died_before_its_commit(app: accord.App) -> None:
    store = app.store
    assert isinstance(store, SqliteStore)
    group = store._commit_group()
    slot, ticket = _park(store, "st/orphan", 1)
    with pytest.raises(RuntimeError), store._tx() as tx:
        number = tx.c.execute("SELECT last_group FROM kv_meta").fetchone()[0] + 1
        (taken,) = group.take(number, scan=True)
        store._txn_body(tx, _decode_request(taken.request))
        raise RuntimeError("the leader dies: its transaction rolls back")
    assert group.state(slot, ticket) == TAKEN and app.state.get("orphan") is None
    app.state.put("next", 2)  # the next leader requeues it and runs it
    data = group.collect(slot, ticket)
    assert data is not None and _decode_outcome(data, []).succeeded
    assert app.state.value("orphan") == 1
    assert len(app.state.history("orphan")) == 1


@pytest.mark.sqlite_only
def test_a_parked_request_can_be_taken_back(app: accord.App) -> None:
    store = app.store
    assert isinstance(store, SqliteStore)
    group = store._commit_group()
    slot, ticket = _park(store, "st/never", 1)
    assert group.state(slot, ticket) == PENDING
    assert group.withdraw(slot, ticket) and not group.withdraw(slot, ticket)
    app.state.put("k", 1)
    assert app.state.get("never") is None


def test_writers_killed_while_committing_for_each_other(
    app: accord.App, store_url: str, tmp_path: Path
) -> None:
    """Acknowledged writes are never lost and no write is applied twice."""
    log = tmp_path / "writes.jsonl"
    writers = 4
    procs = [spawn("logwriter", store_url, 400, log) for _ in range(writers)]
    rng = random.Random(17)
    kills = 0
    try:
        while kills < 6 and any(p.poll() is None for p in procs):
            time.sleep(rng.uniform(0.1, 0.3))
            victim = rng.randrange(writers)
            if procs[victim].poll() is None:
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait()
                kills += 1
                procs[victim] = spawn("logwriter", store_url, 200, log)
        assert [finish(p, timeout=120) for p in procs] == [0] * writers
    finally:
        for p in procs:
            p.kill()
            p.wait()
    acked = {e["key"]: e["revision"] for e in map(json.loads, log.read_text().splitlines())}
    rows = sql(store_url, "SELECT key, revision FROM kv_history WHERE key LIKE 'st/g/%'")
    [(grouped,)] = sql(store_url, "SELECT count(*) FROM kv_groups")  # 0 on PostgreSQL
    written = Counter(key.removeprefix("st/") for key, _ in rows)
    assert max(written.values()) == 1, "a write was applied twice"
    revisions = {key.removeprefix("st/"): rev for key, rev in rows}
    for key, revision in acked.items():
        assert revisions.get(key) == revision, f"acknowledged write {key} lost or moved"
    assert sorted(revisions.values()) == list(range(1, len(rows) + 1))
    assert len(rows) - len(acked) <= kills  # only writes in flight at a kill are unacknowledged
    print(f"kills={kills} writes={len(rows)} acked={len(acked)} groups with followers={grouped}")


@pytest.mark.sqlite_only
def test_requests_are_found_when_the_header_counts_are_lost(app: accord.App) -> None:
    """A process killed between a slot and the header's counts leaves them
    short: the request is still served once its writer leads."""
    store = app.store
    assert isinstance(store, SqliteStore)
    group = store._commit_group()
    slot, ticket = _park(store, "st/lost-count", 1)
    group._set_counts(group._map(), 0, 0)  # as if the count update never happened
    app.state.put("fast-path", 1)  # trusts the counts: does not see the request
    assert group.state(slot, ticket) == PENDING
    assert group.try_lead()
    try:
        store._lead(None)  # what the parked writer does when it gets the lock
    finally:
        group.unlead()
    data = group.collect(slot, ticket)
    assert data is not None and _decode_outcome(data, []).succeeded
    assert app.state.value("lost-count") == 1


def test_groups_of_collected_stores_are_released(tmp_path: Path) -> None:
    import gc

    from accord.store import sqlite_group

    url = f"sqlite:///{tmp_path / 'released.db'}"
    with accord.App("st", store=url) as app:
        app.state.put("k", 1)
    del app
    gc.collect()
    key = str((tmp_path / "released.db").resolve())
    assert key in sqlite_group._released  # the finalizer only queued it ...
    with accord.App("st", store=f"sqlite:///{tmp_path / 'other.db'}") as other:
        other.state.put("k", 1)  # ... the next group_for closes it
        assert key not in sqlite_group._groups
