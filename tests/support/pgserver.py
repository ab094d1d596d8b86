"""A throwaway PostgreSQL server for tests: initdb, start, kill, restart, fresh databases.

The postmaster is always a *direct* child of this Python process (``setpriv`` and
``ip netns exec`` exec their argument), so ``kill()`` can reap it with ``wait()``: a
zombie postmaster would make the next start fail with ``lock file "postmaster.pid"
already exists``. As root the server runs as the ``postgres`` user (PostgreSQL refuses
to run as root). Its output goes to ``<base_dir>/postgres.log``, never to a pipe.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

SERVER_USER = "postgres"
# Errors after which a start is worth retrying: an old backend still holds the shared
# memory, or an auto-picked port was taken by someone else in the meantime.
_RETRYABLE = re.compile(r"pre-existing shared memory block|already exists|could not bind")


_spawn_jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
_spawn_lock = threading.Lock()
_spawner: threading.Thread | None = None


def _spawner_loop() -> None:
    while True:
        fn, fut = _spawn_jobs.get()
        try:
            fut.set_result(fn())
        except BaseException as exc:
            fut.set_exception(exc)


def _on_spawner_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on one long-lived daemon thread. ``--pdeathsig`` fires when the *thread*
    that forked the server exits, so a server started from a short-lived thread (a timer
    that restarts the database, say) would die with it."""
    global _spawner
    with _spawn_lock:
        if _spawner is None:
            _spawner = threading.Thread(target=_spawner_loop, name="pgserver-spawn", daemon=True)
            _spawner.start()
    fut: Future[Any] = Future()
    _spawn_jobs.put((fn, fut))
    return fut.result()


