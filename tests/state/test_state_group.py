"""Group commit across processes (SQLite's own machinery).

The faults it must survive, each with real processes and real kills: a
leader that dies before or after its commit or while it marks slots taken,
an outcome larger than a slot, a writer killed while its request waits, a
disk too full for the slot file. Then a model test: many processes writing
large and small values, with compares that fail, killed at random points of
the group code by a seeded injector, every acknowledged outcome checked
against the store's history (with a negative control of the checker). The
model test runs on PostgreSQL too, where the server groups commits itself.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from group_model import Change, check
from state_helpers import finish, spawn

import accord
from accord import serde
from accord.store.records import KvPut
from accord.store.sql.state_core import _TxnRequest
from accord.store.sqlite.slots import DONE, FREE, PENDING, TAKEN, InDatabase
from accord.store.sqlite.store import SqliteStore
from accord.store.sqlite.wire import (
    _decode_outcome,
    _decode_request,
    _encode_list,
    _encode_outcome,
    _encode_request,
)
from support.common import sql

HERE = Path(__file__).parent
WORKERS = HERE / "group_workers.py"
BIG_VALUE = {"t": None, "pad": "y" * 40_000}  # a failed compare of it returns 40 KB


def _worker(*args: object, errors: Path, stdin: bool = False) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
    with open(errors, "ab") as err:
        return subprocess.Popen(
            [sys.executable, str(WORKERS), *map(str, args)],
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=err,
            stderr=err,
        )


def _entries(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _wait_for(path: Path, count: int, event: str, procs: list[subprocess.Popen[bytes]]) -> None:
    """Wait until the log has ``count`` lines of ``event`` (the workers must live meanwhile)."""
    deadline = time.monotonic() + 120
    while sum(e.get("event") == event for e in _entries(path)) < count:
        for p in procs:
            assert p.poll() is None, f"a worker exited ({p.returncode}) before {event!r}"
        assert time.monotonic() < deadline, f"no {event!r} within 120 s"
        time.sleep(0.01)


def _errors(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _park(store: SqliteStore, key: str, value: int) -> tuple[int, int]:
    """Park a request as a writer of another process would."""
    request = _TxnRequest([], [KvPut(key, serde.dumps(value))], [], None, None)
    parked = store._commit_group().park(_encode_request(request))
    assert parked is not None
    return parked


def _history(store_url: str, key: str) -> list[Any]:
    rows = sql(store_url, "SELECT value FROM kv_history WHERE key = ? ORDER BY revision", (key,))
    return [serde.loads(r[0]) for r in rows]


# -- a leader that dies ----------------------------------------------------------
@pytest.mark.sqlite_only
def test_a_leader_that_died_after_its_commit(app: accord.App) -> None:
    store = app.store
    assert isinstance(store, SqliteStore)
    group = store._commit_group()
    slot, ticket = _park(store, "st/orphan", 1)
    assert group.try_lead()
    try:
        # The leader takes it, commits it with its outcome, and dies before writing back.
        with store._tx() as tx:
            (taken,) = group.take(12345, False)
            outcome = store._txn_body(tx, _decode_request(taken.request))
            tx.c.execute(
                "INSERT INTO kv_groups (id, outcomes) VALUES (?, ?)",
                (12345, _encode_list([_encode_outcome(outcome)])),
            )
    finally:
        group.unlead()
    assert group.state(slot, ticket) == TAKEN
    app.state.put("next", 2)  # the next leader finishes the orphan from kv_groups
    assert group.state(slot, ticket) == DONE
    data = group.collect(slot, ticket)
    assert isinstance(data, bytes) and _decode_outcome(data, []).revision == outcome.revision == 1
    assert [c.revision for c in app.state.history("orphan")] == [1]  # applied once
    assert app.state.revision() == 2


@pytest.mark.sqlite_only
def test_a_leader_that_died_before_its_commit(app: accord.App) -> None:
    store = app.store
    assert isinstance(store, SqliteStore)
    group = store._commit_group()
    slot, ticket = _park(store, "st/orphan", 1)
    assert group.try_lead()
    try:
        with pytest.raises(RuntimeError), store._tx() as tx:
            (taken,) = group.take(777, False)
            store._txn_body(tx, _decode_request(taken.request))
            raise RuntimeError("the leader dies: its transaction rolls back")
    finally:
        group.unlead()
    assert group.state(slot, ticket) == TAKEN and app.state.get("orphan") is None
    app.state.put("next", 2)  # the next leader requeues it and runs it
    data = group.collect(slot, ticket)
    assert isinstance(data, bytes) and _decode_outcome(data, []).succeeded
    assert app.state.value("orphan") == 1
    assert len(app.state.history("orphan")) == 1


@pytest.mark.sqlite_only
def test_a_waiting_writer_never_sees_its_slot_freed_while_a_leader_rewrites_it(
    app: accord.App, sqlite_url: str, tmp_path: Path
) -> None:
    """A parked writer reads its slot without the lock while it waits: a
    leader that rewrites the slot (same ticket) must never make it look freed,
    which the writer would report as an outcome it cannot know."""
    app.state.put("warm", 0)
    store = app.store
    assert isinstance(store, SqliteStore)
    group = store._commit_group()
    slot, ticket = _park(store, "st/churned", 1)
    out, errors = tmp_path / "log.jsonl", tmp_path / "errors.txt"
    leader = _worker("churn", sqlite_url, out, 1.5, errors=errors)
    _wait_for(out, 1, "leading", [leader])
    seen = {FREE: 0, PENDING: 0, TAKEN: 0}
    while leader.poll() is None:
        for _ in range(1000):
            seen[group.state(slot, ticket)] += 1
    assert leader.returncode == 0, _errors(errors)
    (churned,) = [e for e in _entries(out) if e.get("event") == "churned"]
    assert churned["count"] > 100 and seen[TAKEN] > 0, (churned, seen)
    assert seen[FREE] == 0, f"the slot looked free {seen[FREE]} times: {seen}"
    assert group.withdraw(slot, ticket)  # still ours, and never applied
    assert app.state.get("churned") is None


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


@pytest.mark.sqlite_only
@pytest.mark.parametrize("kill_at", [4, 5, 9])
def test_a_leader_killed_while_it_marks_slots_taken(
    app: accord.App, sqlite_url: str, tmp_path: Path, kill_at: int
) -> None:
    """Fault 2: a leader SIGKILLed inside take(), after it marked some of the
    parked requests TAKEN: each waiting writer is told its own outcome, and
    every acknowledged write is in the store at the revision it was told."""
    app.state.put("warm", 0)  # (this process's first write opens the store's files)
    out, errors = tmp_path / "log.jsonl", tmp_path / "errors.txt"
    leader = _worker("leader", sqlite_url, out, kill_at, errors=errors, stdin=True)
    _wait_for(out, 1, "leading", [leader])
    writers = []
    for i in range(3):
        writers.append(_worker("parked", sqlite_url, out, "put", f"m/w{i}", f"v{i}", errors=errors))
        _wait_for(out, i + 1, "parked", [leader, *writers])
    # The parked writers stay stopped (alive) until the next leader, a writer
    # with a request of its own, has run.
    for w in writers:
        w.send_signal(signal.SIGSTOP)
    assert leader.stdin is not None
    leader.stdin.write(b"go\n")
    leader.stdin.close()
    assert leader.wait(timeout=120) == -signal.SIGKILL, _errors(errors)
    for i in range(3):
        app.state.put(f"after{i}", i)  # later leaders: the orphans are settled first
    for w in writers:
        w.send_signal(signal.SIGCONT)
    assert [finish(w) for w in writers] == [0, 0, 0], _errors(errors)
    done = [e for e in _entries(out) if e.get("event") == "done"]
    assert len(done) == 3
    for e in done:
        rows = sql(
            sqlite_url, "SELECT key, value FROM kv_history WHERE revision = ?", (e["revision"],)
        )
        assert [(k, serde.loads(v)) for k, v in rows] == [(f"st/{e['key']}", e["value"])], (
            f"writer of {e['key']} was told revision {e['revision']}, which holds {rows}"
        )
        assert _history(sqlite_url, f"st/{e['key']}") == [e["value"]]  # applied once


# -- outcomes larger than a slot ---------------------------------------------------
@pytest.mark.sqlite_only
def test_an_outcome_larger_than_a_slot(app: accord.App, sqlite_url: str, tmp_path: Path) -> None:
    """Fault 1: a parked compare that fails returns the 40 KB value it saw: the
    writer gets its outcome, and the store keeps working for everyone."""
    store = app.store
    assert isinstance(store, SqliteStore)
    app.state.put("m/big", BIG_VALUE)
    out, errors = tmp_path / "log.jsonl", tmp_path / "errors.txt"
    group = store._commit_group()
    assert group.try_lead()  # hold the lock: the writer has to park
    try:
        writer = _worker("parked", sqlite_url, out, "bigcompare", errors=errors)
        _wait_for(out, 1, "parked", [writer])
    finally:
        group.unlead()
    app.state.put("k", 1)  # leads, with the parked compare (or the writer leads itself)
    assert finish(writer) == 0, _errors(errors)
    (done,) = [e for e in _entries(out) if e.get("event") == "done"]
    assert done["succeeded"] is False and app.state.get("x") is None
    # Every writer, in this process and in a new one, still writes.
    app.state.put("k", 2)
    again = _worker("parked", sqlite_url, out, "put", "m/again", "1", errors=errors)
    assert finish(again) == 0, _errors(errors)
    assert app.state.value("m/again") == "1" and app.state.value("k") == 2
    [(rows,)] = sql(sqlite_url, "SELECT count(*) FROM kv_groups")
    assert rows >= 1  # the large outcome travelled through the database


@pytest.mark.sqlite_only
def test_a_large_outcome_is_read_from_the_database(app: accord.App) -> None:
    """The outcome left in the database is what the writer reads, and its
    group's row outlives pruning until the writer has read it."""
    store = app.store
    assert isinstance(store, SqliteStore)
    app.state.put("m/big", BIG_VALUE)
    group = store._commit_group()
    big = serde.dumps(BIG_VALUE)
    from accord.store.records import KvCompare

    request = _TxnRequest(
        [KvCompare("st/m/big", "value", "==", serde.dumps("other"))], [], [], None, None
    )
    parked = group.park(_encode_request(request))
    assert parked is not None
    assert group.try_lead()
    try:
        store._lead(None)
        for _ in range(200):  # well past a pruning
            store._prune_groups(store._conn(), group, 0)
    finally:
        group.unlead()
    where = group.collect(*parked)
    assert isinstance(where, InDatabase)
    outcome = _decode_outcome(store._fetch_outcome(where), request.compares)
    group.release(*parked)
    assert not outcome.succeeded and outcome.failed[0][1] == big
    store._prune_groups(store._conn(), group, 1 << 30)
    assert sql(f"sqlite:///{store.path}", "SELECT count(*) FROM kv_groups") == [(0,)]


