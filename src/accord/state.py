"""The state store: versioned keys shared by every agent, task and node.

Modelled on etcd's data model, served from accord's own store:

- Keys are strings in namespaces. ``app.state`` is the app's namespace
  (keys under ``<app>/``); ``app.state.run(run_id)`` and
  ``app.state.agent(name)`` are namespaces inside it, and inside a task
  ``accord.current().state`` is its run's. Values are anything
  :mod:`accord.serde` takes.
- Every write transaction takes the next global revision. An entry carries
  the revision of its last change and its version (the number of writes to
  the key, never reused, also across a delete or a rollback).
- :meth:`State.txn` compares value, version or revisions of several keys and
  then applies puts and deletes, all or nothing; ``put(..., expect_version=)``
  is the one-key compare-and-set and raises :class:`~accord.ConflictError`
  when it loses.
- :meth:`State.watch` yields every change under a key or prefix from a
  revision on, in revision order, with no gap and no duplicate, also across
  restarts (resume from :attr:`Watch.revision`).
- History, named snapshots, rollback (a new revision equal to an old one),
  compaction with a retention setting.
- Leases keep keys alive while their owner does; :class:`Lock` and
  :class:`Election` are recipes on top, with fencing tokens.

Inside a task attempt every write carries the attempt's fence and is refused
(:class:`~accord.FencedError`, nothing written) once the attempt has lost its
lease.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from accord import context, serde
from accord._checks import check_text as _check_text
from accord.errors import (
    AccordError,
    ConfigError,
    ConflictError,
    LeaseExpiredError,
    PayloadTooLargeError,
    StoreError,
)
from accord.store.state_base import (
    OPS,
    TARGETS,
    ChangeKind,
    Fence,
    KvChange,
    KvCompare,
    KvDelete,
    KvOp,
    KvPut,
    KvRow,
    Op,
    StateStore,
    Target,
)

if TYPE_CHECKING:
    from accord.store.base import Store

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "Change",
    "ChangeKind",
    "Election",
    "Entry",
    "Leadership",
    "Lease",
    "Lock",
    "SnapshotInfo",
    "State",
    "Txn",
    "TxnResult",
    "Watch",
]

MAX_KEY_BYTES = 1024
"""Longest key, namespace included, in UTF-8 bytes."""
MAX_VALUE_BYTES = 1024 * 1024
"""Largest serialised value; keep larger data outside the store and its path here."""

# A watcher waiting for changes checks the store's change counter this often
# at first and backs off to the slower pace (which bounds the latency).
POLL_FAST = 0.0002
POLL_SLOW = 0.005
# ... and looks for expired leases (whose keys nobody deleted yet) this often.
LEASE_SWEEP = 0.25
WATCH_PAGE = 1000


def check_name(name: object, what: str, *, limit: int = MAX_KEY_BYTES) -> str:
    """Validate a key, prefix or name: a non-empty string of valid text, no NUL,
    at most ``limit`` UTF-8 bytes. The same names are refused on every backend
    (:class:`~accord.ConfigError` with ``argument`` = ``what``)."""
    if not isinstance(name, str):
        raise ConfigError(
            f"{what} must be a string, not {type(name).__name__} ({name!r})", argument=what
        )
    if not name:
        raise ConfigError(f"{what} is empty; give a non-empty string", argument=what)
    _check_text(name, what, limit)
    return name


def _check_int(value: object, what: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an integer, not {value!r}")
    if value < minimum:
        raise ConfigError(f"{what} must be at least {minimum}, not {value}")
    if value >= 1 << 62:
        raise ConfigError(f"{what} {value} is too large")
    return value


def _check_seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{what} must be a number of seconds, not {value!r}")
    seconds = float(value)
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"{what} must be a positive, finite number of seconds, not {value!r}")
    return seconds


def _check_delay(value: object, what: str) -> float:
    """A finite number of seconds >= 0 (never NaN: the backends store it differently)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value < float("inf")
    ):
        raise ConfigError(f"{what} must be a finite number of seconds >= 0, not {value!r}")
    return float(value)


