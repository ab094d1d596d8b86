"""The core of the shared state store: its SQL pieces, records and plumbing.

:class:`StateBase` holds what every part of the state store uses: writes
that commit only if they changed something (:meth:`StateBase._write_if`),
the write lock of keys, fences, and :meth:`StateBase._apply`, which writes
puts and deletes as the next revision. See :mod:`accord.store.sql.state`
for how the parts lock against each other."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

from accord.errors import (
    CompactedError,
    ConfigError,
    FencedError,
    StoreError,
)
from accord.store.records import (
    ChangeKind,
    Fence,
    KvChange,
    KvCompare,
    KvOp,
    KvPut,
    KvRow,
)
from accord.store.sql.core import Conn, _Tx
from accord.store.state_base import StateStore

T = TypeVar("T")

log = logging.getLogger("accord.store")

# After a write crosses a multiple of this many revisions, the writer applies
# the retention setting (one bounded compaction, after its own commit).
RETENTION_EVERY = 256

# "No limit" in a LIMIT clause that both dialects accept (SQLite reads -1 as
# none, PostgreSQL refuses a negative limit).
_NO_LIMIT = 1 << 62

# Key conditions: one key, a bounded prefix range, a prefix with no end
# (on the column "key", or "h.key" where a subquery also has one).
_KEY_ONE = {"key": "key = ?", "h.key": "h.key = ?"}
_KEY_RANGE = {"key": "key >= ? AND key < ?", "h.key": "h.key >= ? AND h.key < ?"}
_KEY_FROM = {"key": "key >= ?", "h.key": "h.key >= ?"}

_ROW_COLS = "key, value, mod_revision, version, create_revision, lease_id"
_CHANGE_COLS = "revision, seq, key, kind, value, version, create_revision, lease_id, at"

_REVISION = "SELECT coalesce(max(revision), 0) FROM kv_history"
_NEXT_EXPIRY = "SELECT min(expires_at) FROM kv_leases"
_META = "SELECT (" + _REVISION + "), compacted, retain FROM kv_meta WHERE id = 1"
_WRITE_META = (
    "SELECT (" + _REVISION + "), compacted, retain, last_group, (" + _NEXT_EXPIRY + ") "
    "FROM kv_meta WHERE id = 1"
)
_UPSERT = (
    "INSERT INTO kv (key, value, create_revision, mod_revision, version, lease_id) "
    "VALUES (?, ?, ?, ?, 1, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
    "create_revision = CASE WHEN kv.value IS NULL THEN excluded.create_revision "
    "ELSE kv.create_revision END, "
    "mod_revision = excluded.mod_revision, version = kv.version + 1, "
    "lease_id = excluded.lease_id "
    "RETURNING version, create_revision"
)
_DELETE_SET = (
    "UPDATE kv SET value = NULL, mod_revision = ?, version = version + 1, lease_id = NULL "
    "WHERE value IS NOT NULL AND "
)
_HISTORY_INSERT = (
    "INSERT INTO kv_history (revision, seq, key, kind, value, create_revision, version, "
    "lease_id, at, task_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The value each key under a prefix had at a revision (its last put at or before it).
_AT_REVISION = (
    " AND revision = (SELECT max(revision) FROM kv_history h2 "
    "WHERE h2.key = h.key AND h2.revision <= ?)"
)


@dataclass(slots=True, frozen=True)
class _TxnRequest:
    compares: list[KvCompare]
    then: list[KvOp]
    orelse: list[KvOp]
    fence: Fence
    task_id: int | None


class _WriteMeta(NamedTuple):
    """What a writer of keys reads once it holds the lock."""

    revision: int
    compacted: int
    retain: int | None
    last_group: int
    next_expiry: float | None


class _Unchanged(Exception):
    """Ends a write transaction that changed nothing, carrying its result."""

    def __init__(self, result: object) -> None:
        super().__init__()
        self.result = result


def _key_cond(key: str, prefix: bool, column: str = "key") -> tuple[str, tuple[str, ...]]:
    if not prefix:
        return _KEY_ONE[column], (key,)
    end = prefix_end(key)
    if end is None:
        return _KEY_FROM[column], (key,)
    return _KEY_RANGE[column], (key, end)


def _row(r: Any) -> KvRow:
    return KvRow(r[0], r[1], r[2], r[3], r[4], r[5])


def _change(r: Any) -> KvChange:
    return KvChange(r[0], r[1], r[2], ChangeKind(r[3]), r[4], r[5], r[6], r[7], r[8])


def _check_revision(revision: int, current: int, compacted: int, what: str) -> None:
    if revision > current:
        raise ConfigError(
            f"{what} revision {revision} is in the future: the store is at revision {current}",
            revision=revision,
            current=current,
        )
    if revision < compacted:
        raise CompactedError(
            f"{what} revision {revision} was compacted: history before revision {compacted} "
            "is gone; read the current state and go on from its revision",
            revision=revision,
            compacted=compacted,
        )


def _fenced(fence: tuple[int, int], what: str) -> FencedError:
    return FencedError(
        f"task {fence[0]} attempt with fence {fence[1]} no longer holds its lease (the task "
        f"was re-run or ended); its {what} was refused and nothing was written",
        task_id=fence[0],
        fence=fence[1],
    )


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``.

    Keys compare by code point (SQLite's BINARY collation on UTF-8, and
    ``COLLATE "C"`` on PostgreSQL), so ``[prefix, prefix_end(prefix))`` is the
    range of keys under ``prefix``. ``None``: no upper bound.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates cannot be stored: skip them
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


class StateBase(StateStore):
    """Plumbing of the state store over a :class:`~accord.store.sql.store.SqlStore`."""

    if TYPE_CHECKING:
        lock: str
        share: str
        skip_locked: str

        def _write(self, body: Callable[[_Tx], T]) -> T: ...

        def _read(self, sql: str, params: Any = ()) -> list[Any]: ...

        def _snap(self, fn: Callable[[Conn], T]) -> T: ...

        def _refused(self, fence: tuple[int, int], what: str, now: float | None = None) -> None: ...

    # -- plumbing -----------------------------------------------------------
    def _write_if(self, body: Callable[[_Tx], tuple[bool, T]]) -> T:
        """Run ``body`` (it returns whether it changed anything, and its result)
        in a write transaction; commit only if it changed something.

        A transaction that changed nothing is rolled back: on PostgreSQL its
        commit would still flush the WAL (it took row locks) and wake every
        waiting process (NOTIFY), and losers of a race must not pay that
        while others wait for the lock they hold.
        """

        def run(tx: _Tx) -> T:
            changed, result = body(tx)
            if not changed:
                raise _Unchanged(result)
            return result

        try:
            return self._write(run)
        except _Unchanged as unchanged:
            return cast(T, unchanged.result)

    def _lock_kv(self, c: Conn, lock: str | None = None) -> None:
        """Take the write lock of keys (the ``kv_meta`` row; ``FOR UPDATE`` by default).

        SQLite's writer holds the whole database already: nothing to take.
        """
        suffix = self.lock if lock is None else lock
        if suffix:
            c.execute("SELECT id FROM kv_meta WHERE id = 1" + suffix)

    def _check_fence(self, c: Conn, fence: Fence, what: str) -> None:
        if fence is None:
            return
        row = c.execute(
            f"SELECT fence, state FROM tasks WHERE id = ?{self.share}", (fence[0],)
        ).fetchone()
        if row is None or row[0] != fence[1] or row[1] != "running":
            self._refused(fence, what)
            raise _fenced(fence, what)

    def _meta(self, c: Conn) -> tuple[int, int, int | None]:
        revision, compacted, retain = c.execute(_META).fetchone()
        return revision, compacted, retain

    def _apply(
        self, tx: _Tx, ops: Iterable[KvOp], task_id: int | None, current: int | None = None
    ) -> tuple[int, int]:
        """Apply puts and deletes as the next revision; return (changes, revision).

        Takes no revision (and returns the current one) if nothing changes.
        The caller holds the write lock of keys; ``current``, when the caller
        knows it (it read it under that lock), spares reading it again.
        """
        c = tx.c
        if current is None:
            current = int(c.execute(_REVISION).fetchone()[0])
        revision = current + 1
        history: list[tuple[Any, ...]] = []
        for op in ops:
            if isinstance(op, KvPut):
                version, create_rev = c.execute(
                    _UPSERT, (op.key, op.value, revision, revision, op.lease_id)
                ).fetchone()
                history.append(
                    (
                        revision,
                        len(history),
                        op.key,
                        "put",
                        op.value,
                        create_rev,
                        version,
                        op.lease_id,
                        tx.now,
                        task_id,
                    )
                )
                continue
            cond, params = _key_cond(op.key, op.prefix)
            gone = c.execute(
                _DELETE_SET + cond + " RETURNING key, version, create_revision",
                (revision, *params),
            ).fetchall()
            for key, version, create_rev in sorted(gone):
                history.append(
                    (
                        revision,
                        len(history),
                        key,
                        "delete",
                        None,
                        create_rev,
                        version,
                        None,
                        tx.now,
                        task_id,
                    )
                )
        if not history:
            return 0, current
        if len(history) == 1:
            c.execute(_HISTORY_INSERT, history[0])
        else:
            c.executemany(_HISTORY_INSERT, history)
        return len(history), revision

    def _retention(self, before: int, after: int, retain: int | None) -> None:
        """Apply the retention setting when a write crossed a multiple of RETENTION_EVERY.

        The write has committed by now: a compaction that fails is logged, not
        raised (the caller would take its write for failed), and the next
        crossing tries again.
        """
        if retain is None or before // RETENTION_EVERY == after // RETENTION_EVERY:
            return
        target = after - retain + 1
        if target > 0:
            try:
                self.kv_compact(target)
            except StoreError as exc:
                log.warning("could not compact the state history to revision %d: %s", target, exc)
