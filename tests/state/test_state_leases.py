"""Leases, locks and leader election on the state store."""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from pathlib import Path

import pytest
from state_helpers import finish, spawn

import accord
from accord.state import State


def test_lease_expiry_deletes_its_keys(state: State) -> None:
    lease = state.lease(0.2)
    state.put("presence/a", "here", lease=lease)
    state.put("plain", 1)
    watch = state.watch("presence/")
    entry = state.get("presence/a")
    assert entry is not None and entry.lease == lease.id
    change = watch.get(timeout=5)  # the watcher itself deletes the expired keys
    assert change is not None and change.kind == "delete" and change.key == "presence/a"
    assert state.get("presence/a") is None and state.value("plain") == 1
    with pytest.raises(accord.LeaseExpiredError):
        lease.keepalive()
    assert lease.lost.is_set()
    with pytest.raises(accord.LeaseExpiredError):
        state.put("presence/b", 1, lease=lease)
    assert state.get("presence/b") is None


@pytest.mark.parametrize("skew", [-3600.0, 3600.0], ids=["behind", "ahead"])
def test_expiry_follows_the_stores_clock_not_this_hosts(
    state: State, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """Q9 for leases: on a host whose clock is an hour off, a key lives as
    long as its lease by the store's clock (the server's, on PostgreSQL)."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew)
    lease = state.lease(0.5)
    state.put("k", 1, lease=lease)
    assert state.value("k") == 1
    time.sleep(1.0)
    assert state.get("k") is None
    assert state.get_prefix("") == []


def test_keepalive_and_revoke(state: State) -> None:
    with state.lease(0.3) as lease:
        state.put("k", 1, lease=lease)
        time.sleep(1.0)
        assert state.value("k") == 1 and lease.alive()
    assert state.get("k") is None and not lease.alive()
    assert state.history("k")[-1].kind == "delete"


def test_a_dead_owner_keys_go_away(app: accord.App, store_url: str, tmp_path: Path) -> None:
    proc = spawn("holder", store_url, "agents/a1", 0.5, log=tmp_path / "holder.log")
    try:
        deadline = time.monotonic() + 30
        while app.state.get("agents/a1") is None:
            assert time.monotonic() < deadline, (tmp_path / "holder.log").read_text()
            time.sleep(0.05)
        watch = app.state.watch("agents/", start_revision=app.state.revision() + 1)
        time.sleep(1.0)  # alive: kept alive by its thread
        assert app.state.get("agents/a1") is not None
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        change = watch.get(timeout=10)
        assert change is not None and change.kind == "delete" and change.key == "agents/a1"
        assert time.monotonic() - killed < 0.5 + 1.0
    finally:
        proc.kill()
        proc.wait()


def test_lock_excludes_threads_and_tokens_grow(state: State) -> None:
    spans: list[tuple[int, float, float]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                with state.lock("shared", ttl=5) as lock:
                    start = time.monotonic()
                    time.sleep(0.01)
                    assert lock.is_held()
                    assert lock.token is not None
                    spans.append((lock.token, start, time.monotonic()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    spans.sort(key=lambda s: s[1])
    assert len(spans) == 15
    for (tok_a, _, end_a), (tok_b, start_b, _) in itertools.pairwise(spans):
        assert end_a <= start_b and tok_a < tok_b
    assert state.get("locks/shared") is None


def test_lock_excludes_processes(store_url: str, tmp_path: Path) -> None:
    out = tmp_path / "locks.jsonl"
    procs = [spawn("locker", store_url, "pl", 4, 0.02, out) for _ in range(3)]
    assert [finish(p) for p in procs] == [0, 0, 0]
    spans = sorted(
        (json.loads(line) for line in out.read_text().splitlines()), key=lambda s: s["start"]
    )
    assert len(spans) == 12
    for a, b in itertools.pairwise(spans):
        assert a["end"] <= b["start"] and a["token"] < b["token"]


def test_a_lost_lock_fences_guarded_writes(state: State) -> None:
    lock = state.lock("l", ttl=0.2)
    lock.acquire()
    assert lock.lease is not None
    lock.lease.stop_keepalive()  # the holder hangs: its lease runs out
    assert state.txn().holding(lock).then_put("guarded", 1).commit().succeeded
    time.sleep(0.4)
    other = state.lock("l", ttl=5)
    token = other.acquire(timeout=5)
    assert lock.token is not None and token > lock.token
    result = state.txn().holding(lock).then_put("guarded", 2).else_put("refused", 1).commit()
    assert not result.succeeded and state.value("guarded") == 1
    assert not lock.is_held() and other.is_held()
    other.release()
    lock.release()  # nothing to release any more: harmless


def test_lock_timeout(state: State) -> None:
    with state.lock("busy", ttl=5):
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            state.lock("busy").acquire(timeout=0.3)
        assert time.monotonic() - start < 3
    assert state.lock("busy").acquire(timeout=1) > 0


def test_election(state: State) -> None:
    election = state.election("coordinator")
    assert election.leader() is None
    observe = election.observe()
    first = election.campaign("node-a", ttl=5)
    leader = election.leader()
    assert leader is not None and leader.value == "node-a" and leader.create_revision == first.token
    second: list[accord.state.Leadership] = []
    waiter = threading.Thread(target=lambda: second.append(election.campaign("node-b", ttl=5)))
    waiter.start()
    time.sleep(0.2)
    assert election.leader().value == "node-a"  # type: ignore[union-attr]
    first.proclaim("node-a v2")
    first.resign()
    waiter.join(10)
    assert second and election.leader().value == "node-b"  # type: ignore[union-attr]
    assert second[0].token is not None and first.token is None
    with pytest.raises(accord.ConflictError):
        first.proclaim("stale")
    second[0].resign()
    seen = [(c.kind.value, c.value) for c in observe.poll()]
    assert seen == [
        ("put", "node-a"),
        ("put", "node-a v2"),
        ("delete", None),
        ("put", "node-b"),
        ("delete", None),
    ]


def test_bad_lease_input(state: State) -> None:
    for ttl in (0, -1, float("nan"), float("inf"), "5", True):
        with pytest.raises(accord.ConfigError):
            state.lease(ttl)  # type: ignore[arg-type]
    with pytest.raises(accord.ConfigError):
        state.put("k", 1, lease=0)
    with pytest.raises(accord.LeaseExpiredError):
        state.put("k", 1, lease=12345)
    assert state.revision() == 0