# -- a writer killed while its request waits --------------------------------------------
@pytest.mark.sqlite_only
def test_the_request_of_a_dead_writer_is_never_applied(
    app: accord.App, sqlite_url: str, tmp_path: Path
) -> None:
    """Fault 3: a writer SIGKILLed while its request is parked: the request is
    freed, never applied after the newer acknowledged write."""
    store = app.store
    assert isinstance(store, SqliteStore)
    app.state.put("m/k", "0")
    out, errors = tmp_path / "log.jsonl", tmp_path / "errors.txt"
    group = store._commit_group()
    assert group.try_lead()
    try:
        writer = _worker("parked", sqlite_url, out, "put", "m/k", "stale", errors=errors)
        _wait_for(out, 1, "parked", [writer])
        writer.send_signal(signal.SIGKILL)
        assert writer.wait() == -signal.SIGKILL
    finally:
        group.unlead()
    app.state.put("m/k", "new")  # a leader: it finds the dead writer's request
    app.state.put("m/other", 1)
    other = _worker("parked", sqlite_url, out, "put", "m/third", "1", errors=errors)
    assert finish(other) == 0, _errors(errors)
    assert _history(sqlite_url, "st/m/k") == ["0", "new"]
    assert app.state.value("m/k") == "new"
    states = group._states(group._map())
    assert set(states) == {0}, "the dead writer's slot was not freed"


