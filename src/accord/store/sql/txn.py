"""Transactions of keys: if every compare holds apply ``then``, else ``orelse``.

:func:`compare_holds` evaluates one compare against a key's row (values are
compared as values, :func:`values_equal`). A transaction with no else-branch
whose compares fail is decided by one read
(:meth:`TxnMixin._lost_without_writing`); the others take the write lock of
keys and run :meth:`TxnMixin._decide`, which the SQLite group commit also
runs for the requests of other processes."""

from __future__ import annotations

from typing import Any

from accord import serde
from accord.errors import (
    LeaseExpiredError,
)
from accord.store.records import (
    Fence,
    KvCompare,
    KvOp,
    KvPut,
    KvRow,
    TxnOutcome,
)
from accord.store.sql.core import _Tx
from accord.store.sql.leases import LeasesMixin
from accord.store.sql.state_core import (
    _NEXT_EXPIRY,
    _REVISION,
    _ROW_COLS,
    _row,
    _TxnRequest,
    _WriteMeta,
)


def values_equal(stored: bytes, operand: bytes) -> bool:
    """Whether two serialised values are equal as values.

    Equal bytes are equal values; otherwise both are decoded and compared with
    ``==`` (a dict written in another key order is still equal). A comparison
    that does not give a plain bool (numpy arrays) counts as not equal.
    """
    if stored == operand:
        return True
    try:
        result = serde.loads(stored) == serde.loads(operand)
    except Exception:
        return False
    return result if isinstance(result, bool) else False


def compare_holds(compare: KvCompare, row: KvRow | None) -> tuple[bool, Any]:
    """Evaluate one compare against the key's current row; also return what was seen."""
    if compare.target == "value":
        if row is None:
            return compare.op == "!=", None
        equal = values_equal(row.value, compare.operand)
        return (equal if compare.op == "==" else not equal), row.value
    seen: int
    if row is None:
        seen = 0
    elif compare.target == "version":
        seen = row.version
    elif compare.target == "revision":
        seen = row.revision
    elif compare.target == "create_revision":
        seen = row.create_revision
    else:
        seen = row.lease_id or 0
    operand = compare.operand
    ok = {
        "==": seen == operand,
        "!=": seen != operand,
        "<": seen < operand,
        "<=": seen <= operand,
        ">": seen > operand,
        ">=": seen >= operand,
    }[compare.op]
    return ok, seen


class TxnMixin(LeasesMixin):
    """Compare-and-set transactions of keys."""

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
