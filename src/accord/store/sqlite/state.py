"""The state store on the embedded store: what SQLite does its own way.

:class:`SqliteStateMixin` is :class:`~accord.store.sql.state.SqlStateMixin`
(the logic both backends share) plus two things that only SQLite needs:

- **Group commit of key-value writes** (:mod:`accord.store.sqlite.group`):
  SQLite commits one transaction at a time, so one process commits the
  writes of the processes waiting behind it, in one transaction and one
  fsync. Each request runs the shared :meth:`SqlStateMixin._txn_body`; the
  outcomes travel between processes as msgpack
  (:mod:`accord.store.sqlite.wire`), in the request's slot or, when larger
  than a slot, in the group's row of ``kv_groups``. (The ``kv_meta.last_group``
  column, the group counter of an earlier design whose numbers could be
  reused, is no longer used.)
- **Read transactions** (:meth:`SqliteStateMixin._snap`): in WAL mode a
  ``BEGIN`` ... ``COMMIT`` read sees one commit and nothing after it.

Mixed into :class:`~accord.store.sqlite.store.SqliteStore`, whose ``_tx`` (a
``BEGIN IMMEDIATE`` write transaction, durable on commit), ``_read``,
``_busy`` and ``_conn`` it uses.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, TypeVar

from accord.errors import AccordError, StoreError
from accord.store.records import Fence, KvCompare, KvOp, TxnOutcome
from accord.store.sql.core import Conn, _Tx
from accord.store.sql.state import SqlStateMixin
from accord.store.sql.state_core import _TxnRequest
from accord.store.sqlite.errors import sqlite_errors
from accord.store.sqlite.group import CommitGroup, group_for
from accord.store.sqlite.slots import InDatabase, Taken, new_group_id
from accord.store.sqlite.wire import (
    _decode_list,
    _decode_outcome,
    _decode_request,
    _encode_error,
    _encode_list,
    _encode_outcome,
    _encode_request,
)

T = TypeVar("T")

# The outcomes of commit groups no slot refers to any more are deleted after
# this many groups, or once this many bytes of outcomes were written (see
# SqliteStateMixin._prune_groups).
PRUNE_EVERY = 64
PRUNE_BYTES = 4 << 20


class SqliteStateMixin(SqlStateMixin):
    """The state store and messaging for :class:`~accord.store.sqlite.store.SqliteStore`."""

    if TYPE_CHECKING:
        path: str
        busy_timeout: float
        file_mode: int

        def _tx(self) -> AbstractContextManager[_Tx]: ...

        def _busy(self, action: Callable[[], T]) -> T: ...

        def _conn(self) -> sqlite3.Connection: ...

    def _snap(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` in one read transaction (one consistent view of the store)."""
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

        with sqlite_errors(self.path):
            return self._busy(attempt)

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
            self._fetch_outcome,
            self.busy_timeout,
        )
        if isinstance(got, bytes):
            return _decode_outcome(got, compares)
        if got is None:  # lead(True) always returns its own request's outcome
            raise StoreError(f"the store {self.path} lost track of a write; read the key")
        return got

    def _commit_group(self) -> CommitGroup:
        group = self.__dict__.get("_state_group")
        if group is None:
            group = self.__dict__["_state_group"] = group_for(self.path, self, self.file_mode)
        return group

    def _lead(self, own: _TxnRequest | None) -> TxnOutcome | None:
        """Run ``own`` and every parked request in one commit (we hold the leader lock).

        First the TAKEN slots of a leader that died are settled from what its
        group left in the database (read inside our write transaction, so it
        is the final word). Then, in one transaction: our own request, each
        parked request of a live owner, and the group's outcomes under a new
        group id (``kv_groups``). Only after the commit are the outcomes
        written back, so a writer is never told of a write that could still
        be rolled back.
        """
        group = self._commit_group()
        own_outcome: TxnOutcome | None = None
        own_error: AccordError | None = None
        taken: list[Taken] = []
        outcomes: list[bytes] = []
        number = new_group_id()
        last = 0
        group.gather(own is not None)  # before the database lock: others write meanwhile
        try:
            with self._tx() as tx:
                c = tx.c
                self._resolve_orphans(c, group)
                meta, expired = self._begin_kv(tx)
                # The revision, known exactly while we hold SQLite's write lock
                # (unless expired leases just took one): each request's
                # outcome carries it on to the next.
                current: int | None = None if expired else meta.revision
                last = meta.revision
                if own is not None:
                    try:
                        own_outcome = self._txn_body(tx, own, current)
                        last = current = max(last, own_outcome.revision)
                    except AccordError as exc:
                        own_error = exc
                taken = group.take(number, own is not None)
                for item in taken:
                    try:
                        outcome = self._txn_body(tx, _decode_request(item.request), current)
                        last = current = max(last, outcome.revision)
                        outcomes.append(_encode_outcome(outcome))
                    except AccordError as exc:
                        outcomes.append(_encode_error(exc))
                if taken:
                    self._prune_groups(c, group, sum(map(len, outcomes)))
                    c.execute(
                        "INSERT INTO kv_groups (id, outcomes) VALUES (?, ?)",
                        (number, _encode_list(outcomes)),
                    )
        except BaseException as exc:
            if taken:
                self._settle_failed_group(group, taken, outcomes, number, exc)
            raise
        if taken:
            group.finish(
                (t.slot, t.ticket, number, i, o)
                for i, (t, o) in enumerate(zip(taken, outcomes, strict=True))
            )
        if own_error is not None:
            raise own_error
        self._retention(meta.revision, last, meta.retain)
        return own_outcome

    def _prune_groups(self, c: Conn, group: CommitGroup, size: int) -> None:
        """Now and then, delete the kv_groups rows that no slot refers to.

        Under the leader lock only leaders add references to rows (and the
        group being committed has none yet), so a row found unreferenced is
        never read again. Every PRUNE_EVERY groups, or sooner when the
        outcomes written since the last pruning are large.
        """
        counts = self.__dict__.setdefault("_groups_unpruned", [0, 0])
        counts[0] += 1
        counts[1] += size
        if counts[0] < PRUNE_EVERY and counts[1] < PRUNE_BYTES:
            return
        counts[0] = counts[1] = 0
        keep = sorted(group.referenced())
        c.execute(
            "DELETE FROM kv_groups WHERE id NOT IN (SELECT value FROM json_each(?))",
            (json.dumps(keep),),
        )

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
        leave that in doubt; the group id is unique, so its row is there if and
        only if the group committed); if even that fails, the slots stay TAKEN
        and the next leader decides the same way.
        """
        try:
            committed = self._group_outcomes(number) is not None
        except BaseException:
            return
        if committed and len(outcomes) == len(taken):
            group.finish(
                (t.slot, t.ticket, number, i, o)
                for i, (t, o) in enumerate(zip(taken, outcomes, strict=True))
            )
            return
        error = (
            exc
            if isinstance(exc, AccordError)
            else StoreError(
                f"the write was interrupted ({type(exc).__name__}); nothing was written"
            )
        )
        group.finish(
            (t.slot, t.ticket, number, i, _encode_error(error)) for i, t in enumerate(taken)
        )

    def _group_outcomes(self, number: int) -> list[bytes] | None:
        rows = self._read("SELECT outcomes FROM kv_groups WHERE id = ?", (number,))
        return None if not rows else _decode_list(rows[0][0])

    def _fetch_outcome(self, where: InDatabase) -> bytes:
        """An outcome too large for its slot, read from its group's row (which
        stays until the slot that refers to it is freed)."""
        try:
            outcomes = self._group_outcomes(where.group)
        except StoreError as exc:
            raise StoreError(
                f"the write was committed, but its outcome could not be read back from "
                f"{self.path} ({exc}); read the keys to see where they stand",
                path=self.path,
                committed=True,
            ) from exc
        if outcomes is None or where.position >= len(outcomes):
            raise StoreError(
                f"the write was committed, but its outcome is missing from {self.path} "
                f"(group {where.group}); read the keys to see where they stand",
                path=self.path,
                committed=True,
            )
        return outcomes[where.position]

    def _resolve_orphans(self, c: Conn, group: CommitGroup) -> None:
        """Settle the TAKEN slots of a leader that died (see :mod:`accord.store.sqlite.group`).

        Runs inside our write transaction: whether the orphans' group
        committed cannot change meanwhile. If it did, their outcomes are
        copied to the slots (or, if too large, left in its row); if not, the
        requests were never applied and go back to PENDING.
        """
        orphans = group.orphans()
        if not orphans:
            return
        known: dict[int, list[bytes] | None] = {}
        done: list[tuple[int, int, int, int, bytes | None]] = []
        for o in orphans:
            if o.group not in known:
                row = c.execute("SELECT outcomes FROM kv_groups WHERE id = ?", (o.group,))
                found = row.fetchone()
                known[o.group] = None if found is None else _decode_list(found[0])
            outcomes = known[o.group]
            outcome = None if outcomes is None else outcomes[o.position]
            done.append((o.slot, o.ticket, o.group, o.position, outcome))
        group.finish(done)
