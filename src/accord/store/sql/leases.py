"""Leases of the state store: grant, keep alive, revoke, expire.

A key tied to a lease is deleted when the lease ends. Expired leases are
ended by the next writer of keys (:meth:`LeasesMixin._begin_kv`), under the
write lock of keys, or by :meth:`LeasesMixin.kv_expire_leases`."""

from __future__ import annotations

from accord.errors import (
    LeaseExpiredError,
)
from accord.store.records import (
    Fence,
    KvDelete,
    LeaseRow,
)
from accord.store.sql.core import _Tx
from accord.store.sql.state_core import _WRITE_META, StateBase, _WriteMeta


class LeasesMixin(StateBase):
    """Leases, and the start of every write of keys (which ends expired ones)."""

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
