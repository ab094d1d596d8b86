"""The state store against a simple in-memory model of the same semantics
(Hypothesis stateful testing): puts, compare-and-set, multi-key transactions,
deletes, reads at old revisions, snapshots, rollback, compaction, watches.
On SQLite (a file per example) and on PostgreSQL (a schema per example)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import accord
from accord.state import State
from support import pgserver

KEYS = st.sampled_from(["a", "b", "a/x", "a/y", "b/z", "c"])
PREFIXES = st.sampled_from(["", "a", "a/", "b/", "c", "zz"])
VALUES = st.one_of(st.integers(-3, 3), st.none(), st.lists(st.integers(0, 2), max_size=2))


@dataclass
class Model:
    """What the store must say: live keys, every change, snapshots, compaction."""

    revision: int = 0
    live: dict[str, tuple[Any, int, int, int]] = field(
        default_factory=dict
    )  # value, ver, mod, create
    versions: dict[str, int] = field(default_factory=dict)  # versions never go back
    history: list[tuple[int, str, str, Any]] = field(default_factory=list)  # rev, key, kind, value
    compacted: int = 0
    snapshots: dict[str, int] = field(default_factory=dict)

    def write(self, changes: list[tuple[str, str, Any]]) -> int:
        """Apply (key, kind, value) changes that really change something, as one revision."""
        real = [c for c in changes if c[1] == "put" or c[0] in self.live]
        if not real:
            return self.revision
        self.revision += 1
        for key, kind, value in real:
            version = self.versions.get(key, 0) + 1
            self.versions[key] = version
            if kind == "put":
                create = self.live[key][3] if key in self.live else self.revision
                self.live[key] = (value, version, self.revision, create)
            else:
                del self.live[key]
            self.history.append((self.revision, key, kind, value))
        return self.revision

    def at(self, revision: int) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for rev, key, kind, value in self.history:
            if rev > revision:
                break
            if kind == "put":
                state[key] = value
            else:
                state.pop(key, None)
        return state

    def holds(self, key: str, target: str, op: str, operand: Any) -> bool:
        row = self.live.get(key)
        if target == "value":
            if row is None:
                return op == "!="
            return (row[0] == operand) == (op == "==")
        seen = 0 if row is None else {"version": row[1], "revision": row[2]}[target]
        return {"==": seen == operand, "!=": seen != operand, "<": seen < operand}[op]


class StateMachine(RuleBasedStateMachine):
    snapshots = Bundle("snapshots")

    def store_url(self) -> str:
        """A fresh store for one example (an SQLite file here)."""
        return f"sqlite:///{self.folder}/m.db"

    @initialize()
    def open(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="accord-model-")
        self.app = accord.App("m", store=self.store_url())
        self.state: State = self.app.state
        self.model = Model()
        self.names = 0

    def teardown(self) -> None:
        if hasattr(self, "app"):
            self.app.close()
            shutil.rmtree(self.folder, ignore_errors=True)

    @rule(key=KEYS, value=VALUES)
    def put(self, key: str, value: Any) -> None:
        assert self.state.put(key, value) == self.model.write([(key, "put", value)])

    @rule(key=KEYS, value=VALUES, offset=st.sampled_from([0, 0, -1, 1]))
    def compare_and_set(self, key: str, value: Any, offset: int) -> None:
        current = self.model.live.get(key)
        expect = (0 if current is None else current[1]) + offset
        if expect < 0:
            return
        if offset == 0:
            assert self.state.put(key, value, expect_version=expect) == self.model.write(
                [(key, "put", value)]
            )
        else:
            try:
                self.state.put(key, value, expect_version=expect)
            except accord.ConflictError:
                return
            raise AssertionError(f"a stale CAS on {key} (expected {expect}) succeeded")

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        existed = key in self.model.live
        assert self.state.delete(key) is existed
        self.model.write([(key, "delete", None)])

    @rule(
        compares=st.lists(
            st.tuples(
                KEYS,
                st.sampled_from(["value", "version", "revision"]),
                st.sampled_from(["==", "!=", "<"]),
                st.integers(0, 4),
            ),
            max_size=3,
        ),
        then=st.dictionaries(
            KEYS, st.one_of(st.none(), VALUES.map(lambda v: ("put", v))), max_size=3
        ),
        orelse=st.dictionaries(
            KEYS, st.one_of(st.none(), VALUES.map(lambda v: ("put", v))), max_size=2
        ),
    )
    def transaction(
        self,
        compares: list[tuple[str, str, str, int]],
        then: dict[str, Any],
        orelse: dict[str, Any],
    ) -> None:
        if not then and not orelse:
            return
        txn = self.state.txn()
        for key, target, op, operand in compares:
            if target == "value" and op == "<":
                op = "=="
            txn.compare(key, target, op, operand)  # type: ignore[arg-type]
        for branch, put, delete in (
            (then, txn.then_put, txn.then_delete),
            (orelse, txn.else_put, txn.else_delete),
        ):
            for key, action in branch.items():
                if action is None:
                    delete(key)
                else:
                    put(key, action[1])
        ok = all(
            self.model.holds(k, t, "==" if (t == "value" and o == "<") else o, v)
            for k, t, o, v in compares
        )
        chosen = then if ok else orelse
        expected = self.model.write(
            [(k, "delete", None) if a is None else (k, "put", a[1]) for k, a in chosen.items()]
        )
        result = txn.commit()
        assert result.succeeded is ok and result.revision == expected

    @rule(target=snapshots)
    def snapshot(self) -> str:
        self.names += 1
        name = f"s{self.names}"
        assert self.state.snapshot(name) == self.model.revision
        self.model.snapshots[name] = self.model.revision
        return name

    @rule(prefix=PREFIXES, name=snapshots)
    def rollback_to_snapshot(self, prefix: str, name: str) -> None:
        self._rollback(prefix, self.model.snapshots[name], name)

    @rule(prefix=PREFIXES, back=st.integers(0, 6))
    def rollback_to_revision(self, prefix: str, back: int) -> None:
        revision = max(self.model.revision - back, 0)
        if revision < self.model.compacted:
            try:
                self.state.rollback(prefix, to=revision)
            except accord.CompactedError:
                return
            raise AssertionError("a rollback below the compaction point was accepted")
        self._rollback(prefix, revision, revision)

    def _rollback(self, prefix: str, revision: int, to: str | int) -> None:
        past = self.model.at(revision)
        keys = sorted(k for k in set(past) | set(self.model.live) if k.startswith(prefix))
        changes: list[tuple[str, str, Any]] = []
        for key in keys:
            if key not in past:
                changes.append((key, "delete", None))
            elif key not in self.model.live or self.model.live[key][0] != past[key]:
                changes.append((key, "put", past[key]))
        assert self.state.rollback(prefix, to=to) == self.model.write(changes)

    @rule(name=consumes(snapshots))
    def drop_snapshot(self, name: str) -> None:
        assert self.state.delete_snapshot(name)
        del self.model.snapshots[name]

    @precondition(lambda self: self.model.revision > 0)
    @rule(back=st.integers(0, 5))
    def compact(self, back: int) -> None:
        target = max(self.model.revision - back, 1)
        pinned = min(self.model.snapshots.values(), default=target)
        expected = max(self.model.compacted, min(target, pinned))
        assert self.state.compact(target) == expected
        self.model.compacted = expected

    @rule(key=KEYS, back=st.integers(0, 8))
    def read_in_the_past(self, key: str, back: int) -> None:
        revision = max(self.model.revision - back, 0)
        if revision < self.model.compacted:
            try:
                self.state.get(key, revision=revision)
            except accord.CompactedError:
                return
            raise AssertionError("a read below the compaction point was accepted")
        entry = self.state.get(key, revision=revision)
        past = self.model.at(revision)
        assert (entry is None) == (key not in past)
        if entry is not None:
            assert entry.value == past[key]
        listed = {e.key: e.value for e in self.state.get_prefix("", revision=revision)}
        assert listed == past

    @invariant()
    def live_keys_match(self) -> None:
        if not hasattr(self, "model"):
            return
        entries = self.state.get_prefix("")
        assert {e.key: (e.value, e.version, e.revision, e.create_revision) for e in entries} == (
            self.model.live
        )
        assert self.state.revision() == self.model.revision

    @invariant()
    def a_watch_replays_history(self) -> None:
        if not hasattr(self, "model"):
            return
        start = max(self.model.compacted, 1)
        changes = self.state.watch("", start_revision=start).poll()
        expected = [(r, k, kind, v) for r, k, kind, v in self.model.history if r >= start]
        assert [(c.revision, c.key, c.kind.value, c.value) for c in changes] == expected


StateMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStateModel = StateMachine.TestCase


def test_the_model_on_postgresql(pg_server: pgserver.PgServer) -> None:
    class OnPostgres(StateMachine):
        def store_url(self) -> str:
            return pg_server.schema_url("model")

    run_state_machine_as_test(
        OnPostgres,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