def _check_timeout(value: object, what: str = "timeout") -> float | None:
    """How long to wait: ``None`` or ``inf`` (no limit), else seconds >= 0; never NaN."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{what} must be a number of seconds >= 0 or None, not {value!r}")
    seconds = float(value)
    if not seconds >= 0:
        raise ConfigError(f"{what} must be a number of seconds >= 0 or None, not {value!r}")
    return None if seconds == float("inf") else seconds


@dataclass(frozen=True, slots=True)
class Entry:
    """A key's value with the revision of its last change and its version."""

    key: str
    value: Any
    revision: int
    version: int
    create_revision: int
    lease: int | None


@dataclass(frozen=True, slots=True)
class Change:
    """One change of one key: ``kind`` is ``"put"`` or ``"delete"`` (value None)."""

    kind: ChangeKind
    key: str
    value: Any
    revision: int
    version: int
    at: float


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Whether the compares held (then-branch) or not (else-branch), the
    revision written (the current one if nothing changed) and how many keys
    changed."""

    succeeded: bool
    revision: int
    changed: int


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    name: str
    revision: int
    created_at: float


class State:
    """A namespace of the state store (see the module docstring).

    Usually reached as ``app.state``; ``State(store)`` is the root namespace
    of a store (every key, as the CLI sees them). Safe to share between
    threads.

    Example::

        rev = app.state.put("config/lr", 0.01)
        entry = app.state.get("config/lr")
        app.state.put("config/lr", 0.02, expect_version=entry.version)
    """

    def __init__(
        self, store: Store | StateStore, prefix: str = "", *, max_value: int = MAX_VALUE_BYTES
    ) -> None:
        if not isinstance(store, StateStore):
            raise ConfigError(f"the store {store!r} has no state store")
        if prefix:
            _check_text(prefix, "namespace", MAX_KEY_BYTES)
        self._store = store
        self.prefix = prefix
        self.max_value = max_value

    def __repr__(self) -> str:
        return f"<State {self.prefix or '(root)'} at {self._store.url}>"

    @property
    def store(self) -> StateStore:
        return self._store

    # -- namespaces ---------------------------------------------------------
    def scope(self, name: str) -> State:
        """The namespace ``name`` inside this one (keys under ``<prefix><name>/``)."""
        check_name(name, "namespace")
        return State(self._store, f"{self.prefix}{name}/", max_value=self.max_value)

    def run(self, run_id: int) -> State:
        """The namespace of a run: ``runs/<run_id>/``."""
        return self.scope(f"runs/{_check_int(run_id, 'run id', minimum=1)}")

    def agent(self, name: str) -> State:
        """The namespace of an agent: ``agents/<name>/``."""
        return self.scope(f"agents/{check_name(name, 'agent name')}")

    # -- helpers --------------------------------------------------------------
    def _key(self, key: object, what: str = "key") -> str:
        check_name(key, what)
        full = self.prefix + str(key)
        if self.prefix:
            _check_text(full, what, MAX_KEY_BYTES)
        return full

    def _prefix(self, prefix: object) -> str:
        if not isinstance(prefix, str):
            raise ConfigError(
                f"prefix must be a string, not {type(prefix).__name__}", argument="prefix"
            )
        _check_text(prefix, "prefix", MAX_KEY_BYTES)
        full = self.prefix + prefix
        if self.prefix:
            _check_text(full, "prefix", MAX_KEY_BYTES)
        return full

    def _rel(self, key: str) -> str:
        return key[len(self.prefix) :]

    def _encode(self, key: str, value: Any) -> bytes:
        data = serde.dumps(value, what=f"the value of state key {self._rel(key)!r}")
        if len(data) > self.max_value:
            raise PayloadTooLargeError(
                f"the value of state key {self._rel(key)!r} takes {len(data)} bytes, over the "
                f"limit of {self.max_value}; write large data where every node can read it "
                "(a shared file system or a bucket) and keep its path here",
                key=key,
                size=len(data),
                limit=self.max_value,
            )
        return data

    def _fence(self) -> tuple[Fence, int | None]:
        fence = context.fence_for(self._store.url)
        return fence, (fence[0] if fence else None)

    def _entry(self, row: KvRow) -> Entry:
        return Entry(
            self._rel(row.key),
            serde.loads(row.value),
            row.revision,
            row.version,
            row.create_revision,
            row.lease_id,
        )

    def _change(self, c: KvChange) -> Change:
        return Change(c.kind, self._rel(c.key), serde.loads(c.value), c.revision, c.version, c.at)

    def _revision_arg(self, revision: object, what: str) -> int | None:
        if revision is None:
            return None
        return _check_int(revision, what)

    # -- reads ----------------------------------------------------------------
    def revision(self) -> int:
        """The store's current revision (of the last write transaction)."""
        return self._store.kv_status().revision

    def get(self, key: str, *, revision: int | None = None) -> Entry | None:
        """The key's entry (at ``revision`` if given), or ``None`` if absent.

        Raises :class:`~accord.CompactedError` for a revision before the
        compaction point and :class:`~accord.ConfigError` for a future one.
        """
        full = self._key(key)
        row, _ = self._store.kv_get(full, self._revision_arg(revision, "revision"))
        return None if row is None else self._entry(row)

    def value(self, key: str, default: Any = None) -> Any:
        """The key's value, or ``default`` if it is absent."""
        entry = self.get(key)
        return default if entry is None else entry.value

    def get_prefix(
        self, prefix: str = "", *, revision: int | None = None, limit: int | None = None
    ) -> list[Entry]:
        """Every key under ``prefix`` in key order (at ``revision`` if given)."""
        full = self._prefix(prefix)
        if limit is not None:
            _check_int(limit, "limit", minimum=1)
        rows, _ = self._store.kv_range(full, self._revision_arg(revision, "revision"), limit)
        return [self._entry(r) for r in rows]

    def history(
        self,
        key: str,
        *,
        prefix: bool = False,
        start_revision: int = 0,
        end_revision: int | None = None,
        limit: int | None = None,
    ) -> list[Change]:
        """The kept changes of ``key`` (or, with ``prefix``, of every key under
        it), oldest first. Compaction drops old changes but keeps each key's
        value at the compaction point."""
        full = self._prefix(key) if prefix else self._key(key)
        if limit is not None:
            _check_int(limit, "limit", minimum=1)
        changes = self._store.kv_history(
            full,
            prefix,
            _check_int(start_revision, "start_revision"),
            self._revision_arg(end_revision, "end_revision"),
            limit,
        )
        return [self._change(c) for c in changes]

    # -- writes ---------------------------------------------------------------
    def txn(self) -> Txn:
        """Start a compare/then/else transaction (see :class:`Txn`)."""
        return Txn(self)

    def put(
        self,
        key: str,
        value: Any,
        *,
        expect_version: int | None = None,
        lease: Lease | int | None = None,
    ) -> int:
        """Write ``key`` and return the new revision.

        With ``expect_version`` the write happens only if the key is at that
        version (0: only if it is absent), else :class:`~accord.ConflictError`
        (with ``key``, ``expected`` and ``actual``) and nothing is written.
        With ``lease`` the key is deleted when the lease ends.
        """
        txn = Txn(self)
        if expect_version is not None:
            txn.compare(key, "version", "==", expect_version)
        result = txn.then_put(key, value, lease=lease)._commit(conflict=True)
        return result.revision

    def create(self, key: str, value: Any, *, lease: Lease | int | None = None) -> int:
        """Write ``key`` only if it is absent; :class:`~accord.ConflictError` otherwise."""
        return self.put(key, value, expect_version=0, lease=lease)

    def delete(self, key: str, *, expect_version: int | None = None) -> bool:
        """Delete ``key``; ``False`` if it was absent. ``expect_version`` as in :meth:`put`."""
        txn = Txn(self)
        if expect_version is not None:
            txn.compare(key, "version", "==", expect_version)
        return txn.then_delete(key)._commit(conflict=True).changed > 0

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix`` (in one revision); return how many."""
        full = self._prefix(prefix)
        if not full:
            raise ConfigError(
                "delete_prefix('') on the root namespace would delete every key of the store; "
                "name a prefix"
            )
        fence, task_id = self._fence()
        outcome = self._store.kv_txn([], [KvDelete(full, True)], [], fence=fence, task_id=task_id)
        return outcome.changed

    # -- watches --------------------------------------------------------------
    def watch(
        self, prefix: str = "", *, start_revision: int | None = None, exact: bool = False
    ) -> Watch:
        """Iterate over every change under ``prefix`` (or of the one key
        ``prefix`` with ``exact``) from ``start_revision`` on (default: changes
        after now), in revision order, each exactly once.

        Resume after a restart from :attr:`Watch.revision` (or from the last
        change's revision + 1 once all changes of that revision are handled):
        nothing is missed. A start before the compaction point raises
        :class:`~accord.CompactedError`, now or while the watch lags behind
        a compaction; a start after the next revision raises
        :class:`~accord.ConfigError`.
        """
        full = self._key(prefix, "watched key") if exact else self._prefix(prefix)
        status = self._store.kv_status()
        if start_revision is None:
            start = status.revision + 1
        else:
            start = _check_int(start_revision, "start_revision")
            if start > status.revision + 1:
                raise ConfigError(
                    f"start_revision {start} is in the future: the store is at revision "
                    f"{status.revision}, so watch from {status.revision + 1} at most",
                    revision=start,
                    current=status.revision,
                )
            start = max(start, 1)
        watch = Watch(self, full, not exact, start)
        watch._fill()  # a compacted start raises here, not at the first next()
        return watch

    # -- snapshots, rollback, compaction ----------------------------------------
    def snapshot(self, name: str) -> int:
        """Name the current revision; return it. Snapshots hold compaction back."""
        fence, _ = self._fence()
        return self._store.kv_snapshot(self._key(name, "snapshot name"), fence=fence)

    def snapshots(self) -> list[SnapshotInfo]:
        """This namespace's snapshots, oldest first."""
        return [
            SnapshotInfo(self._rel(s.name), s.revision, s.created_at)
            for s in self._store.kv_snapshots(self.prefix)
        ]

    def delete_snapshot(self, name: str) -> bool:
        fence, _ = self._fence()
        return self._store.kv_delete_snapshot(self._key(name, "snapshot name"), fence=fence)

    def rollback(self, prefix: str = "", *, to: str | int) -> int:
        """Make every key under ``prefix`` what it was at a snapshot (``to`` a
        name) or a revision (``to`` an int), as one new revision; return it.

        History is kept: the rollback is a new write whose versions go on
        counting, so a compare-and-set that expects a version read before the
        rollback fails. Keys that were tied to a lease that has since ended
        stay deleted. Nothing differs: nothing is written and the current
        revision is returned.
        """
        full = self._prefix(prefix)
        fence, task_id = self._fence()
        if isinstance(to, str):
            outcome = self._store.kv_rollback(
                full,
                True,
                snapshot=self._key(to, "snapshot name"),
                fence=fence,
                task_id=task_id,
            )
        else:
            outcome = self._store.kv_rollback(
                full,
                True,
                revision=_check_int(to, "rollback revision"),
                fence=fence,
                task_id=task_id,
            )
        return outcome.revision

    def compact(self, revision: int | None = None, *, keep: int | None = None) -> int:
        """Drop history before ``revision`` (default: the current revision, or
        the last ``keep`` revisions kept); return the compaction point reached.

        Compaction is store-wide. It keeps each key's value at the point and
        never passes the oldest snapshot. Reads, watches and rollbacks before
        the point raise :class:`~accord.CompactedError`.
        """
        current = self.revision()
        if revision is None:
            target = current if keep is None else current - _check_int(keep, "keep") + 1
        else:
            if keep is not None:
                raise ConfigError("give compact() a revision or keep=, not both")
            target = _check_int(revision, "compaction revision")
        if target < 1:
            return self._store.kv_status().compacted
        fence, _ = self._fence()
        return self._store.kv_compact(target, fence=fence)

    def set_retention(self, keep: int | None) -> None:
        """Keep about the last ``keep`` revisions of history, compacting as
        writes go on (``None``: keep everything, the default). Store-wide."""
        if keep is not None:
            _check_int(keep, "keep", minimum=1)
        self._store.kv_set_retention(keep)

    # -- leases and recipes ---------------------------------------------------------
    def lease(self, ttl: float) -> Lease:
        """Grant a lease of ``ttl`` seconds. Keys put with it are deleted once
        it is revoked or not kept alive for ``ttl`` seconds. Use it as a
        context manager to keep it alive from a thread and revoke it at the end.
        """
        seconds = _check_seconds(ttl, "lease ttl")
        fence, _ = self._fence()
        row = self._store.lease_grant(seconds, fence=fence)
        return Lease(self._store, row.id, seconds, row.expires_at, fence)

    def lock(self, name: str, *, ttl: float = 10.0) -> Lock:
        """A lock named ``name`` in this namespace (key ``locks/<name>``)."""
        return Lock(self, name, ttl=ttl)

    def election(self, name: str) -> Election:
        """A leader election named ``name`` in this namespace (key ``elections/<name>``)."""
        return Election(self, name)


class Txn:
    """A compare/then/else transaction, built by chaining and run by :meth:`commit`.

    Compares (``target`` is ``"value"``, ``"version"``, ``"revision"``,
    ``"create_revision"`` or ``"lease"``; values compare with ``==``/``!=``
    only). An absent key has version and revisions 0, and its value equals
    nothing. Keys may appear once per branch.

    Example::

        result = (
            app.state.txn()
            .compare("a", "version", "==", 3)
            .compare("b", "value", "==", "open")
            .then_put("a", 4)
            .then_delete("b")
            .else_put("log/lost", "a moved")
            .commit()
        )
        result.succeeded, result.revision
    """

    def __init__(self, state: State) -> None:
        self._state = state
        self._compares: list[KvCompare] = []
        self._then: list[KvOp] = []
        self._else: list[KvOp] = []

    def compare(self, key: str, target: Target, op: Op, operand: Any) -> Txn:
        """Require ``<target of key> <op> operand``."""
        full = self._state._key(key)
        if target not in TARGETS:
            raise ConfigError(f"compare target {target!r} is unknown; use one of {TARGETS}")
        if op not in OPS:
            raise ConfigError(f"compare operator {op!r} is unknown; use one of {OPS}")
        if target == "value":
            if op not in ("==", "!="):
                raise ConfigError(
                    f"values compare with == or != only, not {op!r} (compare versions or "
                    "revisions to order writes)"
                )
            operand = self._state._encode(full, operand)
        else:
            operand = _check_int(operand, f"the {target} to compare {key!r} with")
        self._compares.append(KvCompare(full, target, op, operand))
        return self

    def holding(self, lock: Lock | Leadership) -> Txn:
        """Require that ``lock`` (or leadership) is still held by its token."""
        if lock.token is None:
            raise ConfigError(f"{lock!r} is not held; acquire it first")
        self._compares.append(KvCompare(lock._full_key, "create_revision", "==", lock.token))
        return self

    def _put(self, key: str, value: Any, lease: Lease | int | None) -> KvPut:
        full = self._state._key(key)
        lease_id: int | None
        if lease is None:
            lease_id = None
        elif isinstance(lease, Lease):
            lease_id = lease.id
        else:
            lease_id = _check_int(lease, "lease id", minimum=1)
        return KvPut(full, self._state._encode(full, value), lease_id)

    def _delete(self, key: str, prefix: bool) -> KvDelete:
        full = self._state._prefix(key) if prefix else self._state._key(key)
        if prefix and not full:
            raise ConfigError("deleting prefix '' on the root namespace would delete every key")
        return KvDelete(full, prefix)

    def then_put(self, key: str, value: Any, *, lease: Lease | int | None = None) -> Txn:
        self._then.append(self._put(key, value, lease))
        return self

    def then_delete(self, key: str, *, prefix: bool = False) -> Txn:
        self._then.append(self._delete(key, prefix))
        return self

    def else_put(self, key: str, value: Any, *, lease: Lease | int | None = None) -> Txn:
        self._else.append(self._put(key, value, lease))
        return self

    def else_delete(self, key: str, *, prefix: bool = False) -> Txn:
        self._else.append(self._delete(key, prefix))
        return self

    def commit(self) -> TxnResult:
        """Run the transaction, all or nothing, as one revision."""
        return self._commit(conflict=False)

    def _commit(self, *, conflict: bool) -> TxnResult:
        if not self._then and not self._else:
            raise ConfigError(
                "the transaction has no operations: add then_put/then_delete (or else_...) "
                "before commit()"
            )
        for branch in (self._then, self._else):
            _check_branch(branch, self._state)
        fence, task_id = self._state._fence()
        outcome = self._state._store.kv_txn(
            self._compares, self._then, self._else, fence=fence, task_id=task_id
        )
        if conflict and not outcome.succeeded:
            compare, seen = outcome.failed[0]
            key = self._state._rel(compare.key)
            raise ConflictError(
                f"state key {key!r} is at version {seen}, not the expected "
                f"{compare.operand}; nothing was written: re-read the key and retry",
                key=key,
                expected=compare.operand,
                actual=seen,
                revision=outcome.revision,
            )
        return TxnResult(outcome.succeeded, outcome.revision, outcome.changed)


def _check_branch(ops: list[KvOp], state: State) -> None:
    seen: set[str] = set()
    prefixes = [op.key for op in ops if isinstance(op, KvDelete) and op.prefix]
    for op in ops:
        if isinstance(op, KvDelete) and op.prefix:
            continue
        if op.key in seen:
            raise ConfigError(
                f"key {state._rel(op.key)!r} appears twice in one branch of the transaction; "
                "write each key once"
            )
        seen.add(op.key)
        for p in prefixes:
            if op.key.startswith(p):
                raise ConfigError(
                    f"key {state._rel(op.key)!r} is also under a deleted prefix "
                    f"{state._rel(p)!r} in the same branch; write each key once"
                )


class Watch:
    """An iterator of :class:`Change` s (see :meth:`State.watch`).

    ``next(watch)`` waits for the next change; :meth:`get` waits at most a
    timeout. The watch reads the store's history from where it stands, so a
    slow consumer holds nothing in memory beyond one page, and one that falls
    behind a compaction gets :class:`~accord.CompactedError`, never a gap.
    """

    def __init__(self, state: State, key: str, prefix: bool, start: int) -> None:
        self._state = state
        self._key = key
        self._is_prefix = prefix
        self._read_from = start
        self._buffer: deque[Change] = deque()
        self._closed = False
        self._swept = 0.0

    def __repr__(self) -> str:
        return f"<Watch {self._key!r} at revision {self.revision}>"

    @property
    def revision(self) -> int:
        """Where to resume so that nothing is missed: the first revision whose
        changes have not all been returned yet (the next revision to be
        written, once the watch has caught up)."""
        return self._buffer[0].revision if self._buffer else self._read_from

    def _fill(self) -> None:
        page = self._state._store.kv_changes(
            self._key, self._is_prefix, self._read_from, WATCH_PAGE
        )
        self._buffer.extend(self._state._change(c) for c in page.changes)
        self._read_from = page.next_revision

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> Change:
        change = self.get(None)
        if change is None:
            raise StopIteration
        return change

    def get(self, timeout: float | None = None) -> Change | None:
        """The next change, waiting at most ``timeout`` seconds (``None``: no limit)."""
        wait = _check_timeout(timeout)
        deadline = None if wait is None else time.monotonic() + wait
        store = self._state._store
        while not self._closed:
            if self._buffer:
                return self._buffer.popleft()
            # Not notifications alone: the history is read from where the
            # watch stands, and the change counter only says when to look
            # again. Its baseline is taken before the read, so a commit
            # landing in between is seen at the next check, not lost.
            store.changed()
            self._fill()
            if self._buffer:
                continue
            pause = POLL_FAST
            while not store.changed():
                now = time.monotonic()
                if self._closed or (deadline is not None and now >= deadline):
                    return None
                if now - self._swept > LEASE_SWEEP:
                    self._swept = now
                    if self._sweep():
                        break  # this connection's own commit: the counter misses it
                time.sleep(pause if deadline is None else min(pause, max(0.0, deadline - now)))
                pause = min(pause * 1.5, POLL_SLOW)
        return None

    def _sweep(self) -> bool:
        # Nobody deletes an expired lease's keys until some process looks:
        # watchers do, so that a dead owner's keys go away while all is idle.
        store = self._state._store
        expiry = store.kv_status().next_lease_expiry
        if expiry is not None and expiry < store.now():
            return store.kv_expire_leases() > 0
        return False

    def poll(self, timeout: float = 0.0) -> list[Change]:
        """Every change available now (waiting up to ``timeout`` for the first)."""
        first = self.get(timeout)
        if first is None:
            return []
        out = [first]
        while self._buffer:
            out.append(self._buffer.popleft())
        return out

    def close(self) -> None:
        """Stop the watch; iteration ends."""
        self._closed = True

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Lease:
    """A lease granted by :meth:`State.lease`.

    Call :meth:`keepalive` within every ``ttl`` seconds, or use the lease as
    a context manager: a thread keeps it alive every ``ttl / 3`` seconds and
    the lease is revoked at the end. :attr:`lost` is set once the lease is
    known to have ended; its keys are then gone.
    """

    def __init__(
        self, store: StateStore, lease_id: int, ttl: float, expires_at: float, fence: Fence
    ) -> None:
        self._store = store
        self.id = lease_id
        self.ttl = ttl
        self.expires_at = expires_at
        self._fence = fence
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Lease {self.id} ttl={self.ttl}>"

    def keepalive(self) -> float:
        """Extend the lease by its ttl; return the new expiry time (epoch seconds).

        Raises :class:`~accord.LeaseExpiredError` if it already ended.
        """
        try:
            row = self._store.lease_keepalive(self.id, fence=self._fence)
        except LeaseExpiredError:
            self.lost.set()
            raise
        self.expires_at = row.expires_at
        return row.expires_at

    def revoke(self) -> int:
        """End the lease now, deleting its keys; return how many keys went."""
        self.stop_keepalive()
        self.lost.set()
        return self._store.lease_revoke(self.id, fence=self._fence)

    def alive(self) -> bool:
        return self._store.lease_info(self.id) is not None

    def start_keepalive(self, interval: float | None = None) -> None:
        """Keep the lease alive from a daemon thread every ``interval`` seconds."""
        if self._thread is not None:
            return
        every = self.ttl / 3 if interval is None else _check_seconds(interval, "interval")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._keep, args=(every,), name=f"accord-lease-{self.id}", daemon=True
        )
        self._thread.start()

    def _keep(self, every: float) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(every):
            try:
                self.keepalive()
                last_ok = time.monotonic()
            except (LeaseExpiredError, ConflictError):
                self.lost.set()
                return
            except AccordError:
                # The store is unreachable for now: keep trying until the
                # lease must have expired anyway.
                if time.monotonic() - last_ok > self.ttl:
                    self.lost.set()
                    return

    def stop_keepalive(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> Lease:
        self.start_keepalive()
        return self

    def __exit__(self, *exc: Any) -> None:
        with contextlib.suppress(StoreError):
            self.revoke()


class _Holder:
    """A key held through a lease: the base of :class:`Lock` and :class:`Leadership`."""

    def __init__(self, state: State, key: str, ttl: float) -> None:
        self._state = state
        self.key = key
        self._full_key = state._key(key)
        self.ttl = _check_seconds(ttl, "ttl")
        self.lease: Lease | None = None
        self.token: int | None = None

    def _take(self, value: Any, timeout: float | None) -> int:
        """Wait until the key is free, then take it; return the fencing token."""
        if self.token is not None:
            raise ConflictError(f"{self!r} is held already; release it first")
        wait = _check_timeout(timeout)
        deadline = None if wait is None else time.monotonic() + wait
        lease = self._state.lease(self.ttl)
        lease.start_keepalive()
        try:
            while True:
                result = (
                    self._state.txn()
                    .compare(self.key, "version", "==", 0)
                    .then_put(self.key, value, lease=lease)
                    .commit()
                )
                if result.succeeded:
                    self.lease = lease
                    self.token = result.revision
                    return result.revision
                # Wait for the holder's key to go (released, or its lease
                # expired), watching from just after the revision we saw it at.
                watch = self._state.watch(self.key, exact=True, start_revision=result.revision + 1)
                while True:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"{self!r} was not free within {timeout} s")
                    change = watch.get(left)
                    if change is not None and change.kind is ChangeKind.DELETE:
                        break
        except BaseException:
            with contextlib.suppress(StoreError):
                lease.revoke()
            raise

    def _give_back(self) -> None:
        lease, self.lease = self.lease, None
        token, self.token = self.token, None
        if lease is None or token is None:
            return
        lease.stop_keepalive()
        try:
            (
                self._state.txn()
                .compare(self.key, "create_revision", "==", token)
                .then_delete(self.key)
                .commit()
            )
        finally:
            lease.revoke()

    def is_held(self) -> bool:
        """Whether the key still holds this holder's token (the lease did not end)."""
        if self.token is None:
            return False
        entry = self._state.get(self.key)
        return entry is not None and entry.create_revision == self.token


