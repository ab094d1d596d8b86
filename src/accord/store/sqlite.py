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

import hashlib
import itertools
import json
import math
import os
import random
import select
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from accord.errors import (
    ClosedError,
    SchemaError,
    StorageFullError,
    StoreError,
    StoreURLError,
    UnstorableError,
)
from accord.store.sql import Conn, SqlStore, _Tx, migrations, upgrade
from accord.store.sqlite_state import SqliteStateMixin

T = TypeVar("T")

MIGRATIONS = migrations("sqlite")
SCHEMA_VERSION = MIGRATIONS[-1][0]


# What a driver raises for a value it cannot bind or store (NUL is stored
# as it is; a lone surrogate cannot be encoded; an int past 64 bits does not
# fit): the value is bad, not the store, and trying again cannot help.
BAD_VALUE = (UnicodeError, OverflowError)


def translate(exc: BaseException, path: str) -> Exception:
    """Turn a driver error into accord's, keeping it as ``__cause__``.

    Bad data (a value the driver cannot encode or the database refuses:
    ``sqlite3.DataError``, ``IntegrityError``) becomes
    :class:`~accord.errors.UnstorableError`, never a :class:`StoreError` that
    a caller would retry as an outage.
    """
    text = str(exc)
    if isinstance(exc, BAD_VALUE):
        err: Exception = UnstorableError(
            f"the store {path} cannot hold a value given to it ({type(exc).__name__}: {text}); "
            "nothing was written: fix the value",
            path=path,
        )
    elif isinstance(exc, sqlite3.DataError | sqlite3.IntegrityError):
        err = UnstorableError(
            f"the store {path} refused a value ({type(exc).__name__}: {text}); nothing was "
            "written: fix the value",
            path=path,
        )
    elif "disk is full" in text or getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        err = StorageFullError(
            f"the store's disk is full ({path}); free space and retry: nothing was written",
            path=path,
        )
    elif "file is not a database" in text or "malformed" in text:
        err = SchemaError(
            f"{path} is not an accord database ({text}); point ACCORD_STORE at another file",
            path=path,
        )
    elif "locked" in text or "busy" in text:
        err = StoreError(f"the store {path} stayed locked by another process: {text}", path=path)
    elif "unable to open" in text:
        if os.path.isdir(path):
            why = "it is a directory; give the path of a file in it, for example " + (
                f"sqlite:///{os.path.join(path, 'accord.db')}"
            )
        else:
            why = "check that its directory exists and is writable"
        err = StoreURLError(f"cannot open the store file {path}: {text}; {why}", path=path)
    else:
        err = StoreError(f"the store {path} failed: {text}", path=path)
    err.__cause__ = exc
    return err


# -- URLs and files --------------------------------------------------------------

DEFAULT_FILE_MODE = 0o600
DEFAULT_BUSY_TIMEOUT = 30.0
# A writer that finds the database locked tries again every 25-100 us for
# the first 20 ms, then backs off to every 2 ms. Write transactions last well
# under a millisecond, and a writer that slept longer missed the short gaps
# between another process's back-to-back commits: a node was kept from its
# claim for 10 ms and more by a client submitting tasks one after another.
BUSY_PAUSE_QUICK = 0.0001
BUSY_QUICK_FOR = 0.02
BUSY_PAUSE_SLOW = 0.002
URL_PARAMETERS = ("file_mode", "busy_timeout")
URL_SYNTAX = (
    "sqlite:///relative/path.db or sqlite:////absolute/path.db, optionally followed by "
    "?file_mode=0640 and/or &busy_timeout=SECONDS"
)


def parse_url(url: str) -> tuple[str, dict[str, Any]]:
    """The file path and the store options of an ``sqlite://`` URL.

    The path is taken as written (no %-decoding), up to the first ``?``;
    what follows are parameters, each known or refused (a parameter left in
    the path would silently name another file).
    """
    rest = url.removeprefix("sqlite://")
    path, _, query = rest.partition("?")
    if not path.startswith("/") or path == "/":
        raise StoreURLError(f"store URL {url!r} has no file path; use {URL_SYNTAX}", url=url)
    path = path[1:]
    if path in ("", ":memory:"):
        raise StoreURLError(
            f"store URL {url!r}: an in-memory database cannot be shared between "
            "processes; give a file path",
            url=url,
        )
    options: dict[str, Any] = {}
    for item in query.split("&") if query else []:
        key, eq, value = item.partition("=")
        if key not in URL_PARAMETERS:
            hint = ""
            if key in ("mode", "cache", "immutable", "vfs", "nolock", "psow"):
                hint = " (SQLite's own URI options are not supported: accord needs to write)"
            raise StoreURLError(
                f"store URL {url!r}: unknown parameter {key!r}{hint}; the parameters are "
                f"{', '.join(URL_PARAMETERS)} ({URL_SYNTAX})",
                url=url,
            )
        if not eq or key in options:
            raise StoreURLError(
                f"store URL {url!r}: parameter {key!r} needs one value, as in {key}=...",
                url=url,
            )
        options[key] = _url_value(url, key, value)
    return path, options


