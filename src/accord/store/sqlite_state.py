"""The state store and messaging on the embedded store (SQL of :class:`StateStore`).

Mixed into :class:`~accord.store.sqlite.SqliteStore`, whose ``_tx`` (a
``BEGIN IMMEDIATE`` write transaction, durable on commit), ``_read`` and
``_busy`` it uses. Writers hold the database's one write lock for the whole
transaction, so reading the last revision and writing ``revision + 1`` later
in the same transaction cannot race; a PostgreSQL backend takes the same
guarantee from ``SELECT ... FROM kv_meta FOR UPDATE``.

Key-value writes go through group commit (:mod:`accord.store.sqlite_group`):
one process commits the writes of the processes waiting behind it.

The SQL stays portable where it can (``RETURNING``, ``ON CONFLICT``, no
``INSERT OR REPLACE``). SQLite-only spellings are marked where used.

Reads that must agree with each other (a page of history and the revision it
ends at, a value at an old revision and the compaction point) run in one read
transaction (:meth:`SqliteStateMixin._snap`): in WAL mode it sees one commit
and nothing after it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from accord import errors
from accord.errors import (
    AccordError,
    CompactedError,
    ConfigError,
    ConflictError,
    FencedError,
    LeaseExpiredError,
    NotFoundError,
    StoreError,
)
from accord.store.sqlite_group import CommitGroup, Taken, group_for
from accord.store.state_base import (
    ChangeKind,
    ChangesPage,
    Fence,
    KvChange,
    KvCompare,
    KvDelete,
    KvOp,
    KvPut,
    KvRow,
    KvStatus,
    LeaseRow,
    MailboxRow,
    MailboxStats,
    OutMessage,
    SnapshotRow,
    StateStore,
    SubscriberRow,
    TopicPage,
    TopicRow,
    TxnOutcome,
    compare_holds,
    prefix_end,
)

if TYPE_CHECKING:
    from accord.store.sql import Conn, _Tx

T = TypeVar("T")

# Outcomes of this many recent commit groups are kept (see sqlite_group).
GROUPS_KEPT = 1024
# After a write crosses a multiple of this many revisions, the writer applies
# the retention setting (one bounded compaction, after its own commit).
RETENTION_EVERY = 256

# SQLite reads "LIMIT -1" as no limit (PostgreSQL: LIMIT ALL or NULL).
_NO_LIMIT = -1

# Key conditions: one key, a bounded prefix range, a prefix with no end
# (on the column "key", or "h.key" where a subquery also has one).
_KEY_ONE = {"key": "key = ?", "h.key": "h.key = ?"}
_KEY_RANGE = {"key": "key >= ? AND key < ?", "h.key": "h.key >= ? AND h.key < ?"}
_KEY_FROM = {"key": "key >= ?", "h.key": "h.key >= ?"}

_ROW_COLS = "key, value, mod_revision, version, create_revision, lease_id"
_CHANGE_COLS = "revision, seq, key, kind, value, version, create_revision, lease_id, at"

_REVISION = "SELECT coalesce(max(revision), 0) FROM kv_history"
_GET = (
    "SELECT k.value, k.mod_revision, k.version, k.create_revision, k.lease_id, "
    "(SELECT min(expires_at) FROM kv_leases), (" + _REVISION + ") "
    "FROM kv_meta m LEFT JOIN kv k ON k.key = ? AND k.value IS NOT NULL WHERE m.id = 1"
)
_META = "SELECT (" + _REVISION + "), compacted, retain FROM kv_meta WHERE id = 1"
_GROUP_META = (
    "SELECT (" + _REVISION + "), retain, last_group, (SELECT min(expires_at) FROM kv_leases) "
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
# Compaction to C: an entry before C goes if a newer entry of its key is at or
# before C (reads at R >= C never need it), and so does a delete before C (a
# read then finds nothing, which is right). Entries at or after C all stay,
# so a watch from C misses nothing.
_COMPACT = (
    "DELETE FROM kv_history WHERE revision < ? AND (kind = 'delete' OR EXISTS ("
    "SELECT 1 FROM kv_history AS newer WHERE newer.key = kv_history.key "
    "AND newer.revision > kv_history.revision AND newer.revision <= ?))"
)
_MAILBOX_RECEIVE = (
    "UPDATE mailbox_messages SET visible_at = ?, deliveries = deliveries + 1 "
    "WHERE id IN (SELECT id FROM mailbox_messages WHERE mailbox = ? AND acked_at IS NULL "
    "AND visible_at <= ? ORDER BY id LIMIT ?) "
    "RETURNING id, msg_id, payload, checksum, sent_at, deliveries"
)


@dataclass(slots=True, frozen=True)
class _TxnRequest:
    compares: list[KvCompare]
    then: list[KvOp]
    orelse: list[KvOp]
    fence: Fence
    task_id: int | None


# Requests and outcomes of group commit travel between processes as msgpack.
_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder().decode


def _encode_ops(ops: list[KvOp]) -> list[Any]:
    return [
        [op.key, op.value, op.lease_id] if isinstance(op, KvPut) else [op.key, op.prefix]
        for op in ops
    ]


def _decode_ops(raw: list[Any]) -> list[KvOp]:
    return [KvPut(r[0], r[1], r[2]) if len(r) == 3 else KvDelete(r[0], r[1]) for r in raw]


def _encode_request(req: _TxnRequest) -> bytes:
    return _pack(
        [
            [[c.key, c.target, c.op, c.operand] for c in req.compares],
            _encode_ops(req.then),
            _encode_ops(req.orelse),
            list(req.fence) if req.fence else None,
            req.task_id,
        ]
    )


def _decode_request(data: bytes) -> _TxnRequest:
    compares, then, orelse, fence, task_id = _unpack(data)
    return _TxnRequest(
        [KvCompare(*c) for c in compares],
        _decode_ops(then),
        _decode_ops(orelse),
        (fence[0], fence[1]) if fence else None,
        task_id,
    )


def _encode_outcome(outcome: TxnOutcome) -> bytes:
    failed = [[c.key, c.target, c.op, seen] for c, seen in outcome.failed]
    return _pack([0, outcome.succeeded, outcome.revision, outcome.changed, failed])


def _encode_error(exc: AccordError) -> bytes:
    try:
        return _pack([1, type(exc).__name__, exc.message, exc.details])
    except (TypeError, ValueError):
        return _pack([1, type(exc).__name__, exc.message, {}])


def _decode_outcome(data: bytes, compares: list[KvCompare]) -> TxnOutcome:
    raw = _unpack(data)
    if raw[0] == 1:
        cls = getattr(errors, raw[1], None)
        if not (isinstance(cls, type) and issubclass(cls, AccordError)):
            cls = StoreError
        raise cls(raw[2], **raw[3])
    _, succeeded, revision, changed, failed = raw
    by_id = {(c.key, c.target, c.op): c for c in compares}
    return TxnOutcome(
        succeeded,
        revision,
        changed,
        tuple((by_id[(k, t, o)], seen) for k, t, o, seen in failed),
    )


def _encode_list(items: list[bytes]) -> bytes:
    return _pack(items)


def _decode_list(data: bytes) -> list[bytes]:
    items: list[bytes] = _unpack(data)
    return items


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


class SqliteStateMixin(StateStore):
    """The state store and messaging for :class:`~accord.store.sqlite.SqliteStore`."""

    if TYPE_CHECKING:
        path: str
        busy_timeout: float

        def _tx(self) -> AbstractContextManager[_Tx]: ...

        def _read(self, sql: str, params: Any = ()) -> list[Any]: ...

        def _busy(self, action: Callable[[], T]) -> T: ...

        def _conn(self) -> sqlite3.Connection: ...

    # -- plumbing -----------------------------------------------------------
    def _snap(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one read transaction (one consistent view of the store)."""
        from accord.store.sqlite import translate

        conn = self._conn()

        def attempt() -> T:
            conn.execute("BEGIN")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        try:
            return self._busy(attempt)
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc

    def _check_fence(self, c: Conn, fence: Fence, what: str) -> None:
        if fence is None:
            return
        row = c.execute("SELECT fence, state FROM tasks WHERE id = ?", (fence[0],)).fetchone()
        if row is None or row[0] != fence[1] or row[1] != "running":
            raise _fenced(fence, what)

    def _meta(self, c: Conn) -> tuple[int, int, int | None]:
        revision, compacted, retain = c.execute(_META).fetchone()
        return revision, compacted, retain

    def _apply(self, tx: _Tx, ops: Iterable[KvOp], task_id: int | None) -> tuple[int, int]:
        """Apply puts and deletes as the next revision; return (changes, revision).

        Takes no revision (and returns the current one) if nothing changes.
        """
        c = tx.c
        current: int = c.execute(_REVISION).fetchone()[0]
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

    def _expire_due(self, tx: _Tx) -> int:
        """End the leases that expired (their keys' deletion is its own revision)."""
        due = [
            r[0]
            for r in tx.c.execute(
                "SELECT id FROM kv_leases WHERE expires_at < ? ORDER BY id", (tx.now,)
            )
        ]
        if due:
            self._drop_leases(tx, due)
        return len(due)

    def _drop_leases(self, tx: _Tx, lease_ids: list[int]) -> int:
        c = tx.c
        keys: list[str] = []
        for lease_id in lease_ids:
            keys.extend(
                r[0]
                for r in c.execute(
                    "SELECT key FROM kv WHERE lease_id = ? AND value IS NOT NULL", (lease_id,)
                )
            )
        changed, _ = self._apply(tx, [KvDelete(k) for k in sorted(keys)], None)
        c.executemany("DELETE FROM kv_leases WHERE id = ?", [(i,) for i in lease_ids])
        return changed

    def _retention(self, before: int, after: int, retain: int | None) -> None:
        """Apply the retention setting when a write crossed a multiple of RETENTION_EVERY."""
        if retain is None or before // RETENTION_EVERY == after // RETENTION_EVERY:
            return
        target = after - retain + 1
        if target > 0:
            self.kv_compact(target)

    # -- keys ---------------------------------------------------------------
    def kv_get(self, key: str, revision: int | None = None) -> tuple[KvRow | None, int]:
        if revision is not None:
            return self._get_at(key, revision)
        for _ in range(3):
            value, mod_rev, version, create_rev, lease_id, expiry, current = self._read(
                _GET, (key,)
            )[0]
            if expiry is not None and expiry < time.time():
                self.kv_expire_leases()
                continue
            if value is None:
                return None, current
            return KvRow(key, value, mod_rev, version, create_rev, lease_id), current
        return None, current  # leases keep expiring under us: report what we saw

    def _get_at(self, key: str, revision: int) -> tuple[KvRow | None, int]:
        def read(c: Conn) -> tuple[KvRow | None, int]:
            current, compacted, _ = self._meta(c)
            _check_revision(revision, current, compacted, "read at")
            r = c.execute(
                "SELECT kind, value, revision, version, create_revision, lease_id "
                "FROM kv_history WHERE key = ? AND revision <= ? "
                "ORDER BY revision DESC LIMIT 1",
                (key, revision),
            ).fetchone()
            if r is None or r[0] != "put":
                return None, current
            return KvRow(key, r[1], r[2], r[3], r[4], r[5]), current

        return self._snap(read)

    def kv_range(
        self, prefix: str, revision: int | None = None, limit: int | None = None
    ) -> tuple[list[KvRow], int]:
        cond, params = _key_cond(prefix, True)
        count = _NO_LIMIT if limit is None else limit
        if revision is None:

            def read_now(c: Conn) -> tuple[list[KvRow], int, float | None]:
                current = self._meta(c)[0]
                expiry = c.execute("SELECT min(expires_at) FROM kv_leases").fetchone()[0]
                rows = c.execute(
                    "SELECT "
                    + _ROW_COLS
                    + " FROM kv WHERE value IS NOT NULL AND "
                    + cond
                    + " ORDER BY key LIMIT ?",
                    (*params, count),
                ).fetchall()
                return [_row(r) for r in rows], current, expiry

            for _ in range(3):
                rows, current, expiry = self._snap(read_now)
                if expiry is None or expiry >= time.time():
                    break
                self.kv_expire_leases()
            return rows, current

        hcond, _ = _key_cond(prefix, True, "h.key")

        def read_at(c: Conn) -> tuple[list[KvRow], int]:
            current, compacted, _ = self._meta(c)
            _check_revision(revision, current, compacted, "read at")
            rows = c.execute(
                "SELECT key, value, revision, version, create_revision, lease_id "
                "FROM kv_history h WHERE kind = 'put' AND "
                + hcond
                + " AND revision = (SELECT max(revision) FROM kv_history h2 "
                "WHERE h2.key = h.key AND h2.revision <= ?) ORDER BY key LIMIT ?",
                (*params, revision, count),
            ).fetchall()
            return [_row(r) for r in rows], current

        return self._snap(read_at)

    def kv_txn(
        self,
        compares: list[KvCompare],
        then: list[KvOp],
        orelse: list[KvOp],
        *,
        fence: Fence = None,
        task_id: int | None = None,
    ) -> TxnOutcome:
        request = _TxnRequest(compares, then, orelse, fence, task_id)
        got = self._commit_group().submit(
            lambda: _encode_request(request),
            lambda own: self._lead(request if own else None),
            self.busy_timeout,
        )
        if isinstance(got, bytes):
            return _decode_outcome(got, compares)
        assert got is not None
        return got

    def _commit_group(self) -> CommitGroup:
        group = self.__dict__.get("_state_group")
        if group is None:
            group = self.__dict__["_state_group"] = group_for(self.path, self)
        return group

    def _lead(self, own: _TxnRequest | None) -> TxnOutcome | None:
        """Run ``own`` and every parked request in one commit (we hold the leader lock).

        A writer that leads for its parked request (``own`` None) scans every
        slot rather than trusting the header's counts, so a request whose
        counts were lost to a killed process is still found.
        """
        group = self._commit_group()
        scan = own is None
        self._resolve_orphans(group, scan=scan)
        own_outcome: TxnOutcome | None = None
        own_error: AccordError | None = None
        taken: list[Taken] = []
        outcomes: list[bytes] = []
        number = 0
        try:
            with self._tx() as tx:
                c = tx.c
                before, retain, last, expiry = c.execute(_GROUP_META).fetchone()
                if expiry is not None and expiry < tx.now:
                    self._expire_due(tx)
                if own is not None:
                    try:
                        own_outcome = self._txn_body(tx, own)
                    except AccordError as exc:
                        own_error = exc
                number = last + 1
                taken = group.take(number, scan=scan)
                for item in taken:
                    try:
                        outcome = self._txn_body(tx, _decode_request(item.request))
                        outcomes.append(_encode_outcome(outcome))
                    except AccordError as exc:
                        outcomes.append(_encode_error(exc))
                if taken:
                    c.execute("UPDATE kv_meta SET last_group = ? WHERE id = 1", (number,))
                    c.execute(
                        "INSERT INTO kv_groups (id, outcomes) VALUES (?, ?)",
                        (number, _encode_list(outcomes)),
                    )
                    if number % GROUPS_KEPT == 0:
                        c.execute("DELETE FROM kv_groups WHERE id <= ?", (number - GROUPS_KEPT,))
        except BaseException as exc:
            if taken:
                self._settle_failed_group(group, taken, outcomes, number, exc)
            raise
        group.finish([(t.slot, t.ticket, o) for t, o in zip(taken, outcomes, strict=True)])
        if own_error is not None:
            raise own_error
        after = own_outcome.revision if own_outcome is not None else before
        self._retention(before, after, retain)
        return own_outcome

    def _settle_failed_group(
        self,
        group: CommitGroup,
        taken: list[Taken],
        outcomes: list[bytes],
        number: int,
        exc: BaseException,
    ) -> None:
        """Tell the parked writers what became of a group whose commit raised.

        Whether it committed is read back from kv_groups (a failing COMMIT can
        leave that in doubt); if even that fails, the slots stay TAKEN and the
        next leader decides the same way.
        """
        try:
            committed = self._group_outcomes(number) is not None
        except BaseException:
            return
        if committed and len(outcomes) == len(taken):
            group.finish([(t.slot, t.ticket, o) for t, o in zip(taken, outcomes, strict=True)])
            return
        error = (
            exc
            if isinstance(exc, AccordError)
            else StoreError(
                f"the write was interrupted ({type(exc).__name__}); nothing was written"
            )
        )
        group.finish([(t.slot, t.ticket, _encode_error(error)) for t in taken])

    def _group_outcomes(self, number: int) -> list[bytes] | None:
        rows = self._read("SELECT outcomes FROM kv_groups WHERE id = ?", (number,))
        return None if not rows else _decode_list(rows[0][0])

    def _resolve_orphans(self, group: CommitGroup, *, scan: bool) -> None:
        """Finish the requests of a leader that died (see ``sqlite_group``)."""
        orphans = group.orphans(scan=scan)
        if not orphans:
            return
        known: dict[int, list[bytes] | None] = {}
        done: list[tuple[int, int, bytes | None]] = []
        for slot, ticket, number, position in orphans:
            if number not in known:
                known[number] = self._group_outcomes(number)
            outcomes = known[number]
            done.append((slot, ticket, None if outcomes is None else outcomes[position]))
        group.finish(done)

    def _txn_body(self, tx: _Tx, req: _TxnRequest) -> TxnOutcome:
        """One compare/then/else transaction inside a group's commit.

        It raises (fenced, lease gone) only before its first write, so a
        failing request leaves nothing behind and needs no savepoint.
        """
        c = tx.c
        self._check_fence(c, req.fence, "state write")
        failed: list[tuple[KvCompare, Any]] = []
        seen: dict[str, KvRow | None] = {}
        for compare in req.compares:
            if compare.key not in seen:
                r = c.execute(
                    "SELECT " + _ROW_COLS + " FROM kv WHERE key = ? AND value IS NOT NULL",
                    (compare.key,),
                ).fetchone()
                seen[compare.key] = None if r is None else _row(r)
            ok, saw = compare_holds(compare, seen[compare.key])
            if not ok:
                failed.append((compare, saw))
        ops = req.orelse if failed else req.then
        for op in ops:
            if isinstance(op, KvPut) and op.lease_id is not None:
                alive = c.execute(
                    "SELECT 1 FROM kv_leases WHERE id = ? AND expires_at >= ?",
                    (op.lease_id, tx.now),
                ).fetchone()
                if alive is None:
                    raise LeaseExpiredError(
                        f"lease {op.lease_id} expired or was revoked, so key {op.key!r} "
                        "cannot be tied to it; grant a new lease. Nothing was written",
                        lease_id=op.lease_id,
                        key=op.key,
                    )
        changed, revision = self._apply(tx, ops, req.task_id)
        return TxnOutcome(not failed, revision, changed, tuple(failed))

    def kv_changes(
        self, key: str, prefix: bool, from_revision: int, limit: int = 1000
    ) -> ChangesPage:
        cond, params = _key_cond(key, prefix)
        sql = (
            "SELECT "
            + _CHANGE_COLS
            + " FROM kv_history WHERE revision >= ? AND "
            + cond
            + " ORDER BY revision, seq LIMIT ?"
        )

        def read(c: Conn) -> ChangesPage:
            current, compacted, _ = self._meta(c)
            if from_revision < compacted:
                raise CompactedError(
                    f"cannot watch from revision {from_revision}: history before revision "
                    f"{compacted} was compacted; read the current state and watch from "
                    "its revision + 1",
                    revision=from_revision,
                    compacted=compacted,
                )
            rows = c.execute(sql, (from_revision, *params, limit)).fetchall()
            if len(rows) < limit:
                return ChangesPage([_change(r) for r in rows], current + 1, current)
            last = rows[-1][0]
            whole = [r for r in rows if r[0] != last]
            if not whole:  # one revision bigger than a page: take all of it
                whole = c.execute(
                    "SELECT "
                    + _CHANGE_COLS
                    + " FROM kv_history WHERE revision = ? AND "
                    + cond
                    + " ORDER BY seq",
                    (last, *params),
                ).fetchall()
                return ChangesPage([_change(r) for r in whole], last + 1, current)
            return ChangesPage([_change(r) for r in whole], last, current)

        return self._snap(read)

    def kv_history(
        self,
        key: str,
        prefix: bool,
        from_revision: int = 0,
        to_revision: int | None = None,
        limit: int | None = None,
    ) -> list[KvChange]:
        cond, params = _key_cond(key, prefix)
        rows = self._read(
            "SELECT "
            + _CHANGE_COLS
            + " FROM kv_history WHERE "
            + cond
            + " AND revision >= ? AND revision <= ? ORDER BY revision, seq LIMIT ?",
            (
                *params,
                from_revision,
                (1 << 62) if to_revision is None else to_revision,
                _NO_LIMIT if limit is None else limit,
            ),
        )
        return [_change(r) for r in rows]

    def kv_status(self) -> KvStatus:
        revision, compacted, retain, expiry = self._read(
            "SELECT (" + _REVISION + "), compacted, retain, "
            "(SELECT min(expires_at) FROM kv_leases) FROM kv_meta WHERE id = 1"
        )[0]
        return KvStatus(revision, compacted, retain, expiry)

    def kv_compact(self, revision: int) -> int:
        with self._tx() as tx:
            c = tx.c
            current, compacted, _ = self._meta(c)
            if revision > current:
                raise ConfigError(
                    f"cannot compact to revision {revision}: the store is at revision {current}",
                    revision=revision,
                    current=current,
                )
            pinned = c.execute("SELECT min(revision) FROM kv_snapshots").fetchone()[0]
            target = revision if pinned is None else min(revision, pinned)
            if target <= compacted:
                return compacted
            c.execute(_COMPACT, (target, target))
            c.execute("UPDATE kv_meta SET compacted = ? WHERE id = 1", (target,))
            return target

    def kv_set_retention(self, retain: int | None) -> None:
        with self._tx() as tx:
            tx.c.execute("UPDATE kv_meta SET retain = ? WHERE id = 1", (retain,))

    def kv_rollback(
        self,
        key: str,
        prefix: bool,
        *,
        revision: int | None = None,
        snapshot: str | None = None,
        fence: Fence = None,
        task_id: int | None = None,
    ) -> TxnOutcome:
        cond, params = _key_cond(key, prefix)
        hcond, _ = _key_cond(key, prefix, "h.key")
        with self._tx() as tx:
            c = tx.c
            self._check_fence(c, fence, "rollback")
            self._expire_due(tx)
            current, compacted, retain = self._meta(c)
            if snapshot is not None:
                found = c.execute(
                    "SELECT revision FROM kv_snapshots WHERE name = ?", (snapshot,)
                ).fetchone()
                if found is None:
                    raise NotFoundError(
                        f"snapshot {snapshot!r} does not exist; list them with state.snapshots()",
                        snapshot=snapshot,
                    )
                revision = found[0]
            if revision is None:
                raise ConfigError("rollback needs a revision or a snapshot name")
            _check_revision(revision, current, compacted, "rollback to")
            past = {
                r[0]: (r[1], r[2])
                for r in c.execute(
                    "SELECT key, value, lease_id FROM kv_history h WHERE kind = 'put' AND "
                    + hcond
                    + " AND revision = (SELECT max(revision) FROM kv_history h2 "
                    "WHERE h2.key = h.key AND h2.revision <= ?)",
                    (*params, revision),
                )
            }
            now = {
                r[0]: (r[1], r[2])
                for r in c.execute(
                    "SELECT key, value, lease_id FROM kv WHERE value IS NOT NULL AND " + cond,
                    params,
                )
            }
            alive = {r[0] for r in c.execute("SELECT id FROM kv_leases")}
            ops: list[KvOp] = []
            for k in sorted(past.keys() | now.keys()):
                target = past.get(k)
                # A value tied to a lease that has ended stays gone: it stood
                # for a live owner, and that owner is not alive any more.
                if target is not None and target[1] is not None and target[1] not in alive:
                    target = None
                if target is None:
                    if k in now:
                        ops.append(KvDelete(k))
                elif now.get(k) != target:
                    ops.append(KvPut(k, target[0], target[1]))
            changed, new_revision = self._apply(tx, ops, task_id)
        self._retention(current, new_revision, retain)
        return TxnOutcome(True, new_revision, changed)

    def kv_snapshot(self, name: str, *, fence: Fence = None) -> int:
        with self._tx() as tx:
            c = tx.c
            self._check_fence(c, fence, "snapshot")
            current = self._meta(c)[0]
            taken = c.execute(
                "INSERT INTO kv_snapshots (name, revision, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING RETURNING revision",
                (name, current, tx.now),
            ).fetchone()
            if taken is None:
                old = c.execute(
                    "SELECT revision FROM kv_snapshots WHERE name = ?", (name,)
                ).fetchone()[0]
                raise ConflictError(
                    f"snapshot {name!r} exists already (revision {old}); delete it first or "
                    "choose another name",
                    snapshot=name,
                    revision=old,
                )
            return current

    def kv_snapshots(self, prefix: str) -> list[SnapshotRow]:
        end = prefix_end(prefix)
        if end is None:
            rows = self._read(
                "SELECT name, revision, created_at FROM kv_snapshots WHERE name >= ? "
                "ORDER BY revision, name",
                (prefix,),
            )
        else:
            rows = self._read(
                "SELECT name, revision, created_at FROM kv_snapshots "
                "WHERE name >= ? AND name < ? ORDER BY revision, name",
                (prefix, end),
            )
        return [SnapshotRow(*r) for r in rows]

    def kv_delete_snapshot(self, name: str) -> bool:
        with self._tx() as tx:
            gone = tx.c.execute(
                "DELETE FROM kv_snapshots WHERE name = ? RETURNING name", (name,)
            ).fetchone()
            return gone is not None

    # -- leases -------------------------------------------------------------
    def lease_grant(self, ttl: float, *, fence: Fence = None) -> LeaseRow:
        with self._tx() as tx:
            self._check_fence(tx.c, fence, "lease grant")
            lease_id = tx.c.execute(
                "INSERT INTO kv_leases (ttl, expires_at, granted_at, task_id) "
                "VALUES (?, ?, ?, ?) RETURNING id",
                (ttl, tx.now + ttl, tx.now, fence[0] if fence else None),
            ).fetchone()[0]
            return LeaseRow(lease_id, ttl, tx.now + ttl, tx.now, 0)

    def lease_keepalive(self, lease_id: int, *, fence: Fence = None) -> LeaseRow:
        found: LeaseRow | None = None
        with self._tx() as tx:
            c = tx.c
            self._check_fence(c, fence, "lease keep-alive")
            self._expire_due(tx)
            r = c.execute(
                "UPDATE kv_leases SET expires_at = ? + ttl WHERE id = ? "
                "RETURNING id, ttl, expires_at, granted_at",
                (tx.now, lease_id),
            ).fetchone()
            if r is not None:
                keys = c.execute(
                    "SELECT count(*) FROM kv WHERE lease_id = ? AND value IS NOT NULL",
                    (lease_id,),
                ).fetchone()[0]
                found = LeaseRow(r[0], r[1], r[2], r[3], keys)
        if found is None:  # raised after the commit, so the expiry above is kept
            raise LeaseExpiredError(
                f"lease {lease_id} expired or was revoked and its keys were deleted; grant "
                "a new lease",
                lease_id=lease_id,
            )
        return found

    def lease_revoke(self, lease_id: int) -> int:
        with self._tx() as tx:
            if tx.c.execute("SELECT 1 FROM kv_leases WHERE id = ?", (lease_id,)).fetchone():
                return self._drop_leases(tx, [lease_id])
            return 0

    def lease_info(self, lease_id: int) -> LeaseRow | None:
        rows = self._read(
            "SELECT id, ttl, expires_at, granted_at, (SELECT count(*) FROM kv "
            "WHERE lease_id = kv_leases.id AND value IS NOT NULL) FROM kv_leases "
            "WHERE id = ? AND expires_at >= ?",
            (lease_id, time.time()),
        )
        return LeaseRow(*rows[0]) if rows else None

    def kv_expire_leases(self) -> int:
        with self._tx() as tx:
            return self._expire_due(tx)

    # -- mailboxes ----------------------------------------------------------
    def mailbox_send(
        self, mailbox: str, messages: list[OutMessage], *, fence: Fence = None
    ) -> list[tuple[int, bool]]:
        with self._tx() as tx:
            c = tx.c
            self._check_fence(c, fence, "message")
            task_id = fence[0] if fence else None
            out: list[tuple[int, bool]] = []
            for m in messages:
                r = c.execute(
                    "INSERT INTO mailbox_messages (mailbox, msg_id, payload, checksum, size, "
                    "sent_at, visible_at, task_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (mailbox, msg_id) DO NOTHING RETURNING id",
                    (
                        mailbox,
                        m.msg_id,
                        m.payload,
                        m.checksum,
                        len(m.payload),
                        tx.now,
                        tx.now,
                        task_id,
                    ),
                ).fetchone()
                if r is not None:
                    out.append((r[0], False))
                    continue
                seq, checksum = c.execute(
                    "SELECT id, checksum FROM mailbox_messages WHERE mailbox = ? AND msg_id = ?",
                    (mailbox, m.msg_id),
                ).fetchone()
                if bytes(checksum) != m.checksum:
                    raise ConflictError(
                        f"message id {m.msg_id!r} was already sent to mailbox {mailbox!r} "
                        "with another payload; use a new id for a new message. Nothing was "
                        "sent",
                        mailbox=mailbox,
                        msg_id=m.msg_id,
                    )
                out.append((seq, True))
            return out

    def mailbox_receive(
        self, mailbox: str, limit: int, visibility: float, *, fence: Fence = None
    ) -> tuple[list[MailboxRow], float | None]:
        # Look before taking the write lock: an idle receiver only reads.
        now = time.time()
        ready = self._read(
            "SELECT 1 FROM mailbox_messages WHERE mailbox = ? AND acked_at IS NULL "
            "AND visible_at <= ? LIMIT 1",
            (mailbox, now),
        )
        rows: list[Any] = []
        if ready:
            with self._tx() as tx:
                self._check_fence(tx.c, fence, "receive")
                rows = tx.c.execute(
                    _MAILBOX_RECEIVE, (tx.now + visibility, mailbox, tx.now, limit)
                ).fetchall()
        if rows:
            rows.sort()
            return [MailboxRow(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows], None
        nxt = self._read(
            "SELECT min(visible_at) FROM mailbox_messages WHERE mailbox = ? AND acked_at IS NULL",
            (mailbox,),
        )[0][0]
        return [], nxt

    def mailbox_settle(
        self,
        mailbox: str,
        deliveries: list[tuple[int, int]],
        *,
        ack: bool,
        delay: float = 0.0,
        fence: Fence = None,
    ) -> list[bool]:
        with self._tx() as tx:
            c = tx.c
            self._check_fence(c, fence, "acknowledgement" if ack else "release")
            done: list[bool] = []
            for seq, delivery in deliveries:
                if ack:
                    r = c.execute(
                        "UPDATE mailbox_messages SET acked_at = ?, payload = NULL "
                        "WHERE id = ? AND mailbox = ? AND deliveries = ? AND acked_at IS NULL "
                        "RETURNING id",
                        (tx.now, seq, mailbox, delivery),
                    ).fetchone()
                else:
                    r = c.execute(
                        "UPDATE mailbox_messages SET visible_at = ? "
                        "WHERE id = ? AND mailbox = ? AND deliveries = ? AND acked_at IS NULL "
                        "RETURNING id",
                        (tx.now + delay, seq, mailbox, delivery),
                    ).fetchone()
                done.append(r is not None)
            return done

    def mailbox_stats(self, mailbox: str) -> MailboxStats:
        now = time.time()
        r = self._read(
            "SELECT "
            "count(*) FILTER (WHERE acked_at IS NULL AND visible_at <= ?), "
            "count(*) FILTER (WHERE acked_at IS NULL AND visible_at > ?), "
            "count(*) FILTER (WHERE acked_at IS NOT NULL), "
            "min(visible_at) FILTER (WHERE acked_at IS NULL AND visible_at > ?) "
            "FROM mailbox_messages WHERE mailbox = ?",
            (now, now, now, mailbox),
        )[0]
        return MailboxStats(r[0], r[1], r[2], r[3])

    def mailbox_purge(self, acked_before: float) -> int:
        with self._tx() as tx:
            gone = tx.c.execute(
                "DELETE FROM mailbox_messages WHERE acked_at IS NOT NULL AND acked_at < ? "
                "RETURNING id",
                (acked_before,),
            ).fetchall()
            return len(gone)

    # -- topics -------------------------------------------------------------
    def topic_publish(
        self, topic: str, messages: list[OutMessage], *, fence: Fence = None
    ) -> list[tuple[int, bool]]:
        with self._tx() as tx:
            c = tx.c
            self._check_fence(c, fence, "publish")
            task_id = fence[0] if fence else None
            c.execute(
                "INSERT INTO topics (name, next_offset, first_offset) VALUES (?, 0, 0) "
                "ON CONFLICT (name) DO NOTHING",
                (topic,),
            )
            offset = c.execute(
                "SELECT next_offset FROM topics WHERE name = ?", (topic,)
            ).fetchone()[0]
            out: list[tuple[int, bool]] = []
            fresh: dict[str, tuple[int, bytes]] = {}
            rows: list[tuple[Any, ...]] = []
            for m in messages:
                known = fresh.get(m.msg_id)
                if known is None:
                    r = c.execute(
                        "SELECT seq, checksum FROM topic_messages WHERE topic = ? AND msg_id = ?",
                        (topic, m.msg_id),
                    ).fetchone()
                    known = None if r is None else (r[0], bytes(r[1]))
                if known is not None:
                    if known[1] != m.checksum:
                        raise ConflictError(
                            f"message id {m.msg_id!r} was already published to topic "
                            f"{topic!r} with another payload; use a new id for a new message. "
                            "Nothing was published",
                            topic=topic,
                            msg_id=m.msg_id,
                        )
                    out.append((known[0], True))
                    continue
                fresh[m.msg_id] = (offset, m.checksum)
                rows.append((topic, offset, m.msg_id, m.payload, m.checksum, tx.now, task_id))
                out.append((offset, False))
                offset += 1
            if rows:
                c.executemany(
                    "INSERT INTO topic_messages (topic, seq, msg_id, payload, checksum, "
                    "published_at, task_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                c.execute("UPDATE topics SET next_offset = ? WHERE name = ?", (offset, topic))
            return out

    def _topic_bounds(self, c: Conn, topic: str) -> tuple[int, int]:
        r = c.execute(
            "SELECT first_offset, next_offset FROM topics WHERE name = ?", (topic,)
        ).fetchone()
        return (0, 0) if r is None else (r[0], r[1])

    def topic_read(self, topic: str, from_offset: int, limit: int) -> TopicPage:
        def read(c: Conn) -> TopicPage:
            first, nxt = self._topic_bounds(c, topic)
            if from_offset < first:
                raise CompactedError(
                    f"topic {topic!r} was trimmed: offsets before {first} are gone, so "
                    f"reading from {from_offset} would miss messages; resubscribe from "
                    f"offset {first} or later",
                    topic=topic,
                    offset=from_offset,
                    first_offset=first,
                )
            rows = c.execute(
                "SELECT seq, msg_id, payload, checksum, published_at FROM topic_messages "
                "WHERE topic = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (topic, from_offset, limit),
            ).fetchall()
            return TopicPage([TopicRow(*r) for r in rows], first, nxt)

        return self._snap(read)

    def topic_subscribe(
        self, topic: str, subscriber: str, from_offset: int | None, *, fence: Fence = None
    ) -> int:
        with self._tx() as tx:
            c = tx.c
            self._check_fence(c, fence, "subscription")
            c.execute(
                "INSERT INTO topics (name, next_offset, first_offset) VALUES (?, 0, 0) "
                "ON CONFLICT (name) DO NOTHING",
                (topic,),
            )
            first, nxt = self._topic_bounds(c, topic)
            if from_offset is None:
                r = c.execute(
                    "SELECT next_offset FROM topic_offsets WHERE topic = ? AND subscriber = ?",
                    (topic, subscriber),
                ).fetchone()
                if r is not None:
                    return int(r[0])
                start = nxt
            else:
                if from_offset > nxt:
                    raise ConfigError(
                        f"offset {from_offset} is past the end of topic {topic!r} (next offset "
                        f"{nxt}); subscribe from an offset up to {nxt}",
                        topic=topic,
                        offset=from_offset,
                    )
                if from_offset < first:
                    raise CompactedError(
                        f"topic {topic!r} was trimmed: offsets before {first} are gone; "
                        f"subscribe from offset {first} or later",
                        topic=topic,
                        offset=from_offset,
                        first_offset=first,
                    )
                start = from_offset
            c.execute(
                "INSERT INTO topic_offsets (topic, subscriber, next_offset, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (topic, subscriber) DO UPDATE SET "
                "next_offset = excluded.next_offset, updated_at = excluded.updated_at",
                (topic, subscriber, start, tx.now),
            )
            return start

    def topic_commit(
        self, topic: str, subscriber: str, next_offset: int, *, fence: Fence = None
    ) -> None:
        with self._tx() as tx:
            self._check_fence(tx.c, fence, "offset commit")
            tx.c.execute(
                "INSERT INTO topic_offsets (topic, subscriber, next_offset, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (topic, subscriber) DO UPDATE SET "
                "next_offset = excluded.next_offset, updated_at = excluded.updated_at",
                (topic, subscriber, next_offset, tx.now),
            )

    def topic_unsubscribe(self, topic: str, subscriber: str) -> bool:
        with self._tx() as tx:
            gone = tx.c.execute(
                "DELETE FROM topic_offsets WHERE topic = ? AND subscriber = ? RETURNING topic",
                (topic, subscriber),
            ).fetchone()
            return gone is not None

    def topic_subscribers(self, topic: str) -> list[SubscriberRow]:
        rows = self._read(
            "SELECT subscriber, next_offset, updated_at FROM topic_offsets WHERE topic = ? "
            "ORDER BY subscriber",
            (topic,),
        )
        return [SubscriberRow(*r) for r in rows]

    def topic_trim(self, topic: str, before: int | None, *, force: bool = False) -> int:
        with self._tx() as tx:
            c = tx.c
            first, nxt = self._topic_bounds(c, topic)
            slowest = c.execute(
                "SELECT min(next_offset) FROM topic_offsets WHERE topic = ?", (topic,)
            ).fetchone()[0]
            if before is None:
                target = first if slowest is None else slowest
            else:
                target = before if force or slowest is None else min(before, slowest)
            target = min(target, nxt)
            if target <= first:
                return first
            c.execute("DELETE FROM topic_messages WHERE topic = ? AND seq < ?", (topic, target))
            c.execute("UPDATE topics SET first_offset = ? WHERE name = ?", (target, topic))
            return target

    def topic_offsets(self, topic: str) -> tuple[int, int]:
        return self._snap(lambda c: self._topic_bounds(c, topic))