class Lock(_Holder):
    """A lock: one holder at a time, across processes and machines.

    :attr:`token` is the revision at which it was taken: it grows with every
    acquisition, so a resource can refuse writes that carry an older token
    (fencing). Guard state writes with ``txn().holding(lock)``. The lock's
    lease is kept alive from a thread; if the holder dies, the lock frees
    itself after ``ttl`` seconds.

    Example::

        with app.state.lock("model-upload", ttl=10) as lock:
            app.state.txn().holding(lock).then_put("model", ref).commit()
    """

    def __init__(self, state: State, name: str, *, ttl: float = 10.0) -> None:
        check_name(name, "lock name")
        super().__init__(state, f"locks/{name}", ttl)
        self.name = name

    def __repr__(self) -> str:
        return f"<Lock {self.name!r} token={self.token}>"

    def acquire(self, timeout: float | None = None) -> int:
        """Wait (at most ``timeout`` seconds, else ``TimeoutError``) and take
        the lock; return its fencing token."""
        fence = context.fence_for(self._state._store.url)
        holder = {"task": fence[0] if fence else None, "at": time.time()}
        return self._take(holder, timeout)

    def release(self) -> None:
        """Release the lock (nothing happens if it was not held)."""
        self._give_back()

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class Election:
    """A leader election: :meth:`campaign` waits to become leader.

    The leader's value is readable by everyone (:meth:`leader`) and
    observable (:meth:`observe`); the leadership's :attr:`Leadership.token`
    is a fencing token, as for :class:`Lock`.
    """

    def __init__(self, state: State, name: str) -> None:
        check_name(name, "election name")
        self._state = state
        self.name = name
        self.key = f"elections/{name}"

    def __repr__(self) -> str:
        return f"<Election {self.name!r}>"

    def campaign(
        self, value: Any, *, ttl: float = 10.0, timeout: float | None = None
    ) -> Leadership:
        """Wait until this candidate leads (at most ``timeout`` seconds)."""
        leadership = Leadership(self, ttl)
        leadership._take(value, timeout)
        return leadership

    def leader(self) -> Entry | None:
        """The current leader's entry (its value, and its token as
        ``create_revision``), or ``None``."""
        return self._state.get(self.key)

    def observe(self, *, start_revision: int | None = None) -> Watch:
        """Watch the leader key: a put is a new leader or value, a delete a vacancy."""
        return self._state.watch(self.key, exact=True, start_revision=start_revision)


class Leadership(_Holder):
    """Leadership won by :meth:`Election.campaign`; resign to hand it on."""

    def __init__(self, election: Election, ttl: float) -> None:
        super().__init__(election._state, election.key, ttl)
        self.election = election

    def __repr__(self) -> str:
        return f"<Leadership {self.election.name!r} token={self.token}>"

    def proclaim(self, value: Any) -> int:
        """Change the leader's value while leading; ConflictError if no longer leading."""
        if self.token is None or self.lease is None:
            raise ConflictError(f"{self!r} does not lead any more")
        result = (
            self._state.txn().holding(self).then_put(self.key, value, lease=self.lease).commit()
        )
        if not result.succeeded:
            raise ConflictError(
                f"{self!r} lost the leadership (its lease ended); campaign again",
                election=self.election.name,
            )
        return result.revision

    def resign(self) -> None:
        self._give_back()

    def __enter__(self) -> Leadership:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.resign()