def _url_value(url: str, key: str, value: str) -> Any:
    if key == "file_mode":
        digits = value.removeprefix("0o")
        if not 3 <= len(digits) <= 4 or any(c not in "01234567" for c in digits):
            raise StoreURLError(
                f"store URL {url!r}: file_mode {value!r} is not an octal mode; use three or four "
                "octal digits, for example file_mode=0600 (owner only) or 0640 (group reads)",
                url=url,
            )
        mode = int(digits, 8)
        if mode & ~0o777 or mode & 0o600 != 0o600:
            raise StoreURLError(
                f"store URL {url!r}: file_mode {value!r} must let the owner read and write "
                "(0600 at least) and hold permission bits alone (at most 0777)",
                url=url,
            )
        return mode
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not math.isfinite(seconds) or seconds < 0:
        raise StoreURLError(
            f"store URL {url!r}: busy_timeout {value!r} is not a number of seconds (>= 0)",
            url=url,
        )
    return seconds


def dir_mode(file_mode: int) -> int:
    """The mode of a directory made for store files of ``file_mode``: who may
    read the files may list the directory."""
    return file_mode | 0o100 | ((file_mode & 0o044) >> 2)


def make_store_dir(path: str, file_mode: int = DEFAULT_FILE_MODE) -> None:
    """Create the directory of the store file ``path`` (0700 for the default
    file mode) if it does not exist; an existing directory is left as it is."""
    parent = os.path.dirname(path) or "."
    if os.path.isdir(parent):
        return
    mode = dir_mode(file_mode)
    os.makedirs(parent, mode=mode, exist_ok=True)
    os.chmod(parent, mode)  # the umask may have taken bits away


class Wakeups:
    """Cross-process wake-ups for one store file, over Unix datagram sockets.

    SQLite tells no one of a commit: without this, a node in another process
    learns of new work, and a client of its result, only when its next poll
    of ``PRAGMA data_version`` comes round (1 to 20 ms). Here each waiter
    binds a socket in a folder beside the file (``work-*`` for nodes, ``news-*``
    for result waiters), and a writer, after its COMMIT, sends one byte to
    each socket of the kind its commit concerns. A wake-up only says "look
    again": the waiter still reads the store, so a lost or spurious datagram
    costs a poll, never correctness. A socket whose process died refuses the
    datagram and is removed by the sender.
    """

    def __init__(self, db_path: str) -> None:
        real = os.path.realpath(db_path)
        folder = real + "-wake"
        # A socket path is at most 108 bytes: fall back to the temp folder.
        if len(folder) > 60:
            digest = hashlib.sha1(real.encode()).hexdigest()[:16]
            folder = os.path.join(tempfile.gettempdir(), f"accord-wake-{digest}")
        self.folder = folder
        self.enabled = hasattr(socket, "AF_UNIX")
        self._names = itertools.count()
        self._sender: socket.socket | None = None

    def listen(self, kind: str) -> socket.socket | None:
        """A bound, non-blocking socket that commits of ``kind`` wake; None
        where this platform or folder cannot have one (callers then poll)."""
        if not self.enabled:
            return None
        try:
            os.makedirs(self.folder, mode=0o700, exist_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            path = os.path.join(self.folder, f"{kind}-{os.getpid()}-{next(self._names)}")
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            sock.bind(path)
            sock.setblocking(False)
        except OSError:
            return None
        return sock

    @staticmethod
    def forget(sock: socket.socket) -> None:
        try:
            name = sock.getsockname()
            sock.close()
            if isinstance(name, str) and name:
                os.unlink(name)
        except OSError:
            pass

    def notify(self, kinds: tuple[str, ...]) -> None:
        """Wake every socket of these kinds (after a commit; never raises)."""
        if not self.enabled or not kinds:
            return
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        sender = self._sender
        if sender is None:
            try:
                sender = self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sender.setblocking(False)
            except OSError:
                self.enabled = False
                return
        for name in names:
            if not name.startswith(kinds):
                continue
            path = os.path.join(self.folder, name)
            try:
                sender.sendto(b"w", path)
            except BlockingIOError:
                pass  # its buffer is full: it has wake-ups to read already
            except (ConnectionRefusedError, FileNotFoundError):
                try:
                    os.unlink(path)  # its process is gone
                except OSError:
                    pass
            except OSError:
                pass

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None


def drain(sock: socket.socket) -> None:
    try:
        while sock.recv(64):
            pass
    except OSError:
        pass


class SqliteStore(SqliteStateMixin, SqlStore):
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
        self._wakeups = Wakeups(self.path)
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
        try:
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
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc
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
        try:
            self._busy(lambda: conn.execute("BEGIN IMMEDIATE"))
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc
        try:
            yield _Tx(conn, time.time())
            conn.execute("COMMIT")
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the failed COMMIT already rolled back
            if isinstance(exc, (sqlite3.Error, *BAD_VALUE)):
                raise translate(exc, self.path) from exc
            raise

    def _read(self, sql: str, params: Any = ()) -> list[Any]:
        try:
            conn = self._conn()
            return self._busy(lambda: conn.execute(sql, params).fetchall())
        except (sqlite3.Error, *BAD_VALUE) as exc:
            raise translate(exc, self.path) from exc

    def _migrate(self, conn: sqlite3.Connection) -> None:
        try:
            self._busy(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                upgrade(conn, self._stored_version(conn), MIGRATIONS)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc

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
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc
        try:
            self._stored_version(conn)
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc
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