# -- a full disk ----------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 2 MB tmpfs (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    where = tmp_path / "disk"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.sqlite_only
def test_a_full_disk_is_a_clear_error(small_disk: Path, tmp_path: Path) -> None:
    """Fault 4: the first state write of a new store on a disk with under
    512 KB free raises
    StorageFullError (the slot file is reserved before it is mapped: no
    SIGBUS); once space is freed, writes go on."""
    url = f"sqlite:///{small_disk / 'full.db'}"
    out, errors = tmp_path / "log.jsonl", tmp_path / "errors.txt"
    # 400 KB free: room for the database (about 240 KB), not for the 512 KB slot file.
    worker = _worker("fullput", url, out, small_disk / "filler", 400_000, errors=errors)
    rc = finish(worker)
    assert rc == 0, f"exit {rc}: {_errors(errors)}"
    events = {e["event"]: e for e in _entries(out)}
    assert "full" in events, events
    assert "disk is full" in events["full"]["message"]
    assert events["after"]["revision"] >= 1


@pytest.mark.sqlite_only
def test_the_group_file_is_only_for_its_owner(app: accord.App) -> None:
    store = app.store
    assert isinstance(store, SqliteStore)
    app.state.put("k", 1)
    mode = stat.S_IMODE(os.stat(f"{store.path}-group").st_mode)
    assert mode == 0o600, oct(mode)


