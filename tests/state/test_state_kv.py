"""The state store's API: reads, writes, transactions, namespaces, history,
snapshots, rollback and compaction (G4, S4), and bad input."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest

import accord
from accord.state import MAX_KEY_BYTES, State


def test_put_get_revisions_and_versions(state: State) -> None:
    assert state.get("a") is None
    assert state.revision() == 0
    assert state.put("a", {"x": 1}) == 1
    assert state.put("b", [1, 2]) == 2
    assert state.put("a", {"x": 2}) == 3
    entry = state.get("a")
    assert entry is not None
    assert (entry.key, entry.value, entry.revision, entry.version) == ("a", {"x": 2}, 3, 2)
    assert entry.create_revision == 1
    assert state.revision() == 3
    assert state.value("b") == [1, 2]
    assert state.value("missing", default=7) == 7


def test_values_round_trip_numpy_and_nested(state: State) -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    state.put("arr", {"w": arr, "n": None, "t": (1, 2)})
    got = state.value("arr")
    assert np.array_equal(got["w"], arr) and got["w"].dtype == np.float32
    assert got["n"] is None and got["t"] == [1, 2]


def test_get_prefix_is_ordered_and_bounded(state: State) -> None:
    for key in ["cfg/b", "cfg/a", "cfg/c/d", "cfh", "cf"]:
        state.put(key, key)
    assert [e.key for e in state.get_prefix("cfg/")] == ["cfg/a", "cfg/b", "cfg/c/d"]
    assert [e.key for e in state.get_prefix("cfg/", limit=2)] == ["cfg/a", "cfg/b"]
    assert [e.key for e in state.get_prefix("")] == ["cf", "cfg/a", "cfg/b", "cfg/c/d", "cfh"]


def test_reads_at_an_older_revision(state: State) -> None:
    state.put("k", "one")  # 1
    state.put("j", "j")  # 2
    state.put("k", "two")  # 3
    state.delete("j")  # 4
    entry = state.get("k", revision=1)
    assert entry is not None and entry.value == "one" and entry.version == 1
    assert state.get("k", revision=3).value == "two"  # type: ignore[union-attr]
    assert state.get("j", revision=3) is not None
    assert state.get("j", revision=4) is None
    assert [e.value for e in state.get_prefix("", revision=2)] == ["j", "one"]
    assert [e.value for e in state.get_prefix("", revision=4)] == ["two"]
    assert state.get_prefix("", revision=0) == []


def test_delete_keeps_counting_versions(state: State) -> None:
    state.put("k", 1)
    state.put("k", 2)
    assert state.delete("k") is True
    assert state.delete("k") is False  # absent: no revision taken
    assert state.revision() == 3
    state.put("k", 3)
    entry = state.get("k")
    assert entry is not None
    # Versions are never reused: a CAS that read version 1 or 2 cannot succeed.
    assert entry.version == 4 and entry.create_revision == 4
    with pytest.raises(accord.ConflictError):
        state.put("k", 9, expect_version=1)


def test_expect_version_is_compare_and_set(state: State) -> None:
    state.put("c", 0)
    assert state.put("c", 1, expect_version=1) == 2
    with pytest.raises(accord.ConflictError) as caught:
        state.put("c", 99, expect_version=1)
    assert caught.value.key == "c" and caught.value.actual == 2 and caught.value.expected == 1
    assert state.value("c") == 1 and state.revision() == 2
    # expect_version=0: create only if absent.
    assert state.create("new", "x") == 3
    with pytest.raises(accord.ConflictError):
        state.create("new", "y")
    with pytest.raises(accord.ConflictError):
        state.delete("c", expect_version=5)
    assert state.delete("c", expect_version=2)


def test_txn_then_and_else_are_all_or_nothing(state: State) -> None:
    state.put("from", 100)
    state.put("to", 0)
    result = (
        state.txn()
        .compare("from", "value", "==", 100)
        .compare("to", "version", "==", 1)
        .compare("from", "revision", "<", 5)
        .then_put("from", 60)
        .then_put("to", 40)
        .else_put("log", "lost")
        .commit()
    )
    assert result == accord.TxnResult(True, 3, 2)
    assert [state.value("from"), state.value("to")] == [60, 40]
    # Every change of one transaction carries the same revision.
    assert {e.revision for e in state.get_prefix("")} == {3}
    result = (
        state.txn()
        .compare("from", "value", "==", 100)
        .then_put("from", 0)
        .else_put("log", "lost")
        .else_delete("to")
        .commit()
    )
    assert result.succeeded is False and result.revision == 4 and result.changed == 2
    assert state.value("log") == "lost" and state.get("to") is None and state.value("from") == 60


def test_txn_compares_on_absent_keys_and_values(state: State) -> None:
    result = state.txn().compare("x", "version", "==", 0).then_put("x", 1).commit()
    assert result.succeeded
    # An absent key's value equals nothing, not even None.
    result = state.txn().compare("nope", "value", "==", None).then_put("y", 1).commit()
    assert not result.succeeded and result.changed == 0
    assert state.revision() == 1  # a transaction that changes nothing takes no revision
    state.put("d", {"a": 1, "b": 2})
    # Equal values compare equal even when serialised in another key order.
    result = state.txn().compare("d", "value", "==", {"b": 2, "a": 1}).then_delete("d").commit()
    assert result.succeeded


def test_txn_delete_prefix(state: State) -> None:
    for i in range(3):
        state.put(f"tmp/{i}", i)
    state.put("keep", 1)
    result = state.txn().then_delete("tmp/", prefix=True).commit()
    assert result.changed == 3
    assert [e.key for e in state.get_prefix("")] == ["keep"]
    assert state.delete_prefix("nothing/") == 0


def test_namespaces(app: accord.App) -> None:
    app.state.put("shared", 1)
    run = app.state.run(7)
    agent = app.state.agent("scout")
    run.put("step", "a")
    agent.put("mood", "ok")
    assert run.get("step").key == "step"  # type: ignore[union-attr]
    assert app.state.value("runs/7/step") == "a"
    assert [e.key for e in app.state.get_prefix("")] == [
        "agents/scout/mood",
        "runs/7/step",
        "shared",
    ]
    root = State(app.store)
    assert root.value("st/agents/scout/mood") == "ok"
    assert [e.key for e in run.get_prefix("")] == ["step"]
    other = accord.App("other", store=app.store)
    assert other.state.get("shared") is None


def test_history_of_key_and_prefix(state: State) -> None:
    state.put("a", 1)
    state.put("b", 1)
    state.put("a", 2)
    state.delete("a")
    changes = state.history("a")
    assert [(c.kind, c.value, c.revision, c.version) for c in changes] == [
        ("put", 1, 1, 1),
        ("put", 2, 3, 2),
        ("delete", None, 4, 3),
    ]
    assert [c.revision for c in state.history("", prefix=True)] == [1, 2, 3, 4]
    assert [c.revision for c in state.history("a", start_revision=3, end_revision=3)] == [3]
    assert len(state.history("", prefix=True, limit=2)) == 2


def test_snapshot_rollback_and_stale_cas(state: State) -> None:
    """S4: a rollback is a new revision; a CAS expecting an old version fails."""
    state.put("cfg/lr", 0.1)
    state.put("cfg/bs", 32)
    state.put("other", "x")
    snap = state.snapshot("good")
    assert snap == 3
    seen = state.get("cfg/lr")
    assert seen is not None and seen.version == 1
    state.put("cfg/lr", 0.5)  # v2
    state.put("cfg/new", 1)
    state.delete("cfg/bs")
    state.put("other", "y")
    watch = state.watch("cfg/")
    revision = state.rollback("cfg/", to="good")
    assert revision == 8
    assert {e.key: e.value for e in state.get_prefix("cfg/")} == {"cfg/lr": 0.1, "cfg/bs": 32}
    assert state.value("other") == "y"  # outside the prefix: untouched
    lr = state.get("cfg/lr")
    assert lr is not None and lr.value == 0.1 and lr.version == 3 and lr.revision == 8
    with pytest.raises(accord.ConflictError):
        state.put("cfg/lr", 0.9, expect_version=seen.version)
    events = watch.poll()
    assert {(e.kind, e.key) for e in events} == {
        ("put", "cfg/lr"),
        ("put", "cfg/bs"),
        ("delete", "cfg/new"),
    }
    assert {e.revision for e in events} == {8}
    # Nothing differs: nothing written.
    assert state.rollback("cfg/", to=snap) == 8
    assert [s.name for s in state.snapshots()] == ["good"]
    with pytest.raises(accord.ConflictError):
        state.snapshot("good")
    assert state.delete_snapshot("good") and not state.delete_snapshot("good")
    with pytest.raises(accord.NotFoundError):
        state.rollback("cfg/", to="good")


def test_compaction_keeps_values_and_refuses_old_revisions(state: State) -> None:
    for i in range(5):
        state.put("k", i)  # revisions 1..5
    state.put("gone", 1)  # 6
    state.delete("gone")  # 7
    assert state.compact(revision=6) == 6
    assert state.value("k") == 4
    assert state.get("k", revision=6).value == 4  # type: ignore[union-attr]
    with pytest.raises(accord.CompactedError) as caught:
        state.get("k", revision=5)
    assert caught.value.compacted == 6
    with pytest.raises(accord.CompactedError):
        state.watch("", start_revision=5)
    with pytest.raises(accord.CompactedError):
        state.rollback("", to=3)
    assert [c.revision for c in state.watch("", start_revision=6).poll()] == [6, 7]
    assert [c.value for c in state.history("k")] == [4]
    state.compact()  # to 7: the delete at 7 stays (a watch from 7 needs it), the put goes
    assert [c.kind for c in state.history("gone")] == ["delete"] and state.get("gone") is None


def test_snapshots_hold_compaction_back(state: State) -> None:
    state.put("k", 1)
    state.snapshot("s")
    for i in range(5):
        state.put("k", i + 2)
    assert state.compact() == 1
    assert state.rollback("", to="s") == 7 and state.value("k") == 1
    state.delete_snapshot("s")
    assert state.compact(keep=2) == 6


def test_retention_compacts_as_writes_go_on(state: State) -> None:
    state.set_retention(100)
    for i in range(600):
        state.put(f"k{i % 10}", i)
    status = state.store.kv_status()
    assert status.retain == 100
    assert status.compacted > 300
    assert len(state.history("", prefix=True)) <= 400
    assert state.value("k9") == 599


@pytest.mark.parametrize(
    "key",
    ["", "a\x00b", "\ud800", "x" * (MAX_KEY_BYTES + 1), 5, None, b"bytes"],
    ids=["empty", "nul", "surrogate", "too-long", "int", "none", "bytes"],
)
def test_bad_keys_are_refused_and_change_nothing(state: State, key: Any) -> None:
    state.put("ok", 1)
    with pytest.raises(accord.ConfigError):
        state.put(key, 1)
    with pytest.raises(accord.ConfigError):
        state.get(key)
    with pytest.raises(accord.ConfigError):
        state.txn().then_put("ok", 2).then_delete(key).commit()
    assert state.revision() == 1 and state.value("ok") == 1


def test_namespace_counts_towards_key_length(app: accord.App) -> None:
    key = "k" * (MAX_KEY_BYTES - 2)
    State(app.store).put(key, 1)
    with pytest.raises(accord.ConfigError, match="namespace included"):
        app.state.put(key, 1)


def test_bad_values_are_refused_and_change_nothing(state: State) -> None:
    with pytest.raises(TypeError, match="cannot be serialised"):
        state.put("k", object())
    with pytest.raises(TypeError):
        state.txn().then_put("a", 1).then_put("b", object()).commit()
    # Without an object store to move it to, a large value is refused.
    with pytest.raises(accord.PayloadTooLargeError, match="object store"):
        accord.State(state.store, state.prefix).put("big", b"x" * (2 << 20))
    with pytest.raises(TypeError, match="64 bits"):
        state.put("huge", 10**30)
    assert state.revision() == 0 and state.get_prefix("") == []


def test_bad_revisions_and_transactions(state: State) -> None:
    state.put("k", 1)
    with pytest.raises(accord.ConfigError, match="future"):
        state.get("k", revision=5)
    with pytest.raises(accord.ConfigError, match="future"):
        state.watch("", start_revision=3)
    with pytest.raises(accord.ConfigError):
        state.get("k", revision=-1)
    with pytest.raises(accord.ConfigError):
        state.get("k", revision=True)  # type: ignore[arg-type]
    with pytest.raises(accord.ConfigError, match="no operations"):
        state.txn().compare("k", "version", "==", 1).commit()
    with pytest.raises(accord.ConfigError, match="twice"):
        state.txn().then_put("a", 1).then_put("a", 2).commit()
    with pytest.raises(accord.ConfigError, match="deleted prefix"):
        state.txn().then_delete("a", prefix=True).then_put("ab", 2).commit()
    with pytest.raises(accord.ConfigError):
        state.txn().compare("k", "value", "<", 3)
    with pytest.raises(accord.ConfigError):
        state.txn().compare("k", "colour", "==", 3)  # type: ignore[arg-type]
    with pytest.raises(accord.ConfigError):
        state.txn().compare("k", "version", "==", "3")
    with pytest.raises(accord.ConfigError):
        state.compact(revision=10)
    with pytest.raises(accord.ConfigError, match="every key of the store"):
        State(state.store).delete_prefix("")
    assert state.revision() == 1


def test_errors_pickle(state: State) -> None:
    state.put("k", 1)
    state.compact()
    with pytest.raises(accord.CompactedError) as caught:
        state.get("k", revision=0)
    again = pickle.loads(pickle.dumps(caught.value))
    assert type(again) is accord.CompactedError and again.compacted == 1
    assert isinstance(again, accord.NotFoundError)


def test_state_survives_reopening(store_url: str) -> None:
    with accord.App("st", store=store_url) as app:
        app.state.put("durable", [1, 2, 3])
        app.state.snapshot("s")
    with accord.App("st", store=store_url) as app:
        assert app.state.value("durable") == [1, 2, 3]
        assert app.state.revision() == 1
        assert app.state.put("durable", 4) == 2