def find_bin_dir() -> Path | None:
    """The directory holding ``postgres`` and ``initdb``: ``$PG_BIN_DIR`` if set,
    else PATH first, then the newest ``/usr/lib/postgresql/*/bin``; None if there
    is none."""
    given = os.environ.get("PG_BIN_DIR")
    if given is not None:
        path = Path(given)
        return path if (path / "postgres").exists() and (path / "initdb").exists() else None
    found = shutil.which("postgres")
    if found:
        bin_dir = Path(found).resolve().parent
        if (bin_dir / "initdb").exists():
            return bin_dir
    candidates = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    candidates = [p for p in candidates if (p / "postgres").exists() and (p / "initdb").exists()]

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    return max(candidates, key=version, default=None)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (someone may still take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL server with its own data directory, port and socket directory.

    ``settings`` are extra ``-c`` options (they may override ``listen_addresses``, e.g.
    ``"*"`` in a netns hub; ``fsync`` stays on). Admin work goes over the Unix socket."""

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        netns: str | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL binaries (postgres, initdb) not found")
        self.bin_dir = bin_dir
        self._own_dir = base_dir is None
        self.base_dir = (
            Path(tempfile.mkdtemp(prefix="accord-pg-")) if base_dir is None else base_dir
        )
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "sock"
        self.log_path = self.base_dir / "postgres.log"
        self.host = host
        self._port_fixed = port is not None
        self.port = port if port is not None else free_port()
        self.netns = netns
        self.settings = dict(settings or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0
        self.socket_dir.mkdir(exist_ok=True)
        if self._as_root:
            user = pwd.getpwnam(SERVER_USER)
            for path in (self.base_dir, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
        if len(str(self.socket_dir / f".s.PGSQL.{self.port}")) > 100:
            raise ValueError(f"socket path under {self.socket_dir} is too long for Unix sockets")
        atexit.register(self.cleanup)

    # -- commands --------------------------------------------------------------------
    def _argv(self, program: str, *args: str) -> list[str]:
        argv = [str(self.bin_dir / program), *args]
        setpriv = shutil.which("setpriv")
        if self._as_root:
            if setpriv is None:
                raise RuntimeError("running as root needs setpriv to drop to the postgres user")
            # --pdeathsig: the server dies with the thread that forked it (the spawner
            # thread, which lives as long as the process), so a crashed run leaves none.
            user = f"--reuid={SERVER_USER}", f"--regid={SERVER_USER}", "--init-groups"
            argv = [setpriv, *user, "--reset-env", "--pdeathsig=KILL", *argv]
        elif setpriv is not None:
            argv = [setpriv, "--pdeathsig=KILL", *argv]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv

    @staticmethod
    def _env() -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("PG")}

    def init(self) -> None:
        """Run initdb once (trust auth, superuser ``postgres``, UTF8, locale C)."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        args = ["-D", str(self.data_dir), "-A", "trust", "-U", "postgres", "-E", "UTF8"]
        argv = self._argv("initdb", *args, "--locale=C", "--no-sync")
        with open(self.base_dir / "initdb.log", "wb") as log:
            rc = subprocess.run(
                argv, stdout=log, stderr=subprocess.STDOUT, env=self._env()
            ).returncode
        if rc != 0:
            text = (self.base_dir / "initdb.log").read_text(errors="replace")
            hint = ""
            if "ermission denied" in text:
                hint = f"\n({SERVER_USER} must be able to enter every parent of {self.base_dir})"
            raise RuntimeError(f"initdb failed ({rc}):\n{text[-3000:]}{hint}")
        # initdb's trust lines cover localhost only; clients in other namespaces need more.
        with open(self.data_dir / "pg_hba.conf", "a") as hba:
            hba.write("host all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n")

    def start(self, timeout: float = 30) -> None:
        """Start the postmaster and wait until it accepts connections."""
        if self.running:
            return
        self.init()
        deadline = time.monotonic() + timeout
        while True:
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._spawn()
            error = self._wait_ready(deadline)
            if error is None:
                return
            text = self.log_tail(from_offset=offset)
            taken = "could not bind" in text
            if _RETRYABLE.search(text) and time.monotonic() < deadline:
                if taken and self._port_fixed:
                    raise RuntimeError(f"port {self.port} is taken\n--- log ---\n{text}")
                if taken:
                    self.port = free_port()
                time.sleep(0.1)
                continue
            raise RuntimeError(f"PostgreSQL did not start: {error}\n--- log ---\n{text}")

    def _spawn(self) -> None:
        opts = {
            "listen_addresses": self.host,
            "max_connections": "200",
            "shared_buffers": "128MB",
            **self.settings,
            "fsync": "on",
        }
        args = ["-D", str(self.data_dir), "-p", str(self.port), "-k", str(self.socket_dir)]
        for key, value in opts.items():
            args += ["-c", f"{key}={value}"]
        argv = self._argv("postgres", *args)

        def popen() -> subprocess.Popen[bytes]:
            with open(self.log_path, "ab") as log:
                return subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env(),
                )

        self._proc = _on_spawner_thread(popen)

    def _wait_ready(self, deadline: float) -> str | None:
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._proc = None
                return f"postmaster exited with {rc}"
            try:
                with psycopg.connect(self.admin_conninfo(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                if self.netns is None:  # TCP is reachable from here only outside a netns
                    with psycopg.connect(self.url(), connect_timeout=2) as conn:
                        conn.execute("SELECT 1")
                return None
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    self._kill_proc()
                    return f"timed out ({exc})"
            time.sleep(0.05)

    def _kill_proc(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self.resume()  # stopped backends would keep the shared memory forever
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def stop(self, timeout: float = 30) -> None:
        """Fast shutdown (SIGINT) and wait; SIGKILL if it takes longer than ``timeout``."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self.resume()
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._kill_proc()

    def kill(self) -> None:
        """SIGKILL the postmaster and reap it. Its backends notice and exit on their own."""
        self._kill_proc()

    def restart(self, timeout: float = 30) -> None:
        self.stop()
        self.start(timeout)

    def _children(self) -> list[int]:
        pid = self.pid
        if pid is None:
            return []
        kids = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(stat.split("/")[2]))
        return kids

    def pause(self) -> None:
        """SIGSTOP the postmaster and all its backends (a frozen database host)."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGSTOP)
            for kid in self._children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(kid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.pid is not None:
            for kid in self._children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(kid, signal.SIGCONT)
            os.kill(self.pid, signal.SIGCONT)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def log_tail(self, n: int = 40, *, from_offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(from_offset)
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-n:])

    # -- connections -----------------------------------------------------------------
    def url(self, dbname: str = "postgres", *, host: str | None = None) -> str:
        return f"postgresql://postgres@{host or self.host}:{self.port}/{dbname}"

    def admin_conninfo(self, dbname: str = "postgres") -> str:
        """Conninfo over the Unix socket: works from here even when the server is in a netns."""
        return f"host={self.socket_dir} port={self.port} user=postgres dbname={dbname}"

    def _admin(self, statement: sql.Composable) -> None:
        with psycopg.connect(self.admin_conninfo(), autocommit=True) as conn:
            conn.execute(statement)

    def create_database(self, name: str) -> None:
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def create_schema(self, name: str, dbname: str = "postgres") -> None:
        with psycopg.connect(self.admin_conninfo(dbname), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))

    def drop_schema(self, name: str, dbname: str = "postgres") -> None:
        with psycopg.connect(self.admin_conninfo(dbname), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))

    def fresh_url(self, prefix: str = "t", *, host: str | None = None) -> str:
        """URL of a brand-new, empty database named ``<prefix>_<random>``.

        CREATE DATABASE took ~40-200 ms here (median ~100 ms), CREATE SCHEMA ~5 ms; a
        database is used anyway because accord's ``NOTIFY accord`` channel is per
        database, so tests sharing a database through schemas would wake each other.
        ``schema_url`` is the cheap variant."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}".lower()
        self.create_database(name)
        return self.url(name, host=host)

    def schema_url(self, prefix: str = "t", *, host: str | None = None) -> str:
        """URL whose libpq ``options`` set ``search_path`` to a brand-new schema."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}".lower()
        self.create_schema(name)
        return self.url(host=host) + "?options=" + quote(f"-csearch_path={name}", safe="")

    # -- lifetime --------------------------------------------------------------------
    def cleanup(self) -> None:
        """Stop the server (if running) and remove ``base_dir`` if this object made it."""
        self.stop()
        if self._own_dir:
            # The data directory holds every test's database (some 100,000
            # files after a whole run): removing it from Python took minutes on
            # a loaded machine, inside the last test's timeout. It is renamed
            # out of the way at once and removed by an ``rm`` left running in
            # the background (the shell that starts it exits at once).
            trash = f"{self.base_dir}.removing-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(self.base_dir, trash)
                subprocess.run(
                    ["sh", "-c", 'rm -rf -- "$0" >/dev/null 2>&1 &', trash],
                    stdin=subprocess.DEVNULL,
                    check=True,
                    timeout=30,
                )
            except (OSError, subprocess.SubprocessError):
                shutil.rmtree(trash if os.path.exists(trash) else self.base_dir, ignore_errors=True)
        atexit.unregister(self.cleanup)

    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
