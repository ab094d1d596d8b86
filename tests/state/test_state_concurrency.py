"""Writers, receivers and watchers running at the same time, in several processes.

On SQLite every write holds the database's one lock; on PostgreSQL they run
side by side at READ COMMITTED, so these are the tests of its row locks
(see :mod:`accord.store.sql.state`): receivers that skip each other's
messages, revisions and topic offsets committed in order, snapshots that
compaction respects. Both backends must pass them unchanged.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from state_helpers import finish, spawn

import accord


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_receivers_in_processes_never_share_a_message(
    app: accord.App, store_url: str, tmp_path: Path
) -> None:
    """M1's other half: while a message is hidden (a minute here), no second
    receiver gets it. Every message is taken exactly once, by one process."""
    count, receivers = 600, 4
    box = app.mailbox("shared")
    ids = box.send_many(list(range(count)), ids=[f"m{i}" for i in range(count)])
    log = tmp_path / "taken.jsonl"
    procs = [spawn("grabber", store_url, "shared", log, 5, 0.002) for _ in range(receivers)]
    assert [finish(p) for p in procs] == [0] * receivers
    taken = _lines(log)
    times = Counter(e["id"] for e in taken)
    assert set(times) == set(ids), "a message was never received"
    assert max(times.values()) == 1, f"received twice: {[i for i, n in times.items() if n > 1]}"
    assert {e["delivery"] for e in taken} == {1}
    assert len({e["pid"] for e in taken}) >= 2, "the receivers did not overlap"
    assert box.stats() == {"ready": 0, "in_flight": 0, "acked": count, "next_visible_at": None}


def test_watchers_see_every_revision_while_processes_write(
    app: accord.App, store_url: str, tmp_path: Path
) -> None:
    """G5 with puts, two-key transactions and deletes from four processes at
    once: two watchers in other processes log exactly the stored history."""
    writers, per_writer = 4, 120
    logs = [tmp_path / f"watch{i}.jsonl" for i in range(2)]
    watchers = [spawn("watcher", store_url, "mix/", 1, log) for log in logs]
    try:
        procs = [spawn("mixer", store_url, "mix/", per_writer, seed) for seed in range(writers)]
        assert [finish(p) for p in procs] == [0] * writers
        history = [
            {"revision": c.revision, "key": f"mix/{c.key}", "kind": c.kind.value}
            for c in app.state.scope("mix").history("", prefix=True)
        ]
        assert history[-1]["revision"] == app.state.revision()
        deadline = time.monotonic() + 60
        while any(len(_lines(log)) < len(history) for log in logs):
            assert time.monotonic() < deadline, [len(_lines(log)) for log in logs]
            time.sleep(0.05)
    finally:
        for w in watchers:
            w.kill()
            w.wait()
    revisions = sorted({h["revision"] for h in history})
    assert revisions == list(range(1, len(revisions) + 1)), "a revision is missing"
    for log in logs:
        assert _lines(log) == history  # in order, no gap, no duplicate


def test_publishers_in_processes_take_offsets_in_order(
    app: accord.App, store_url: str, tmp_path: Path
) -> None:
    """Offsets are contiguous and a reader never sees one before the ones
    below it (so a subscriber cannot skip a message that commits later)."""
    publishers, per_publisher = 3, 200
    total = publishers * per_publisher
    topic = app.topic("race")
    seen: list[accord.TopicMessage] = []
    gaps: list[str] = []

    def read() -> None:
        deadline = time.monotonic() + 120
        while len(seen) < total and time.monotonic() < deadline:
            page = topic.read(len(seen), 50)
            for expected, message in enumerate(page, len(seen)):
                if message.offset != expected:
                    gaps.append(f"offset {message.offset} read where {expected} was due")
            seen.extend(page)
            if gaps:
                return

    reader = threading.Thread(target=read)
    reader.start()
    procs = [spawn("publisher", store_url, "race", per_publisher, f"p{i}-") for i in range(3)]
    assert [finish(p) for p in procs] == [0] * publishers
    reader.join(120)
    assert not gaps, gaps
    assert [m.offset for m in seen] == list(range(total))
    for i in range(publishers):
        mine = [m.payload for m in seen if m.payload.startswith(f"p{i}-")]
        assert mine == [f"p{i}-{j}" for j in range(per_publisher)]
    assert topic.offsets() == (0, total)


def test_a_snapshot_being_taken_holds_compaction_back(
    app: accord.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot pins its revision even against a compaction that runs while
    the snapshot is being taken: it has read the revision it will name, and a
    write and a compaction past it wait until it commits."""
    state = app.state
    state.put("k", 1)
    store = state.store
    inside, go = threading.Event(), threading.Event()
    read_meta = store._meta  # type: ignore[attr-defined]

    def meta_then_pause(c: Any) -> Any:
        got = read_meta(c)
        if threading.current_thread().name == "snapshot":
            inside.set()
            go.wait(10)
        return got

    monkeypatch.setattr(store, "_meta", meta_then_pause)
    taken: list[int] = []
    snapper = threading.Thread(target=lambda: taken.append(state.snapshot("s")), name="snapshot")
    snapper.start()
    assert inside.wait(10)
    compacted: list[int] = []

    def write_and_compact() -> None:
        state.put("k", 2)
        compacted.append(state.compact())

    other = threading.Thread(target=write_and_compact)
    other.start()
    other.join(0.5)  # it waits for the snapshot to commit (on SQLite, for the write lock)
    go.set()
    snapper.join(30)
    other.join(30)
    assert taken == [1] and compacted == [1]
    entry = state.get("k", revision=taken[0])
    assert entry is not None and entry.value == 1
