"""The state store and messaging, written once in the SQL that SQLite and PostgreSQL share.

Mixed into a :class:`~accord.store.sql.SqlStore` subclass, whose plumbing it
uses: ``_write`` (one write transaction, durable on commit; run again on
PostgreSQL after a deadlock or a unique-key race, so a body has no effect
outside the database), ``_read`` (one statement), ``_snap`` (several reads
that see one state) and the dialect's row-lock suffixes ``lock``, ``share``
and ``skip_locked`` (empty on SQLite).

Concurrency. On SQLite a writer holds the database's one write lock for the
whole transaction, so every read inside it is stable and the suffixes are
empty. On PostgreSQL transactions run side by side at READ COMMITTED (each
statement sees what was committed when it started), so every read that a
write depends on locks what it read:

- **Keys.** Every transaction that writes keys, ends leases or moves the
  compaction point locks the one ``kv_meta`` row ``FOR UPDATE`` before it
  reads anything it depends on (:meth:`SqlStateMixin._begin_kv`). That
  orders the writers of keys: the next one reads the last revision only
  after the previous one committed, so revisions are taken and made visible
  in order. A watcher reading ``revision >= N`` therefore never skips a
  revision that commits later, and compares read inside the lock are current
  (single-key operations are linearizable). What depends on the lock is read
  by statements after the one that took it: a statement that waited for a
  row lock re-reads that row but not its subqueries.
- **Fences** lock the task row ``FOR SHARE``: the task cannot be re-leased
  (its fence bumped) before the fenced write commits.
- **Leases.** Ending a lease (expiry, revoke) happens under the ``kv_meta``
  lock, and expiry locks the due lease rows, so a keep-alive that commits
  first is seen and the lease is kept. A keep-alive extends only a lease that
  has not expired yet, in one conditional ``UPDATE``.
- **Snapshots** lock ``kv_meta`` ``FOR SHARE`` (compaction holds it ``FOR
  UPDATE``): a snapshot is never created below a compaction point that a
  concurrent compaction did not know it had to respect.
- **Mailboxes.** A receive takes its messages ``FOR UPDATE SKIP LOCKED``:
  receivers do not wait for each other, and a message another receiver took
  in the meantime is re-checked and left alone, so no two receivers hold one
  message within its visibility timeout. Acks and nacks are single
  conditional ``UPDATE`` s on the delivery count.
- **Topics.** A publish locks its topic's row: offsets are taken and made
  visible in order, and the de-duplication check sees every earlier publish.
  A subscribe locks it ``FOR SHARE`` and a trim ``FOR UPDATE`` (with the
  subscribers' rows), so a trim never passes a subscriber registering at the
  same time.

Locks are taken in one order: the task row of a fence first (while holding
nothing else), then ``kv_meta``, then lease rows; a task-store transaction
never waits for a row of these tables. So no cycle of waits can form (were
one to form, PostgreSQL would break it and ``_write`` would run the loser
again).

Two shortcuts spare the lock where nothing is written. A transaction whose
compares fail and that has no else-branch is decided by one read
(:meth:`SqlStateMixin._lost_without_writing`): under contention, losing a
compare-and-set costs a read, not a turn at the lock. And a write
transaction that changed nothing is rolled back rather than committed
(:meth:`SqlStateMixin._write_if`).

Reads that must agree with each other (a page of history and the revision it
ends at, a value at an old revision and the compaction point) run in one
``_snap``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

from accord.errors import (
    CompactedError,
    ConfigError,
    ConflictError,
    FencedError,
    LeaseExpiredError,
    NotFoundError,
    StoreError,
)
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
_GET = (
    "SELECT k.value, k.mod_revision, k.version, k.create_revision, k.lease_id, "
    "(" + _NEXT_EXPIRY + "), (" + _REVISION + ") "
    "FROM kv_meta m LEFT JOIN kv k ON k.key = ? AND k.value IS NOT NULL WHERE m.id = 1"
)
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
# Compaction to C: an entry before C goes if a newer entry of its key is at or
# before C (reads at R >= C never need it), and so does a delete before C (a
# read then finds nothing, which is right). Entries at or after C all stay,
# so a watch from C misses nothing.
_COMPACT = (
    "DELETE FROM kv_history WHERE revision < ? AND (kind = 'delete' OR EXISTS ("
    "SELECT 1 FROM kv_history AS newer WHERE newer.key = kv_history.key "
    "AND newer.revision > kv_history.revision AND newer.revision <= ?))"
)
_MAILBOX_READY = "FROM mailbox_messages WHERE mailbox = ? AND acked_at IS NULL AND visible_at <= ? "
_OFFSET_UPSERT = (
    "INSERT INTO topic_offsets (topic, subscriber, next_offset, updated_at) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (topic, subscriber) DO UPDATE SET "
    "next_offset = excluded.next_offset, updated_at = excluded.updated_at"
)
_TOPIC_CREATE = (
    "INSERT INTO topics (name, next_offset, first_offset) VALUES (?, 0, 0) "
    "ON CONFLICT (name) DO NOTHING"
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


def _trimmed(topic: str, offset: int, first: int, advice: str) -> CompactedError:
    return CompactedError(
        f"topic {topic!r} was trimmed: offsets before {first} are gone{advice}",
        topic=topic,
        offset=offset,
        first_offset=first,
    )


class SqlStateMixin(StateStore):
    """The state store and messaging over a :class:`~accord.store.sql.SqlStore`."""

    if TYPE_CHECKING:
        lock: str
        share: str
        skip_locked: str

        def _write(self, body: Callable[[_Tx], T]) -> T: ...

        def _read(self, sql: str, params: Any = ()) -> list[Any]: ...

        def _snap(self, fn: Callable[[Conn], T]) -> T: ...

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

    def _begin_kv(self, tx: _Tx) -> tuple[_WriteMeta, int]:
        """Start a write of keys: take the lock, read the meta, end the leases
        that expired (their keys' deletion is a revision of its own).

        Returns the meta as read before those leases ended, and how many ended.
        The lock and the read are one statement: on PostgreSQL one that waited
        for the lock re-reads the ``kv_meta`` row but not its subqueries, so
        ``revision`` and ``next_expiry`` may predate the lock (hints only:
        ``_apply`` reads the revision again, ``_expire_due`` the leases).
        """
        meta = _WriteMeta(*tx.c.execute(_WRITE_META + self.lock).fetchone())
        expired = 0
        if meta.next_expiry is not None and meta.next_expiry < tx.now:
            expired = self._expire_due(tx)
        return meta, expired

    def _check_fence(self, c: Conn, fence: Fence, what: str) -> None:
        if fence is None:
            return
        row = c.execute(
            f"SELECT fence, state FROM tasks WHERE id = ?{self.share}", (fence[0],)
        ).fetchone()
        if row is None or row[0] != fence[1] or row[1] != "running":
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

    def _expire_due(self, tx: _Tx) -> int:
        """End the leases that expired (the caller holds the write lock of keys).

        The due leases are locked, so a keep-alive that committed meanwhile
        is seen (the lease is no longer due) rather than overwritten.
        """
        due = [
            r[0]
            for r in tx.c.execute(
                f"SELECT id FROM kv_leases WHERE expires_at < ? ORDER BY id{self.lock}",
                (tx.now,),
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

    # -- keys ---------------------------------------------------------------
    def kv_get(self, key: str, revision: int | None = None) -> tuple[KvRow | None, int]:
        if revision is not None:
            return self._get_at(key, revision)
        for _ in range(3):
            # One statement: the row and the revision come from one state.
            value, mod_rev, version, create_rev, lease_id, expiry, current = self._read(
                _GET, (key,)
            )[0]
            if expiry is not None and expiry < self.now():
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
                expiry = c.execute(_NEXT_EXPIRY).fetchone()[0]
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
                if expiry is None or expiry >= self.now():
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
                + _AT_REVISION
                + " ORDER BY key LIMIT ?",
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
        if compares and not orelse:
            lost = self._lost_without_writing(compares, fence)
            if lost is not None:
                return lost
        request = _TxnRequest(compares, then, orelse, fence, task_id)

        def body(tx: _Tx) -> tuple[bool, tuple[_WriteMeta, TxnOutcome]]:
            self._check_fence(tx.c, fence, "state write")  # before the lock: see above
            meta, expired = self._begin_kv(tx)
            outcome = self._decide(tx, request)
            return bool(expired or outcome.changed), (meta, outcome)

        meta, outcome = self._write_if(body)
        self._retention(meta.revision, outcome.revision, meta.retain)
        return outcome

    def _lost_without_writing(self, compares: list[KvCompare], fence: Fence) -> TxnOutcome | None:
        """The outcome of a transaction with no else-branch whose compares fail
        now, read without taking the write lock; ``None`` if it has to run.

        Such a transaction writes nothing, so one read decides it: the rows and
        the revision come from one statement, and so from one state (which is
        where it takes effect). A losing compare-and-set under contention then
        costs a read, not a turn at the write lock. It runs anyway when the
        fence no longer holds (to raise :class:`FencedError`) or a lease has
        expired (whose keys the write would delete before comparing).
        """
        keys = sorted({c.key for c in compares})
        rows = self._read(
            "SELECT k.key, k.value, k.mod_revision, k.version, k.create_revision, k.lease_id, "
            "(" + _NEXT_EXPIRY + "), (" + _REVISION + "), (SELECT count(*) FROM tasks "
            "WHERE id = ? AND fence = ? AND state = 'running') FROM kv_meta m LEFT JOIN kv k "
            "ON k.key IN (" + ", ".join("?" * len(keys)) + ") AND k.value IS NOT NULL "
            "WHERE m.id = 1",
            (fence[0] if fence else None, fence[1] if fence else None, *keys),
        )
        expiry, current, fence_holds = rows[0][6:]
        if (fence is not None and not fence_holds) or (expiry is not None and expiry < self.now()):
            return None
        seen = {r[0]: _row(r) for r in rows if r[0] is not None}
        failed: list[tuple[KvCompare, Any]] = []
        for compare in compares:
            ok, saw = compare_holds(compare, seen.get(compare.key))
            if not ok:
                failed.append((compare, saw))
        return TxnOutcome(False, current, 0, tuple(failed)) if failed else None

    def _txn_body(self, tx: _Tx, req: _TxnRequest, current: int | None = None) -> TxnOutcome:
        """One compare/then/else transaction: its fence, then :meth:`_decide`."""
        self._check_fence(tx.c, req.fence, "state write")
        return self._decide(tx, req, current)

    def _decide(self, tx: _Tx, req: _TxnRequest, current: int | None = None) -> TxnOutcome:
        """Evaluate the compares and apply the branch they choose; the caller
        holds the write lock of keys and has checked the fence.

        It raises (lease gone) only before its first write, so a failing
        request leaves nothing behind and needs no savepoint.
        """
        c = tx.c
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
                # Leases end under the write lock we hold: this stays true until we commit.
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
        changed, revision = self._apply(tx, ops, req.task_id, current)
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
                _NO_LIMIT if to_revision is None else to_revision,
                _NO_LIMIT if limit is None else limit,
            ),
        )
        return [_change(r) for r in rows]

    def kv_status(self) -> KvStatus:
        revision, compacted, retain, expiry = self._read(
            "SELECT (" + _REVISION + "), compacted, retain, (" + _NEXT_EXPIRY + ") "
            "FROM kv_meta WHERE id = 1"
        )[0]
        return KvStatus(revision, compacted, retain, expiry)

    def kv_compact(self, revision: int, *, fence: Fence = None) -> int:
        def body(tx: _Tx) -> tuple[bool, int]:
            c = tx.c
            self._check_fence(c, fence, "compaction")  # before the lock: see above
            self._lock_kv(c)
            current, compacted, _ = self._meta(c)
            if revision > current:
                raise ConfigError(
                    f"cannot compact to revision {revision}: the store is at revision {current}",
                    revision=revision,
                    current=current,
                )
            # Snapshots are made under a share lock of kv_meta: none is on its way.
            pinned = c.execute("SELECT min(revision) FROM kv_snapshots").fetchone()[0]
            target = revision if pinned is None else min(revision, pinned)
            if target <= compacted:
                return False, compacted
            c.execute(_COMPACT, (target, target))
            c.execute("UPDATE kv_meta SET compacted = ? WHERE id = 1", (target,))
            return True, target

        return self._write_if(body)

    def kv_set_retention(self, retain: int | None) -> None:
        def body(tx: _Tx) -> None:
            tx.c.execute("UPDATE kv_meta SET retain = ? WHERE id = 1", (retain,))

        self._write(body)

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

        def body(tx: _Tx) -> tuple[bool, tuple[_WriteMeta, int, int]]:
            c = tx.c
            self._check_fence(c, fence, "rollback")
            meta, expired = self._begin_kv(tx)
            current, compacted, _ = self._meta(c)
            to = revision
            if snapshot is not None:
                found = c.execute(
                    "SELECT revision FROM kv_snapshots WHERE name = ?", (snapshot,)
                ).fetchone()
                if found is None:
                    raise NotFoundError(
                        f"snapshot {snapshot!r} does not exist; list them with state.snapshots()",
                        snapshot=snapshot,
                    )
                to = found[0]
            if to is None:
                raise ConfigError("rollback needs a revision or a snapshot name")
            _check_revision(to, current, compacted, "rollback to")
            past = {
                r[0]: (r[1], r[2])
                for r in c.execute(
                    "SELECT key, value, lease_id FROM kv_history h WHERE kind = 'put' AND "
                    + hcond
                    + _AT_REVISION,
                    (*params, to),
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
            return bool(expired or changed), (meta, changed, new_revision)

        meta, changed, new_revision = self._write_if(body)
        self._retention(meta.revision, new_revision, meta.retain)
        return TxnOutcome(True, new_revision, changed)

    def kv_snapshot(self, name: str, *, fence: Fence = None) -> int:
        def body(tx: _Tx) -> int:
            c = tx.c
            # Shared with other snapshots, exclusive of compaction (see kv_compact).
            self._check_fence(c, fence, "snapshot")
            self._lock_kv(c, self.share)
            current = self._meta(c)[0]
            taken = c.execute(
                "INSERT INTO kv_snapshots (name, revision, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING RETURNING revision",
                (name, current, tx.now),
            ).fetchone()
            if taken is None:
                old = c.execute(
                    "SELECT revision FROM kv_snapshots WHERE name = ?", (name,)
                ).fetchone()
                raise ConflictError(
                    f"snapshot {name!r} exists already (revision {old[0] if old else '?'}); "
                    "delete it first or choose another name",
                    snapshot=name,
                    revision=old[0] if old else None,
                )
            return current

        return self._write(body)

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

    def kv_delete_snapshot(self, name: str, *, fence: Fence = None) -> bool:
        def body(tx: _Tx) -> bool:
            self._check_fence(tx.c, fence, "snapshot deletion")
            gone = tx.c.execute(
                "DELETE FROM kv_snapshots WHERE name = ? RETURNING name", (name,)
            ).fetchone()
            return gone is not None

        return self._write(body)

    # -- leases -------------------------------------------------------------
    def lease_grant(self, ttl: float, *, fence: Fence = None) -> LeaseRow:
        def body(tx: _Tx) -> LeaseRow:
            self._check_fence(tx.c, fence, "lease grant")
            lease_id = tx.c.execute(
                "INSERT INTO kv_leases (ttl, expires_at, granted_at, task_id) "
                "VALUES (?, ?, ?, ?) RETURNING id",
                (ttl, tx.now + ttl, tx.now, fence[0] if fence else None),
            ).fetchone()[0]
            return LeaseRow(lease_id, ttl, tx.now + ttl, tx.now, 0)

        return self._write(body)

    def lease_keepalive(self, lease_id: int, *, fence: Fence = None) -> LeaseRow:
        def body(tx: _Tx) -> tuple[bool, LeaseRow | None]:
            c = tx.c
            self._check_fence(c, fence, "lease keep-alive")
            # A lease that expired is not brought back, even if nobody has
            # deleted its keys yet: they are as good as gone.
            r = c.execute(
                "UPDATE kv_leases SET expires_at = ? + ttl WHERE id = ? AND expires_at >= ? "
                "RETURNING id, ttl, expires_at, granted_at",
                (tx.now, lease_id, tx.now),
            ).fetchone()
            if r is None:
                return False, None
            keys = c.execute(
                "SELECT count(*) FROM kv WHERE lease_id = ? AND value IS NOT NULL",
                (lease_id,),
            ).fetchone()[0]
            return True, LeaseRow(r[0], r[1], r[2], r[3], keys)

        found = self._write_if(body)
        if found is None:
            self.kv_expire_leases()  # its keys go now, not at the next sweep
            raise LeaseExpiredError(
                f"lease {lease_id} expired or was revoked and its keys were deleted; grant "
                "a new lease",
                lease_id=lease_id,
            )
        return found

    def lease_revoke(self, lease_id: int, *, fence: Fence = None) -> int:
        def body(tx: _Tx) -> tuple[bool, int]:
            self._check_fence(tx.c, fence, "lease revoke")  # before the lock: see above
            self._lock_kv(tx.c)
            if tx.c.execute("SELECT 1 FROM kv_leases WHERE id = ?", (lease_id,)).fetchone():
                return True, self._drop_leases(tx, [lease_id])
            return False, 0

        return self._write_if(body)

    def lease_info(self, lease_id: int) -> LeaseRow | None:
        rows = self._read(
            "SELECT id, ttl, expires_at, granted_at, (SELECT count(*) FROM kv "
            "WHERE lease_id = kv_leases.id AND value IS NOT NULL) FROM kv_leases "
            "WHERE id = ? AND expires_at >= ?",
            (lease_id, self.now()),
        )
        return LeaseRow(*rows[0]) if rows else None

    def kv_expire_leases(self) -> int:
        def body(tx: _Tx) -> tuple[bool, int]:
            self._lock_kv(tx.c)
            ended = self._expire_due(tx)
            return ended > 0, ended

        return self._write_if(body)

    # -- mailboxes ----------------------------------------------------------
    def mailbox_send(
        self, mailbox: str, messages: list[OutMessage], *, fence: Fence = None
    ) -> list[tuple[int, bool]]:
        def body(tx: _Tx) -> list[tuple[int, bool]]:
            self._check_fence(tx.c, fence, "message")
            task_id = fence[0] if fence else None
            return [self._send_one(tx, mailbox, m, task_id) for m in messages]

        return self._write(body)

    def _send_one(
        self, tx: _Tx, mailbox: str, m: OutMessage, task_id: int | None
    ) -> tuple[int, bool]:
        c = tx.c
        while True:
            # A concurrent send of the same id makes this wait for its outcome.
            r = c.execute(
                "INSERT INTO mailbox_messages (mailbox, msg_id, payload, checksum, size, "
                "sent_at, visible_at, task_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (mailbox, msg_id) DO NOTHING RETURNING id",
                (mailbox, m.msg_id, m.payload, m.checksum, len(m.payload), tx.now, tx.now, task_id),
            ).fetchone()
            if r is not None:
                return r[0], False
            found = c.execute(
                "SELECT id, checksum FROM mailbox_messages WHERE mailbox = ? AND msg_id = ?",
                (mailbox, m.msg_id),
            ).fetchone()
            if found is None:
                continue  # purged since the insert looked: store it after all
            if bytes(found[1]) != m.checksum:
                raise ConflictError(
                    f"message id {m.msg_id!r} was already sent to mailbox {mailbox!r} "
                    "with another payload; use a new id for a new message. Nothing was "
                    "sent",
                    mailbox=mailbox,
                    msg_id=m.msg_id,
                )
            return found[0], True

    def mailbox_receive(
        self, mailbox: str, limit: int, visibility: float, *, fence: Fence = None
    ) -> tuple[list[MailboxRow], float | None]:
        # Look before writing: an idle receiver only reads (and on PostgreSQL
        # a write would also wake every waiting process).
        ready = self._read("SELECT 1 " + _MAILBOX_READY + "LIMIT 1", (mailbox, self.now()))
        rows: list[Any] = []
        if ready:

            def body(tx: _Tx) -> tuple[bool, list[Any]]:
                self._check_fence(tx.c, fence, "receive")
                # Messages another receiver holds are skipped, not waited for;
                # one it took meanwhile is re-checked (no longer visible) and left.
                taken = tx.c.execute(
                    "UPDATE mailbox_messages SET visible_at = ?, deliveries = deliveries + 1 "
                    "WHERE id IN (SELECT id "
                    + _MAILBOX_READY
                    + f"ORDER BY id LIMIT ?{self.skip_locked}) "
                    "RETURNING id, msg_id, payload, checksum, sent_at, deliveries",
                    (tx.now + visibility, mailbox, tx.now, limit),
                ).fetchall()
                return bool(taken), taken

            rows = self._write_if(body)
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
        # One conditional UPDATE per message: it re-checks the delivery count
        # on the row it locks, so a delivery that ended meanwhile is refused.
        if ack:
            sql = (
                "UPDATE mailbox_messages SET acked_at = ?, payload = NULL "
                "WHERE id = ? AND mailbox = ? AND deliveries = ? AND acked_at IS NULL "
                "RETURNING id"
            )
        else:
            sql = (
                "UPDATE mailbox_messages SET visible_at = ? "
                "WHERE id = ? AND mailbox = ? AND deliveries = ? AND acked_at IS NULL "
                "RETURNING id"
            )

        def body(tx: _Tx) -> tuple[bool, list[bool]]:
            self._check_fence(tx.c, fence, "acknowledgement" if ack else "release")
            at = tx.now if ack else tx.now + delay
            done = [
                tx.c.execute(sql, (at, seq, mailbox, delivery)).fetchone() is not None
                for seq, delivery in deliveries
            ]
            return any(done), done

        return self._write_if(body)

    def mailbox_stats(self, mailbox: str) -> MailboxStats:
        now = self.now()
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

    def mailbox_purge(self, acked_before: float, *, fence: Fence = None) -> int:
        def body(tx: _Tx) -> int:
            self._check_fence(tx.c, fence, "purge")
            gone = tx.c.execute(
                "DELETE FROM mailbox_messages WHERE acked_at IS NOT NULL AND acked_at < ? "
                "RETURNING id",
                (acked_before,),
            ).fetchall()
            return len(gone)

        return self._write(body)

    # -- topics -------------------------------------------------------------
    def topic_publish(
        self, topic: str, messages: list[OutMessage], *, fence: Fence = None
    ) -> list[tuple[int, bool]]:
        def body(tx: _Tx) -> list[tuple[int, bool]]:
            c = tx.c
            self._check_fence(c, fence, "publish")
            task_id = fence[0] if fence else None
            c.execute(_TOPIC_CREATE, (topic,))
            # The topic's lock: offsets are taken, and become visible, in order.
            offset = c.execute(
                f"SELECT next_offset FROM topics WHERE name = ?{self.lock}", (topic,)
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

        return self._write(body)

    def _topic_bounds(self, c: Conn, topic: str, lock: str = "") -> tuple[int, int]:
        r = c.execute(
            f"SELECT first_offset, next_offset FROM topics WHERE name = ?{lock}", (topic,)
        ).fetchone()
        return (0, 0) if r is None else (r[0], r[1])

    def topic_read(self, topic: str, from_offset: int, limit: int) -> TopicPage:
        def read(c: Conn) -> TopicPage:
            first, nxt = self._topic_bounds(c, topic)
            if from_offset < first:
                raise _trimmed(
                    topic,
                    from_offset,
                    first,
                    f", so reading from {from_offset} would miss messages; resubscribe from "
                    f"offset {first} or later",
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
        def body(tx: _Tx) -> int:
            c = tx.c
            self._check_fence(c, fence, "subscription")
            c.execute(_TOPIC_CREATE, (topic,))
            # Shared with publishers' reads, exclusive of a trim (see topic_trim).
            first, nxt = self._topic_bounds(c, topic, self.share)
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
                    raise _trimmed(
                        topic, from_offset, first, f"; subscribe from offset {first} or later"
                    )
                start = from_offset
            c.execute(_OFFSET_UPSERT, (topic, subscriber, start, tx.now))
            return start

        return self._write(body)

    def topic_commit(
        self, topic: str, subscriber: str, next_offset: int, *, fence: Fence = None
    ) -> None:
        def body(tx: _Tx) -> None:
            self._check_fence(tx.c, fence, "offset commit")
            tx.c.execute(_OFFSET_UPSERT, (topic, subscriber, next_offset, tx.now))

        self._write(body)

    def topic_unsubscribe(self, topic: str, subscriber: str, *, fence: Fence = None) -> bool:
        def body(tx: _Tx) -> bool:
            self._check_fence(tx.c, fence, "unsubscription")
            gone = tx.c.execute(
                "DELETE FROM topic_offsets WHERE topic = ? AND subscriber = ? RETURNING topic",
                (topic, subscriber),
            ).fetchone()
            return gone is not None

        return self._write(body)

    def topic_subscribers(self, topic: str) -> list[SubscriberRow]:
        rows = self._read(
            "SELECT subscriber, next_offset, updated_at FROM topic_offsets WHERE topic = ? "
            "ORDER BY subscriber",
            (topic,),
        )
        return [SubscriberRow(*r) for r in rows]

    def topic_trim(
        self, topic: str, before: int | None, *, force: bool = False, fence: Fence = None
    ) -> int:
        def body(tx: _Tx) -> tuple[bool, int]:
            c = tx.c
            self._check_fence(c, fence, "trim")
            # The topic's lock keeps subscribers from registering meanwhile, and
            # the subscribers' rows are locked so that none moves back under us.
            first, nxt = self._topic_bounds(c, topic, self.lock)
            positions = [
                r[0]
                for r in c.execute(
                    f"SELECT next_offset FROM topic_offsets WHERE topic = ?{self.lock}", (topic,)
                )
            ]
            slowest = min(positions, default=None)
            if before is None:
                target = first if slowest is None else slowest
            else:
                target = before if force or slowest is None else min(before, slowest)
            target = min(target, nxt)
            if target <= first:
                return False, first
            c.execute("DELETE FROM topic_messages WHERE topic = ? AND seq < ?", (topic, target))
            c.execute("UPDATE topics SET first_offset = ? WHERE name = ?", (target, topic))
            return True, target

        return self._write_if(body)

    def topic_offsets(self, topic: str) -> tuple[int, int]:
        return self._snap(lambda c: self._topic_bounds(c, topic))