# -- many writers, killed at random -------------------------------------------------
def test_writers_killed_while_committing_for_each_other(
    app: accord.App, store_url: str, tmp_path: Path
) -> None:
    """Acknowledged writes are never lost and no write is applied twice."""
    from collections import Counter

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
    written = Counter(key.removeprefix("st/") for key, _ in rows)
    assert max(written.values()) == 1, "a write was applied twice"
    revisions = {key.removeprefix("st/"): rev for key, rev in rows}
    for key, revision in acked.items():
        assert revisions.get(key) == revision, f"acknowledged write {key} lost or moved"
    assert sorted(revisions.values()) == list(range(1, len(rows) + 1))
    assert len(rows) - len(acked) <= kills  # only writes in flight at a kill are unacknowledged


def _model_run(store_url: str, tmp_path: Path, seed: int, incarnations: int) -> None:
    """Run the model workload, killing workers (seeded), and check it."""
    rng = random.Random(seed)
    out, errors = tmp_path / "model.jsonl", tmp_path / "errors.txt"
    with accord.App("st", store=store_url) as app:
        app.state.put("m/big", BIG_VALUE)
    running: dict[str, subprocess.Popen[bytes]] = {}
    killed: dict[str, float] = {}
    started = 0

    def start() -> None:
        nonlocal started
        wid = f"w{started}"
        started += 1
        kill_at = rng.randint(1, 20_000) if rng.random() < 0.5 else 0
        running[wid] = _worker(
            "model", store_url, out, wid, rng.getrandbits(32), 100, kill_at, errors=errors
        )

    try:
        for _ in range(4):
            start()
        deadline = time.monotonic() + 600
        while running:
            assert time.monotonic() < deadline, "the model run did not finish in 600 s"
            time.sleep(0.02)
            if rng.random() < 0.02:  # an external kill at a random time
                wid = rng.choice(sorted(running))
                running[wid].send_signal(signal.SIGKILL)
            for wid, p in list(running.items()):
                rc = p.poll()
                if rc is None:
                    continue
                del running[wid]
                if rc == -signal.SIGKILL:
                    killed[wid] = time.time()
                else:
                    assert rc == 0, f"worker {wid} failed ({rc}): {_errors(errors)[-3000:]}"
                if started < incarnations:
                    start()
    finally:
        for p in running.values():
            p.kill()
            p.wait()
    rows = sql(
        store_url,
        "SELECT revision, key, version, value, at FROM kv_history WHERE key LIKE 'st/m/%' "
        "ORDER BY revision, seq",
    )
    history = [
        Change(r, k.removeprefix("st/"), v, _token(serde.loads(val)), at)
        for r, k, v, val, at in rows
    ]
    entries = _entries(out)
    problems = check(entries, history, killed)
    assert not problems, "\n".join(problems[:20])
    acked = sum(e.get("type") in ("ok", "fail") and e.get("op") != "done" for e in entries)
    print(f"incarnations={started} killed={len(killed)} changes={len(history)} acked={acked}")
    assert acked > 0 and len(killed) > 0

    # Negative control: the same run, doctored, must be reported.
    oks = [e for e in entries if e.get("type") == "ok" and e.get("op") in ("put", "cas")]
    assert oks, "no acknowledged write to doctor"
    victim = rng.choice(oks)
    lost = [c for c in history if c.token != victim["id"]]
    assert any("not in the store" in p for p in check(entries, lost, killed))
    others = [c for c in history if c.token not in (None, victim["id"])]
    moved = [dict(e) for e in entries]
    for e in moved:
        if e.get("id") == victim["id"] and e["type"] == "ok":
            e["revision"] = others[0].revision
    assert any("not in the store" in p for p in check(moved, history, killed))
    twice = [*history, history[-1]]
    if history[-1].token is not None:
        assert any("applied 2 times" in p for p in check(entries, twice, killed))
    late = [e for e in entries if e.get("type") != "invoke" or e["id"].split(".")[0] not in killed]
    dead = sorted(killed)[0]
    late.append({"op": "put", "id": f"{dead}.999", "key": "m/0", "type": "invoke"})
    stale = [*history, Change(10**9, "m/0", 10**6, f"{dead}.999", killed[dead] + 1)]
    assert any("after its worker was dead" in p for p in check(late, stale, killed))


def _token(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("t"), str):
        return str(value["t"])
    return None


def test_model_of_writers_killed_at_random_points(store_url: str, tmp_path: Path) -> None:
    """Bounded: 12 worker processes over the run, 4 at a time."""
    _model_run(store_url, tmp_path, seed=20261203, incarnations=12)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_model_of_writers_killed_at_random_points_long(
    store_url: str, tmp_path: Path, seed: int
) -> None:
    _model_run(store_url, tmp_path, seed=seed, incarnations=60)


def test_groups_of_collected_stores_are_released(tmp_path: Path) -> None:
    import gc

    from accord.store.sqlite import group as sqlite_group

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
