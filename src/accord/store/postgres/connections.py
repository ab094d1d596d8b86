"""Connections to PostgreSQL: the URL, the pool of each process, and retries.

:func:`_with_defaults` adds accord's connection settings to what the URL
leaves out; :class:`PgConnections` keeps one psycopg pool per process and
runs each attempt again after a lost race or, for up to ``retry_for``
seconds, a lost connection (:meth:`PgConnections._retrying`). A connection
the server refuses for good (a wrong password, a missing role or database)
is not retried: it fails at once with the server's reason.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg.errors
import psycopg_pool

from accord.errors import ClosedError, StoreUnavailableError
from accord.store.postgres.errors import _MAX_RACES, _RACES, pg_errors, refusal
from accord.store.postgres.listen import _Listener

T = TypeVar("T")

log = logging.getLogger("accord.store")

POOL_NAME = "accord"


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _QuietReconnects(logging.Filter):
    """Drops the line psycopg_pool logs for every failed connection attempt of
    accord's pools: :meth:`PgConnections._retrying` logs one line when it
    starts retrying, and keeps the pool's last reason for its final error."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (
            isinstance(record.msg, str)
            and record.msg.startswith("error connecting in")
            and isinstance(args, tuple)
            and bool(args)
            and args[0] == POOL_NAME
        )


_pool_log = logging.getLogger("psycopg.pool")
if not any(isinstance(f, _QuietReconnects) for f in _pool_log.filters):
    _pool_log.addFilter(_QuietReconnects())


def _recording(owner: PgConnections) -> type[psycopg.Connection[Any]]:
    """The connection class of ``owner``'s pool: it keeps the error of the
    pool's last failed attempt to connect as ``owner._pool_error`` (None once
    one succeeds), which the pool would only log."""

    class _PoolConnection(psycopg.Connection[Any]):
        __qualname__ = "_PoolConnection"  # in its repr, which the pool logs

        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
            try:
                conn = super().connect(conninfo, **kwargs)
            except psycopg.Error as exc:
                owner._pool_error = exc
                raise
            owner._pool_error = None
            return conn

    return _PoolConnection


class PgConnections:
    """The pool of this process and the retrying of attempts, for :class:`PgStore`."""

    url: str
    dsn: str
    pool_size: int
    connect_timeout: float
    retry_for: float
    _closed: bool
    _guard: threading.Lock
    _pid: int
    _pool: psycopg_pool.ConnectionPool | None
    _pool_error: BaseException | None = None  # the pool's last failed connection attempt
    _listener: _Listener | None

    # -- connections ------------------------------------------------------
    def _this_process(self) -> None:
        """Raise if closed; in a forked child, drop the parent's pool and listener."""
        if self._closed:
            raise ClosedError(f"the store {self.url} is closed; open it again to use it")
        if self._pid != os.getpid():
            # A forked child must not use its parent's sockets: start afresh.
            self._pid = os.getpid()
            self._pool = None
            self._listener = None

    def _get_pool(self) -> psycopg_pool.ConnectionPool:
        self._this_process()
        pool = self._pool
        if pool is None:
            # One connection of our own first: the pool would only log why it
            # cannot connect and keep trying, while this raises the reason
            # (for _retrying to judge: a refusal fails at once).
            psycopg.connect(self.dsn, autocommit=True).close()
            with self._guard:
                if self._pool is None:
                    self._pool_error = None
                    self._pool = psycopg_pool.ConnectionPool(
                        self.dsn,
                        connection_class=_recording(self),
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
                        name=POOL_NAME,
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
        (races at once, lost connections for up to ``retry_for`` seconds,
        logging one line when they start). A connection the server refuses
        for good is not run again (:func:`~.errors.refusal`). What is not run
        again is raised as accord's error (:class:`pg_errors`)."""
        deadline: float | None = None
        races = 0
        pause = 0.05
        with pg_errors(self.url, what, self.retry_for):
            while True:
                try:
                    return attempt()
                except _RACES:
                    races += 1
                    if races >= _MAX_RACES:
                        raise
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
                        raise
                    if refusal(exc) is not None:
                        raise  # a wrong password or database name: no retry mends it
                    reason = _first_line(exc)
                    pool_error = self._pool_error
                    if isinstance(exc, psycopg_pool.PoolTimeout) and pool_error is not None:
                        reason = f"{reason}; the last attempt to connect: {_first_line(pool_error)}"
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + self.retry_for
                        log.warning(
                            "store %s unreachable, retrying for up to %gs: %s",
                            self.url,
                            self.retry_for,
                            reason,
                        )
                    if now >= deadline:
                        if isinstance(exc, psycopg_pool.PoolTimeout):
                            raise psycopg_pool.PoolTimeout(reason) from exc
                        raise
                    time.sleep(pause * (0.5 + random.random()))
                    pause = min(pause * 2, 1.0)
