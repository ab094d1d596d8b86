"""The shared store for many machines: one PostgreSQL database.

Every node, on any host, points at the same database. The rules are the ones
of :mod:`accord.store.sql`; this module supplies what PostgreSQL does
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
  A commit whose answer was lost is never retried blindly: it raises
  :class:`~accord.errors.StoreUnavailableError` with ``outcome_unknown=True``.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg.errors
import psycopg_pool

from accord.errors import (
    ClosedError,
    ConflictError,
    SchemaError,
    StorageFullError,
    StoreError,
    StoreUnavailableError,
    StoreURLError,
    UnstorableError,
)
from accord.scheduling.policy import NodeSpec
from accord.store.base import Completion, Outcome
from accord.store.sql import MAX_LEVELS, Conn, Cursor, SqlStore, _Tx, migrations, upgrade
from accord.store.sql_state import SqlStateMixin

T = TypeVar("T")

log = logging.getLogger("accord.store")

MIGRATIONS = migrations("postgresql")
SCHEMA_VERSION = MIGRATIONS[-1][0]
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


def _sender() -> str:
    return f"{os.getpid()}.{threading.get_ident()}"


_RACES = (
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    psycopg.errors.UniqueViolation,
)
_MAX_RACES = 8
# What psycopg raises, before sending anything, for a value it cannot send:
# text the connection's encoding cannot hold (a lone surrogate; a character
# missing from a LATIN1 database), an int past what it adapts.
_BAD_VALUE = (UnicodeError, OverflowError)
_POLL_FALLBACK = 0.05


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


def redact(url: str) -> str:
    """The URL without its password, for messages and listings."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


# A node cut off (or stopped) in the middle of a transaction must not hold
# its row locks for long: the server ends a transaction idle this long, and
# both sides probe quiet connections. Settings in the URL take precedence.
IDLE_IN_TRANSACTION_MS = 2000
CLOCK_RESYNC = 60.0  # seconds between readings of the server's clock, at most
PLAN_LIFETIME = 120.0  # seconds a pooled connection (and its prepared plans) lives
_CLIENT_DEFAULTS = {
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
}
_SERVER_DEFAULTS = {
    "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS),
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
}


def _with_defaults(params: dict[str, Any], connect_timeout: float) -> str:
    """The connection string with accord's defaults for what the URL leaves out."""
    params = dict(params)
    params.setdefault("connect_timeout", str(max(1, int(connect_timeout))))
    for key, value in _CLIENT_DEFAULTS.items():
        params.setdefault(key, value)
    options = str(params.get("options") or "")
    extra = [f"-c {key}={value}" for key, value in _SERVER_DEFAULTS.items() if key not in options]
    params["options"] = " ".join([options, *extra]).strip()
    return psycopg.conninfo.make_conninfo("", **params)


class _Unknown(Exception):
    """The connection failed while COMMIT was in flight."""


