"""The shared store for many machines: one PostgreSQL database.

Every node, on any host, points at the same database. The rules are the ones
of :mod:`accord.store.sql`; this package supplies what PostgreSQL does
differently:

- Connections come from a psycopg pool, one per process (a pool is not
  carried across ``fork``).
- Transactions run at READ COMMITTED side by side. Reads that a write depends
  on lock their rows; claims lock candidate rows with ``FOR UPDATE SKIP
  LOCKED``, so claimers never wait for each other. A transaction that loses a
  deadlock, or a race on a unique key, is run again.
- Time is the server's: every transaction reads ``now()`` once and judges
  leases, delays and deadlines by it, so a node whose clock is wrong neither
  steals leases early nor keeps them too long.
- Every transaction that wrote sends ``NOTIFY accord`` on commit. A listener thread
  counts notifications, and :meth:`changed` answers from that count; while
  the listener is disconnected, :meth:`changed` falls back to polling.
- When the server is unreachable (restart, network cut), operations retry for
  ``retry_for`` seconds before raising :class:`~accord.errors.StoreUnavailableError`.
  A connection it refuses for good (a wrong password, a missing role or
  database) raises :class:`~accord.errors.StoreURLError` at once instead.
  A commit whose answer was lost is never retried blindly: it raises
  :class:`~accord.errors.StoreUnavailableError` with ``outcome_unknown=True``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import psycopg_pool

from accord.errors import SchemaError, StoreNotFoundError, StoreURLError
from accord.store.postgres.connections import (
    CLOCK_RESYNC,
    PgConnections,
    _Unknown,
    _with_defaults,
    redact,
)
from accord.store.postgres.dialect import (
    _MIGRATION_LOCK,
    _NOTIFY_AND_COMMIT,
    CHANNEL,
    WORK_CHANNEL,
    PgDialect,
    _pg,
    _PgConn,
)
from accord.store.postgres.fast import PgFastPaths
from accord.store.postgres.listen import _Listener, _sender
from accord.store.sql.core import Conn, _Tx, migrations, upgrade
from accord.store.sql.state import SqlStateMixin

T = TypeVar("T")

MIGRATIONS = migrations("postgresql")
SCHEMA_VERSION = MIGRATIONS[-1][0]
_POLL_FALLBACK = 0.05


class PgStore(PgDialect, PgConnections, SqlStateMixin, PgFastPaths):
    """The shared store, in one PostgreSQL database (``postgresql://...``)."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        connect_timeout: float = 10.0,
        retry_for: float = 30.0,
        create: bool = True,
    ) -> None:
        super().__init__()
        self.dsn = url
        self.url = redact(url)
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.retry_for = retry_for
        self._closed = False
        self._guard = threading.Lock()
        self._pid = os.getpid()
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._listener: _Listener | None = None
        self._local = threading.local()
        self._synced: tuple[float, float] | None = None  # (server time, monotonic) then
        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise StoreURLError(
                f"store URL {self.url!r} is not a valid PostgreSQL URL ({exc}); "
                "use postgresql://user:password@host:port/database",
                url=self.url,
            ) from None
        for port in str(params.get("port", "")).split(","):
            if port and not port.isdigit():
                raise StoreURLError(
                    f"store URL {self.url!r}: port {port!r} is not a number; "
                    "use postgresql://user:password@host:5432/database",
                    url=self.url,
                )
        self.dsn = _with_defaults(params, connect_timeout)
        try:
            self._migrate(create)
        except BaseException:
            self.close()
            raise

    def _write(self, body: Callable[[_Tx], T]) -> T:
        def attempt() -> T:
            with self._connection() as conn:
                cur = conn.execute("BEGIN; SELECT extract(epoch FROM now())::float8")
                cur.nextset()
                row = cur.fetchone()
                assert row is not None
                tx = _Tx(_PgConn(conn), row[0])
                self._synced = (row[0], time.monotonic())
                try:
                    result = body(tx)
                except BaseException:
                    if not conn.broken:
                        conn.execute("ROLLBACK")
                    raise
                try:
                    notify = _NOTIFY_AND_COMMIT.format(
                        _sender(), "true" if tx.work else "false", "true" if tx.news else "false"
                    )
                    conn.execute(notify.encode())
                except psycopg.OperationalError as exc:
                    if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                        conn.execute("ROLLBACK")
                        raise
                    raise _Unknown() from exc
                self._committed(tx)
                return result

        return self._retrying(attempt, "writing")

    def _read(self, sql: str, params: Any = ()) -> list[Any]:
        def attempt() -> list[Any]:
            with self._connection() as conn:
                return conn.execute(_pg(sql), params).fetchall()

        return self._retrying(attempt, "reading")

    def _snap(self, fn: Callable[[Conn], T]) -> T:
        def attempt() -> T:
            with self._connection() as conn:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                try:
                    return fn(_PgConn(conn))
                finally:
                    if not conn.broken:
                        conn.execute("ROLLBACK")

        return self._retrying(attempt, "reading")

    def _new_task_ids(self, c: Conn, count: int) -> list[int]:
        if count == 0:
            return []
        return sorted(
            row[0]
            for row in c.execute(
                "SELECT nextval(pg_get_serial_sequence('tasks', 'id')) FROM generate_series(1, ?)",
                (count,),
            )
        )

    def now(self) -> float:
        # The server's clock, read at most a minute ago (every transaction
        # reads it) and carried forward on this host's monotonic clock, which
        # neither drifts much in a minute nor jumps with the wall clock.
        synced = self._synced
        if synced is None or time.monotonic() - synced[1] > CLOCK_RESYNC:
            (server,) = self._read("SELECT extract(epoch FROM now())::float8")[0]
            synced = self._synced = (server, time.monotonic())
        return synced[0] + time.monotonic() - synced[1]

    def _ids_in(self, column: str, ids: list[int]) -> tuple[str, Any]:
        if len(ids) == 1:
            return f"{column} = ?::bigint", ids[0]  # a plan that can be kept
        return f"{column} = ANY(?::bigint[])", list(ids)

    def _migrate(self, create: bool = True) -> None:
        def attempt() -> None:
            with self._connection() as conn, conn.transaction():
                # Nodes that start together migrate one at a time.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                self.found_version = self._stored_version(conn)
                if self.found_version == 0 and not create:
                    raise StoreNotFoundError(
                        f"no accord store at {self.url}: the database has no accord tables; "
                        "check --store or ACCORD_STORE (accord migrate creates them)",
                        url=self.url,
                    )
                upgrade(_PgConn(conn), self.found_version, MIGRATIONS)

        self._retrying(attempt, "creating or upgrading the schema")

    def _stored_version(self, conn: psycopg.Connection[Any]) -> int:
        meta, tasks = conn.execute(
            "SELECT to_regclass('accord_meta') IS NOT NULL, to_regclass('tasks') IS NOT NULL"
        ).fetchone() or (False, False)
        if not meta:
            if tasks:
                raise SchemaError(
                    f"the database {self.url} has a 'tasks' table that accord did not make; "
                    "use another database (or schema) for accord",
                    url=self.url,
                )
            return 0
        row = conn.execute("SELECT value FROM accord_meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{self.url} has schema version {version}, written by a newer accord; "
                f"this accord knows versions up to {SCHEMA_VERSION}: upgrade accord",
                url=self.url,
                found=version,
                supported=SCHEMA_VERSION,
            )
        return version

    def schema_version(self) -> int:
        return int(self._read("SELECT value FROM accord_meta WHERE key = 'schema_version'")[0][0])

    def close(self) -> None:
        self._closed = True
        with self._guard:
            pool, self._pool = self._pool, None
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if pool is not None and self._pid == os.getpid():
            pool.close()

    def _listening(self, channel: str) -> _Listener:
        self._this_process()
        listener = self._listener
        if listener is None:
            with self._guard:
                if self._listener is None:
                    self._listener = _Listener(self.dsn)
                listener = self._listener
        listener.listen(channel)
        return listener

    def _news(self, count: Callable[[_Listener], int], key: str, channel: str) -> bool:
        """Whether ``count`` moved since this thread last asked (``key``)."""
        listener = self._listening(channel)
        local = self._local
        if not listener.alive:
            # No notifications while disconnected: poll instead.
            now = time.monotonic()
            due = now - getattr(local, "polled_" + key, 0.0) >= _POLL_FALLBACK
            if due:
                setattr(local, "polled_" + key, now)
            return due
        value = count(listener)
        seen = getattr(local, key, None)
        setattr(local, key, value)
        return seen is None or seen != value

    def changed(self) -> bool:
        return self._news(lambda listener: listener.others(_sender()), "seen", CHANNEL)

    def work_changed(self) -> bool:
        return self._news(
            lambda listener: listener.others_work(_sender()), "seen_work", WORK_CHANNEL
        )

    def on_work(self, wake: Callable[[], None]) -> Callable[[], None]:
        listener = self._listening(WORK_CHANNEL)
        key = id(wake)
        listener.wakers[key] = (_sender(), wake)
        return lambda: listener.wakers.pop(key, None) and None

    def wait_changed(self, timeout: float) -> bool:
        if self.changed():
            return True
        listener = self._listener
        if listener is None:
            time.sleep(timeout)
        else:
            # Also while it is not connected yet (or again): it counts a change
            # the moment it is listening, which ends this wait. Sleeping out
            # the timeout instead left a waiter that started early (a new
            # store, a reconnect) deaf for its whole wait.
            sender = _sender()
            seen = getattr(self._local, "seen", None) if listener.alive else None
            if seen is None:
                seen = listener.others(sender)  # any change from now on
            listener.wait(sender, seen, timeout)
        return self.changed()
