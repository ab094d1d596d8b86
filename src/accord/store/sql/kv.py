"""Reads of keys: one key, or a range under a prefix, now or at a revision."""

from __future__ import annotations

from accord.store.records import (
    KvRow,
)
from accord.store.sql.core import Conn
from accord.store.sql.state_core import (
    _AT_REVISION,
    _NEXT_EXPIRY,
    _NO_LIMIT,
    _REVISION,
    _ROW_COLS,
    StateBase,
    _check_revision,
    _key_cond,
    _row,
)

_GET = (
    "SELECT k.value, k.mod_revision, k.version, k.create_revision, k.lease_id, "
    "(" + _NEXT_EXPIRY + "), (" + _REVISION + ") "
    "FROM kv_meta m LEFT JOIN kv k ON k.key = ? AND k.value IS NOT NULL WHERE m.id = 1"
)


class KvMixin(StateBase):
    """Reading keys."""

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
