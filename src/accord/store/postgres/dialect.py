"""What PostgreSQL spells its own way: placeholders, row locks, notifications.

The shared SQL (:mod:`accord.store.sql`) is written with ``?`` placeholders
and leaves row locks to the dialect (SQLite's in
:mod:`accord.store.sqlite.dialect`); :class:`PgDialect` holds PostgreSQL's row-lock
suffixes and functions, :class:`_PgConn` turns the placeholders into
psycopg's, and the statements here are the ones only PostgreSQL runs.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import psycopg

from accord.store.sql.claim import MAX_LEVELS
from accord.store.sql.core import Cursor

CHANNEL = "accord"  # commits that wrote something one may wait for (not claims alone)
WORK_CHANNEL = "accord_work"  # commits that made tasks ready: what idle nodes wait for
# Any constant works: it only has to be the same for every accord process.
_MIGRATION_LOCK = 0x6163636F7264
# Only transactions that wrote (or locked) rows have a transaction id: a
# claim that found nothing wakes nobody. The payload names the sending
# thread, whose own commits do not count as changes for it (as on SQLite,
# where a connection does not see its own commits in data_version).
_NOTIFY_AND_COMMIT = (
    f"SELECT CASE WHEN {{2}} THEN pg_notify('{CHANNEL}', '{{0}}') END, "
    f"CASE WHEN {{1}} THEN pg_notify('{WORK_CHANNEL}', '{{0}}') END "
    "WHERE txid_current_if_assigned() IS NOT NULL; COMMIT"
)


class PgDialect:
    """PostgreSQL's row locks and functions for the shared SQL (see
    :class:`~accord.store.sql.core.SqlBase`)."""

    lock = " FOR UPDATE"
    blob_contains = "position(?::bytea in {col}) > 0"
    lock_t = " FOR UPDATE OF t"
    share = " FOR SHARE"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    skip_locked_t = " FOR UPDATE OF t SKIP LOCKED"
    share_skip_locked = " FOR SHARE SKIP LOCKED"
    greatest = "GREATEST"
    # Claimers run side by side (they skip each other's rows): read more candidates.
    claimers = 4


_CANDIDATES_SQL = f"""
WITH RECURSIVE levels (req_key, priority, n) AS (
    (SELECT req_key, priority, 1 FROM tasks WHERE queue = ? AND state = 'ready'
     ORDER BY req_key, priority LIMIT 1)
    UNION ALL
    SELECT next.req_key, next.priority, levels.n + 1 FROM levels, LATERAL (
        SELECT req_key, priority FROM tasks WHERE queue = ? AND state = 'ready'
        AND (req_key, priority) > (levels.req_key, levels.priority)
        ORDER BY req_key, priority LIMIT 1) next
    WHERE levels.n < {MAX_LEVELS}
)
SELECT c.id, c.priority, c.weight, c.size, c.ready_at, c.deadline_at, c.resources,
       c.limit_key, levels.req_key
FROM levels, LATERAL (
    (SELECT * FROM tasks WHERE queue = ? AND state = 'ready' AND req_key = levels.req_key
     AND priority = levels.priority AND ready_at <= ? ORDER BY ready_at LIMIT ?)
    UNION ALL
    (SELECT * FROM tasks WHERE queue = ? AND state = 'ready' AND req_key = levels.req_key
     AND priority = levels.priority AND ready_at <= ? ORDER BY weight + size, ready_at LIMIT ?)
    ) c
UNION ALL
(SELECT id, priority, weight, size, ready_at, deadline_at, resources, limit_key, req_key
 FROM tasks WHERE queue = ? AND state = 'ready' AND deadline_at IS NOT NULL
 AND ready_at <= ? ORDER BY deadline_at LIMIT ?)
"""


@functools.lru_cache(maxsize=1024)
def _pg(sql: str) -> str:
    """The shared SQL's ``?`` placeholders in psycopg's ``%s`` form."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PgConn:
    """A psycopg connection that speaks the shared SQL's placeholders."""

    __slots__ = ("conn",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Any = (), /) -> Cursor:
        # Statements are prepared once used a few times, and their plans kept;
        # but one over an array of ids is planned for each array: a plan made
        # for a handful of ids would be kept for a claim of hundreds, and make
        # it a hundred times slower.
        prepare = False if any(type(p) is list for p in params) else None
        return self.conn.execute(_pg(sql), params, prepare=prepare)

    def executemany(self, sql: str, params: Iterable[Any], /) -> Any:
        with self.conn.cursor() as cur:
            cur.executemany(_pg(sql), params)
