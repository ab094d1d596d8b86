"""The state store on the embedded store: what SQLite does its own way.

:class:`SqliteStateMixin` is :class:`~accord.store.sql_state.SqlStateMixin`
(the logic both backends share) plus two things that only SQLite needs:

- **Group commit of key-value writes** (:mod:`accord.store.sqlite_group`):
  SQLite commits one transaction at a time, so one process commits the
  writes of the processes waiting behind it, in one transaction and one
  fsync. Each request runs the shared :meth:`SqlStateMixin._txn_body`; the
  outcomes travel between processes as msgpack.
- **Read transactions** (:meth:`SqliteStateMixin._snap`): in WAL mode a
  ``BEGIN`` ... ``COMMIT`` read sees one commit and nothing after it.

Mixed into :class:`~accord.store.sqlite.SqliteStore`, whose ``_tx`` (a
``BEGIN IMMEDIATE`` write transaction, durable on commit), ``_read``,
``_busy`` and ``_conn`` it uses.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from accord import errors
from accord.errors import AccordError, StoreError
from accord.store.sql_state import SqlStateMixin, _TxnRequest
from accord.store.sqlite_group import CommitGroup, Taken, group_for
from accord.store.state_base import (
    Fence,
    KvCompare,
    KvDelete,
    KvOp,
    KvPut,
    TxnOutcome,
)

if TYPE_CHECKING:
    from accord.store.sql import Conn, _Tx

T = TypeVar("T")

# Outcomes of this many recent commit groups are kept (see sqlite_group).
GROUPS_KEPT = 1024

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


class SqliteStateMixin(SqlStateMixin):
    """The state store and messaging for :class:`~accord.store.sqlite.SqliteStore`."""

    if TYPE_CHECKING:
        path: str
        busy_timeout: float

        def _tx(self) -> AbstractContextManager[_Tx]: ...

        def _busy(self, action: Callable[[], T]) -> T: ...

        def _conn(self) -> sqlite3.Connection: ...

    def _snap(self, fn: Callable[[Conn], T]) -> T:
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

    # -- group commit -------------------------------------------------------
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
                meta, _ = self._begin_kv(tx)
                if own is not None:
                    try:
                        own_outcome = self._txn_body(tx, own)
                    except AccordError as exc:
                        own_error = exc
                number = meta.last_group + 1
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
        after = own_outcome.revision if own_outcome is not None else meta.revision
        self._retention(meta.revision, after, meta.retain)
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
