"""History of keys: watches, history reads, compaction, rollback and snapshots."""

from __future__ import annotations

from accord.errors import (
    CompactedError,
    ConfigError,
    ConflictError,
    NotFoundError,
)
from accord.store.records import (
    ChangesPage,
    Fence,
    KvChange,
    KvDelete,
    KvOp,
    KvPut,
    KvStatus,
    SnapshotRow,
    TxnOutcome,
)
from accord.store.sql.core import Conn, _Tx
from accord.store.sql.leases import LeasesMixin
from accord.store.sql.state_core import (
    _AT_REVISION,
    _CHANGE_COLS,
    _NEXT_EXPIRY,
    _NO_LIMIT,
    _REVISION,
    _change,
    _check_revision,
    _key_cond,
    _WriteMeta,
    prefix_end,
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


class HistoryMixin(LeasesMixin):
    """What the history of keys keeps, and what is read and made from it."""

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