class _Listener:
    """Counts NOTIFYs on accord's channels, reconnecting when the server goes.

    It listens only on the channels that this process has asked about: a
    node waits for new work alone, and is not woken by every commit.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.channels: frozenset[str] = frozenset()  # asked about, see listen()
        self.count = 0
        self.alive = False
        self.bumped = threading.Condition()
        self.own: dict[str, int] = {}  # notifications by sending thread
        self.work = 0  # notifications of new work, and by sending thread
        self.own_work: dict[str, int] = {}
        self.wakers: dict[int, tuple[str, Callable[[], None]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="accord-listen", daemon=True)
        self._thread.start()

    def listen(self, channel: str) -> None:
        """Count the notifications of ``channel`` too (from the listener's next
        turn, at most 0.1 s away; it counts a change then)."""
        if channel not in self.channels:
            with self.bumped:
                self.channels = self.channels | {channel}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    listening: frozenset[str] = frozenset()
                    while not self._stop.is_set():
                        if self.channels != listening:
                            listening = self.channels
                            conn.execute("; ".join(f"LISTEN {c}" for c in sorted(listening)))
                            # Notifications sent before (or while disconnected)
                            # were missed: count a change.
                            self._bump()
                            self.alive = True
                        for note in conn.notifies(timeout=0.1):
                            self._bump(note.payload, work=note.channel == WORK_CHANNEL)
            except psycopg.Error:
                pass
            self.alive = False
            self._bump()
            self._stop.wait(0.2)

    def _bump(self, sender: str = "", *, work: bool | None = None) -> None:
        """Count a notification (``work`` None: a reconnect, which counts for both)."""
        with self.bumped:
            if work is not False:
                self.work += 1
                if sender:
                    self.own_work[sender] = self.own_work.get(sender, 0) + 1
                for waiter, wake in list(self.wakers.values()):
                    if waiter != sender:
                        wake()
            if work is not True:
                self.count += 1
                if sender:
                    self.own[sender] = self.own.get(sender, 0) + 1
            self.bumped.notify_all()

    def others(self, sender: str) -> int:
        """How many notifications came from other threads than ``sender``."""
        return self.count - self.own.get(sender, 0)

    def others_work(self, sender: str) -> int:
        """The same, for notifications of new work."""
        return self.work - self.own_work.get(sender, 0)

    def wait(self, sender: str, seen: int | None, timeout: float) -> None:
        """Return when others' count differs from ``seen``, or after ``timeout``."""
        with self.bumped:
            self.bumped.wait_for(lambda: self.others(sender) != seen, timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


class PgStore(SqlStateMixin, SqlStore):
    """The shared store, in one PostgreSQL database (``postgresql://...``)."""

    lock = " FOR UPDATE"
    lock_t = " FOR UPDATE OF t"
    share = " FOR SHARE"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    skip_locked_t = " FOR UPDATE OF t SKIP LOCKED"
    share_skip_locked = " FOR SHARE SKIP LOCKED"
    greatest = "GREATEST"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        connect_timeout: float = 10.0,
        retry_for: float = 30.0,
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
            self._migrate()
        except BaseException:
            self.close()
            raise

    # -- connections ------------------------------------------------------
    def _get_pool(self) -> psycopg_pool.ConnectionPool:
        if self._closed:
            raise ClosedError(f"the store {self.url} is closed; open it again to use it")
        if self._pid != os.getpid():
            # A forked child must not use its parent's sockets: start afresh.
            self._pid = os.getpid()
            self._pool = None
            self._listener = None
        pool = self._pool
        if pool is None:
            with self._guard:
                if self._pool is None:
                    self._pool = psycopg_pool.ConnectionPool(
                        self.dsn,
                        min_size=1,
                        max_size=self.pool_size,
                        kwargs={"autocommit": True},
                        # A wait for a connection is cut short and retried by
                        # _retrying; the pool itself keeps reconnecting meanwhile.
                        timeout=min(self.connect_timeout, 2.0),
                        reconnect_timeout=max(self.retry_for, 60.0),
                        # Statements are prepared per connection, and a plan made
                        # while the queue was nearly empty (seq scans) would be
                        # kept as it grows: new connections plan afresh.
                        max_lifetime=PLAN_LIFETIME,
                        name="accord",
                        open=True,
                    )
                pool = self._pool
        return pool

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._get_pool().connection() as conn:
            yield conn

    def _retrying(self, attempt: Callable[[], T], what: str) -> T:
        """Run ``attempt``; on a lost connection or a lost race, run it again
        (races at once, lost connections for up to ``retry_for`` seconds)."""
        deadline: float | None = None
        races = 0
        pause = 0.05
        while True:
            try:
                return attempt()
            except _RACES as exc:
                races += 1
                if races >= _MAX_RACES:
                    raise self._translate(exc, what) from exc
                time.sleep(random.random() * 0.002 * races)
            except _Unknown as unknown:
                raise StoreUnavailableError(
                    f"the connection to {self.url} failed while committing {what}: "
                    "it may or may not have been recorded; read it back, or retry "
                    "with an idempotency key",
                    url=self.url,
                    outcome_unknown=True,
                ) from unknown.__cause__
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
                if self._closed:
                    raise ClosedError(f"the store {self.url} is closed") from exc
                if isinstance(exc, psycopg.errors.DiskFull | psycopg.errors.QueryCanceled):
                    raise self._translate(exc, what) from exc
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.retry_for
                    log.warning("store %s unreachable, retrying: %s", self.url, exc)
                if now >= deadline:
                    raise self._translate(exc, what) from exc
                time.sleep(pause * (0.5 + random.random()))
                pause = min(pause * 2, 1.0)
            except (psycopg.Error, *_BAD_VALUE) as exc:
                raise self._translate(exc, what) from exc

    def _translate(self, exc: BaseException, what: str) -> Exception:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, psycopg.errors.DiskFull):
            return StorageFullError(
                f"the store {self.url} is out of disk space while {what}; free space "
                "and retry: nothing was written",
                url=self.url,
            )
        if isinstance(exc, psycopg.errors.UniqueViolation):
            return ConflictError(f"{what} kept colliding with another writer: {text}")
        if isinstance(exc, (psycopg.DataError, psycopg.IntegrityError, *_BAD_VALUE)):
            # The value is bad, not the server: the same statement would fail
            # again, so it must never be retried as an outage.
            return UnstorableError(
                f"the store {self.url} cannot hold a value while {what} "
                f"({type(exc).__name__}: {text}); nothing was written: fix the value",
                url=self.url,
            )
        if isinstance(exc, psycopg.OperationalError | psycopg_pool.PoolTimeout):
            return StoreUnavailableError(
                f"cannot reach the store {self.url} while {what} (tried for "
                f"{self.retry_for:g}s): {text}; check that PostgreSQL is running and "
                "reachable from this host",
                url=self.url,
            )
        if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
            return SchemaError(
                f"the store {self.url} lacks accord's tables ({text}); run `accord migrate`",
                url=self.url,
            )
        return StoreError(f"the store {self.url} failed while {what}: {text}", url=self.url)

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

    def _migrate(self) -> None:
        def attempt() -> None:
            with self._connection() as conn, conn.transaction():
                # Nodes that start together migrate one at a time.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                upgrade(_PgConn(conn), self._stored_version(conn), MIGRATIONS)

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
        self._get_pool()
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

    def _end_run(self, tx: _Tx, run_id: int, state: str, error: str | None) -> None:
        tx.news = True
        tx.c.execute(
            "WITH ended AS (UPDATE runs SET state = ?, finished_at = ?, error = ? WHERE id = ? "
            "RETURNING id) INSERT INTO events (at, run_id, task_id, node_id, kind, detail) "
            "SELECT ?, id, NULL, NULL, ?, ? FROM ended",
            (state, tx.now, error, run_id, tx.now, f"run_{state}", error),
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

    # -- faster paths -----------------------------------------------------
    claimers = 4

    def _candidates(
        self, c: Conn, queue: str, now: float, per_level: int, node: NodeSpec
    ) -> list[Any]:
        """The same candidates as on SQLite, in one statement: the levels by a
        recursive skip through the tasks_ready index, each level's oldest
        tasks by a lateral index scan, then the earliest deadlines."""
        candidates: list[Any] = []
        seen: set[int] = set()
        params = (queue, queue, queue, now, per_level, queue, now, per_level, queue, now, per_level)
        for row in c.execute(_CANDIDATES_SQL, params):
            if row[0] not in seen and node.can_meet(row[8]):
                seen.add(row[0])
                candidates.append(row[:8])
        return candidates

    def _complete_all(self, tx: _Tx, node_id: int, completions: list[Completion]) -> list[bool]:
        """Record every successful attempt, and count them to the node, in
        one statement."""
        ok = [done for done in completions if done.outcome is Outcome.OK]
        accepted: set[int] = set()
        if ok:
            if len(ok) == 1:  # a plan that can be kept
                values = "(VALUES (?::bigint, ?::bigint, ?::bytea))"
                given: tuple[Any, ...] = (ok[0].task_id, ok[0].fence, ok[0].result)
            else:
                values = "unnest(?::bigint[], ?::bigint[], ?::bytea[])"
                given = ([d.task_id for d in ok], [d.fence for d in ok], [d.result for d in ok])
            rows = tx.c.execute(
                "WITH done AS (UPDATE tasks AS t SET state = 'succeeded', result = v.result, "
                f"finished_at = ?, lease_expires_at = NULL FROM {values} AS v (id, fence, result) "
                "WHERE t.id = v.id AND t.fence = v.fence AND t.state = 'running' "
                "RETURNING t.id, t.run_id, t.deadline_at, t.late, t.limit_key), "
                "counted AS (UPDATE nodes SET completed = completed + "
                "(SELECT count(*) FROM done) WHERE id = ?) "
                "SELECT id, run_id, deadline_at, late, limit_key FROM done",
                (tx.now, *given, node_id),
            ).fetchall()
            for task_id, run_id, deadline_at, late, limit_key in rows:
                self._succeeded(tx, task_id, run_id, deadline_at, late, limit_key)
                accepted.add(task_id)
            # Not folded into the statement above: a dependent registered by a
            # transaction that the UPDATE waited for is only seen by a later
            # statement's snapshot.
            self._settle(tx, [(task_id, "succeeded") for task_id in sorted(accepted)])
        others = [
            self._complete(tx, done) for done in completions if done.outcome is not Outcome.OK
        ]
        self._count_completed(tx, node_id, sum(others))
        results = iter(others)
        return [
            done.task_id in accepted if done.outcome is Outcome.OK else next(results)
            for done in completions
        ]
