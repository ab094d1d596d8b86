"""The embedded store: one SQLite file shared by any number of processes.

Durability first: WAL journal with ``synchronous=FULL``, so a commit that
returned survives a crash of any process and of the OS. Speed comes from
putting many rows in one commit (a node records all its finished tasks and
claims its next batch in one transaction), never from weaker durability.

Writers take the database lock up front (``BEGIN IMMEDIATE``): a transaction
that read first and upgraded later could fail with SQLITE_BUSY half-way,
which the busy timeout does not cover. A process killed while holding the
lock leaves a WAL that the next connection recovers; the lock itself is a
file lock the kernel drops with the process.
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from accord.errors import ClosedError, SchemaError, StoreError, StoreURLError
from accord.store.sql.core import Conn, _Tx, migrations, upgrade
from accord.store.sql.store import SqlStore
from accord.store.sqlite.dialect import SqliteDialect
from accord.store.sqlite.errors import sqlite_errors
from accord.store.sqlite.state import SqliteStateMixin
from accord.store.sqlite.url import DEFAULT_BUSY_TIMEOUT, DEFAULT_FILE_MODE
from accord.store.sqlite.wakeups import Wakeups, drain

T = TypeVar("T")

MIGRATIONS = migrations("sqlite")
SCHEMA_VERSION = MIGRATIONS[-1][0]

# A writer that finds the database locked tries again every 25-100 us for
# the first 20 ms, then backs off to every 2 ms. Write transactions last well
# under a millisecond, and a writer that slept longer missed the short gaps
# between another process's back-to-back commits: a node was kept from its
# claim for 10 ms and more by a client submitting tasks one after another.
BUSY_PAUSE_QUICK = 0.0001
BUSY_QUICK_FOR = 0.02
BUSY_PAUSE_SLOW = 0.002


class SqliteStore(SqliteDialect, SqliteStateMixin, SqlStore):
    """The embedded store, in one SQLite file (``sqlite:///path``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        file_mode: int | None = None,
    ) -> None:
        super().__init__()
        self.path = str(path)
        self.busy_timeout = busy_timeout
        # The database holds task arguments, results and state: owner only
        # unless the user asked for more. SQLite gives the -wal and -shm files
        # the database file's mode, so setting it on the database is enough.
        self.file_mode = DEFAULT_FILE_MODE if file_mode is None else file_mode
        params = []
        if file_mode is not None:
            params.append(f"file_mode=0{file_mode:o}")
        if busy_timeout != DEFAULT_BUSY_TIMEOUT:
            params.append(f"busy_timeout={busy_timeout:g}")
        # Slot processes open the store from this URL: it keeps the options.
        self.url = f"sqlite:///{self.path}" + ("?" + "&".join(params) if params else "")
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        if os.path.isdir(self.path):
            raise StoreURLError(
                f"the store file {self.path} is a directory; give the path of a file in it, "
                f"for example sqlite:///{os.path.join(self.path, 'accord.db')}",
                path=self.path,
            )
        self._wakeups = Wakeups(self.path, self.file_mode)
        self._waiters: list[socket.socket] = []
        parent = Path(self.path).parent
        if not parent.exists():
            raise StoreURLError(
                f"the directory of the store file {self.path} does not exist; create it first",
                path=self.path,
            )
        self._make_file(explicit=file_mode is not None)
        self._precheck()
        try:
            self._migrate(self._conn())
        except BaseException:
            self.close()
            raise

    def _make_file(self, *, explicit: bool) -> None:
        """Create the database file with the store's mode before SQLite does
        (SQLite would create it under the umask, world-readable with the usual
        022). An existing file keeps its mode unless the URL sets one."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            if explicit:
                self._set_modes()
            return
        except OSError as exc:
            raise StoreURLError(
                f"cannot create the store file {self.path}: {exc.strerror}; check that its "
                "directory is writable",
                path=self.path,
            ) from exc
        try:
            os.fchmod(fd, self.file_mode)  # exactly the mode asked, whatever the umask
        finally:
            os.close(fd)

    def _set_modes(self) -> None:
        for name in (self.path, self.path + "-wal", self.path + "-shm"):
            try:
                if os.stat(name).st_mode & 0o777 != self.file_mode:
                    os.chmod(name, self.file_mode)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StoreURLError(
                    f"cannot give {name} the file_mode 0{self.file_mode:o} the URL asks for: "
                    f"{exc.strerror}; change it as its owner, or leave file_mode out",
                    path=self.path,
                ) from exc

    # -- connections ------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise ClosedError(f"the store {self.path} is closed; open it again to use it")
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        # A connection must not cross fork(): the child opens its own.
        if conn is None or local.pid != os.getpid():
            conn = self._connect()
            local.conn = conn
            local.pid = os.getpid()
            local.data_version = None
        return conn

    def _connect(self) -> sqlite3.Connection:
        with sqlite_errors(self.path):
            # No busy timeout in SQLite itself: its busy handler sleeps 1, 2, 5,
            # 10... ms between tries, which wrecks throughput when several
            # processes write. _busy() retries every few dozen microseconds.
            conn = sqlite3.connect(
                self.path,
                timeout=0.0,
                isolation_level=None,
                check_same_thread=False,
            )
            mode = self._busy(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            if mode != "wal":
                raise StoreError(f"could not put {self.path} in WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
        with self._lock:
            self._all.append(conn)
        return conn

    def _busy(self, action: Callable[[], T]) -> T:
        """Run ``action``, retrying while another process holds the lock."""
        began: float | None = None
        pause = BUSY_PAUSE_QUICK / 4
        while True:
            try:
                return action()
            except sqlite3.OperationalError as exc:
                if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
                now = time.monotonic()
                if began is None:
                    began = now
                elif now - began > self.busy_timeout:
                    raise
                time.sleep(pause * (0.5 + random.random()))
                cap = BUSY_PAUSE_QUICK if now - began < BUSY_QUICK_FOR else BUSY_PAUSE_SLOW
                pause = min(pause * 2, cap)

    @contextmanager
    def _tx(self) -> Iterator[_Tx]:
        conn = self._conn()
        with sqlite_errors(self.path):
            self._busy(lambda: conn.execute("BEGIN IMMEDIATE"))
        with sqlite_errors(self.path, values=True):
            try:
                yield _Tx(conn, time.time())
                conn.execute("COMMIT")
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the failed COMMIT already rolled back
                raise

    def _read(self, sql: str, params: Any = ()) -> list[Any]:
        with sqlite_errors(self.path, values=True):
            conn = self._conn()
            return self._busy(lambda: conn.execute(sql, params).fetchall())

    def _migrate(self, conn: sqlite3.Connection) -> None:
        with sqlite_errors(self.path):
            self._busy(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                self.found_version = self._stored_version(conn)
                upgrade(conn, self.found_version, MIGRATIONS)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _stored_version(self, conn: sqlite3.Connection) -> int:
        """The file's schema version (0: empty); SchemaError if it is not an
        accord store or was written by a newer accord."""
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if not tables:
            return 0
        row = None
        if "accord_meta" in tables:
            row = conn.execute(
                "SELECT value FROM accord_meta WHERE key = 'schema_version'"
            ).fetchone()
        if row is None:
            raise SchemaError(
                f"{self.path} is an SQLite database but not an accord store "
                f"(it has tables {sorted(tables)[:5]}); use another file",
                path=self.path,
            )
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{self.path} has schema version {version}, written by a newer accord; "
                f"this accord knows versions up to {SCHEMA_VERSION}: upgrade accord",
                path=self.path,
                found=version,
                supported=SCHEMA_VERSION,
            )
        return version

    def _precheck(self) -> None:
        """Refuse a file that is not an accord store, or is too new, before
        changing anything in it (switching it to WAL would rewrite its header)."""
        if not os.path.isfile(self.path) or os.path.getsize(self.path) == 0:
            return
        with sqlite_errors(self.path):
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            with sqlite_errors(self.path):
                self._stored_version(conn)
        finally:
            conn.close()

    def schema_version(self) -> int:
        return int(self._read("SELECT value FROM accord_meta WHERE key = 'schema_version'")[0][0])

    def close(self) -> None:
        self._closed = True
        with self._lock:
            conns, self._all = self._all, []
            waiters, self._waiters = self._waiters, []
        for sock in waiters:
            self._wakeups.forget(sock)
        self._wakeups.close()
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def changed(self) -> bool:
        conn = self._conn()
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        seen = self._local.data_version
        self._local.data_version = version
        return seen is None or version != seen

    def _write(self, body: Callable[[_Tx], T]) -> T:
        # The database lock is held from BEGIN IMMEDIATE: nothing to retry.
        with self._tx() as tx:
            result = body(tx)
        # Committed: wake whoever this commit concerns, in any process.
        kinds: tuple[str, ...] = ("work-",) if tx.work else ()
        if tx.news:
            kinds += ("news-",)
        self._wakeups.notify(kinds)
        self._committed(tx)
        return result

    def on_work(self, wake: Callable[[], None]) -> Callable[[], None]:
        sock = self._wakeups.listen("work")
        if sock is None:
            return lambda: None
        stop_r, stop_w = os.pipe()

        def relay() -> None:
            # Blocks in poll, not in the node's loop: the loop sleeps in its
            # pool's wait, which wake() ends.
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            poller.register(stop_r, select.POLLIN)
            while True:
                events = poller.poll()
                if any(fd == stop_r for fd, _ in events):
                    return
                drain(sock)
                wake()

        thread = threading.Thread(target=relay, name="accord-wakeups", daemon=True)
        thread.start()

        def stop() -> None:
            os.write(stop_w, b"x")
            thread.join(5.0)
            os.close(stop_r)
            os.close(stop_w)
            self._wakeups.forget(sock)

        return stop

    def wait_changed(self, timeout: float) -> bool:
        sock: socket.socket | None = getattr(self._local, "news", None)
        if sock is None or getattr(self._local, "news_pid", None) != os.getpid():
            sock = self._wakeups.listen("news")
            if sock is None:
                return super().wait_changed(timeout)
            self._local.news = sock
            self._local.news_pid = os.getpid()
            with self._lock:
                self._waiters.append(sock)
        # Bound before this look: a commit after it wakes the select below.
        if self.changed():
            drain(sock)
            return True
        ready, _, _ = select.select([sock], [], [], timeout)
        if ready:
            drain(sock)
        return self.changed()

    def _new_task_ids(self, c: Conn, count: int) -> list[int]:
        # The writer holds the database: nobody else takes ids meanwhile.
        if count == 0:
            return []
        (top,) = c.execute("SELECT coalesce(max(id), 0) FROM tasks").fetchone()
        return list(range(top + 1, top + 1 + count))

    def _ids_in(self, column: str, ids: list[int]) -> tuple[str, Any]:
        return f"{column} IN (SELECT value FROM json_each(?))", json.dumps(ids)

    def integrity_check(self) -> str:
        return str(self._read("PRAGMA integrity_check")[0][0])
