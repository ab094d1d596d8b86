"""Watches (G5): ordered, unique, reliable, atomic, resumable, bookmarkable, or
an explicit compacted error (S5, S6), with writers in several processes."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import pytest
from state_helpers import finish, spawn

import accord
from accord.state import WATCH_PAGE, Change, State, Watch


def _drain(watch: Watch, count: int, timeout: float = 60) -> list[Change]:
    got: list[Change] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(got)} of {count} changes arrived"
        change = watch.get(timeout=left)
        if change is not None:
            got.append(change)
    return got


def test_every_revision_once_in_order_with_writers_in_processes(
    app: accord.App, store_url: str
) -> None:
    per_writer, writers = 150, 3
    watch = app.state.watch("w/", start_revision=1)
    procs = [spawn("writer", store_url, "w/", per_writer, 0) for _ in range(writers)]
    changes = _drain(watch, per_writer * writers)
    assert [finish(p) for p in procs] == [0] * writers
    revisions = [c.revision for c in changes]
    assert revisions == list(range(1, per_writer * writers + 1))
    assert len({c.key for c in changes}) == per_writer * writers
    # Each writer's own puts arrive in its order.
    by_writer: dict[str, list[int]] = {}
    for c in changes:
        pid, index = c.key.removeprefix("w/").split("/")
        by_writer.setdefault(pid, []).append(int(index))
    assert all(v == list(range(per_writer)) for v in by_writer.values())
    assert watch.get(timeout=0.05) is None and watch.revision == per_writer * writers + 1


def test_a_killed_watcher_resumes_without_gap_or_duplicate(
    app: accord.App, store_url: str, tmp_path: Path
) -> None:
    total = 600
    log = tmp_path / "watch.jsonl"
    rng = random.Random(7)
    writer = spawn("writer", store_url, "r/", total, 0.002)
    watcher = spawn("watcher", store_url, "r/", 1, log)
    kills = 0
    try:
        while writer.poll() is None and kills < 3:
            time.sleep(rng.uniform(0.2, 0.5))
            watcher.send_signal(signal.SIGKILL)
            watcher.wait()
            kills += 1
            lines = log.read_text().splitlines() if log.exists() else []
            last = json.loads(lines[-1])["revision"] if lines else 0
            watcher = spawn("watcher", store_url, "r/", last + 1, log)
        assert finish(writer) == 0
        deadline = time.monotonic() + 60
        while True:
            lines = log.read_text().splitlines() if log.exists() else []
            if len(lines) >= total or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        watcher.kill()
        watcher.wait()
    revisions = [json.loads(line)["revision"] for line in lines]
    assert kills >= 1
    assert revisions == list(range(1, total + 1)), "missed or repeated revisions"


def test_a_transaction_is_delivered_as_one_revision(state: State) -> None:
    watch = state.watch("")
    state.txn().then_put("a", 1).then_put("b", 2).then_delete("zz").commit()
    state.put("c", 3)
    first = watch.poll(timeout=5)
    assert [(c.key, c.revision) for c in first] == [("a", 1), ("b", 1), ("c", 2)]


def test_a_revision_bigger_than_a_page(state: State) -> None:
    count = WATCH_PAGE + 200
    txn = state.txn()
    for i in range(count):
        txn.then_put(f"bulk/{i:05d}", i)
    txn.commit()
    state.put("after", 1)
    watch = state.watch("", start_revision=1)
    changes = _drain(watch, count + 1)
    assert [c.revision for c in changes] == [1] * count + [2]
    assert state.delete_prefix("bulk/") == count
    changes = _drain(watch, count)
    assert {c.kind for c in changes} == {"delete"} and {c.revision for c in changes} == {3}


def test_exact_key_watch_and_bookmark(state: State) -> None:
    watch = state.watch("a", exact=True)
    state.put("ab", 1)  # under the prefix "a", but not the key
    state.put("a", 1)
    change = watch.get(timeout=5)
    assert change is not None and change.key == "a" and change.revision == 2
    state.put("other", 1)
    state.put("other", 2)
    assert watch.get(timeout=0.05) is None
    # The bookmark moves past revisions with nothing for this watch.
    assert watch.revision == 5
    resumed = state.watch("a", exact=True, start_revision=watch.revision)
    state.put("a", 2)
    change = resumed.get(timeout=5)
    assert change is not None and change.revision == 5


def test_a_watch_left_behind_by_compaction_gets_an_error(state: State) -> None:
    """S6: a stalled watcher never gets a silent gap."""
    watch = state.watch("k/")
    writes = WATCH_PAGE + 500
    for i in range(writes):
        state.put(f"k/{i % 7}", i)
    first = watch.get(timeout=1)  # the watch has read one page and lags behind
    assert first is not None and first.revision == 1
    state.compact(keep=10)
    delivered = 1
    with pytest.raises(accord.CompactedError) as caught:
        while watch.get(timeout=0) is not None:
            delivered += 1
    # What was read before the compaction is delivered, then the gap is an error.
    assert WATCH_PAGE - 1 <= delivered <= WATCH_PAGE
    assert caught.value.compacted == writes - 10 + 1 and caught.value.revision == delivered + 1
    # The way back: read the state, then watch from the revision it was read at.
    entries = state.get_prefix("k/")
    assert len(entries) == 7
    resumed = state.watch("k/", start_revision=state.revision() + 1)
    state.put("k/0", "new")
    change = resumed.get(timeout=5)
    assert change is not None and change.value == "new"


def test_a_stopped_watcher_catches_up(app: accord.App, store_url: str, tmp_path: Path) -> None:
    """S6: SIGSTOP a watcher through 2,000 writes; it catches up with all of them."""
    log = tmp_path / "watch.jsonl"
    watcher = spawn("watcher", store_url, "s/", 1, log)
    try:
        app.state.put("s/first", 0)
        deadline = time.monotonic() + 30
        while not log.exists() or not log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        watcher.send_signal(signal.SIGSTOP)
        txn_size = 20
        for i in range(100):
            txn = app.state.txn()
            for j in range(txn_size):
                txn.then_put(f"s/{j}", i)
            txn.commit()
        watcher.send_signal(signal.SIGCONT)
        while len(log.read_text().splitlines()) < 1 + 100 * txn_size:
            assert time.monotonic() < deadline + 30
            time.sleep(0.05)
    finally:
        watcher.kill()
        watcher.wait()
    revisions = [json.loads(line)["revision"] for line in log.read_text().splitlines()]
    assert revisions == [1] + [r for r in range(2, 102) for _ in range(txn_size)]
