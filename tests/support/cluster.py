"""The process side of the chaos harness (RELIABILITY.md §4.1).

:class:`Cluster` starts ``python -m accord worker`` processes as direct
children of the test (each in its own process group, output to log files,
never to pipes), injects process faults into them (SIGKILL, SIGSTOP/SIGCONT,
SIGTERM, restart), always ``wait()``s them, and when it closes kills every
process it started (also orphaned slot processes of killed nodes). Its faults
are :class:`support.recorder.Fault` s; what its workers ran is read with
:func:`support.recorder.read_executions` and checked with
:func:`support.checker.account`. :func:`chaos_app` binds tests/apps/chaos.py's
app to a test's store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import accord
from accord.store.base import Store
from support.checker import Row, account, snapshot
from support.common import bind, subprocess_env
from support.recorder import RECORD_ENV, Execution, Fault, read_executions

# What a node logs when the store refuses a completion of an attempt whose
# fence is no longer current, and when a heartbeat shows it lost a task.
FENCED_LOG_LINES = ("refused: lease lost", "lease taken over")


# -- the cluster ----------------------------------------------------------------
@dataclass(slots=True)
class Worker:
    index: int
    generation: int
    popen: subprocess.Popen[bytes]
    log: Path
    started: float


class Cluster:
    """N ``accord worker`` processes on one store, for fault injection.

    Every worker is a direct child of the test process, in its own process
    group (``start_new_session``), so a fault can hit the node alone (a crashed
    node process: its slot processes live on as orphans until their task
    ends) or the whole group (a crashed host). :meth:`close` SIGKILLs every
    process this cluster started and reaps its children. Faults are logged in
    ``faults`` (and written to ``faults.jsonl`` on close); each worker's output
    goes to ``logs/worker<i>.<generation>.log``.
    """

    def __init__(
        self,
        tmp_path: Path,
        store_url: str,
        *,
        app: str = "apps.chaos:app",
        n: int = 2,
        slots: int = 1,
        lease: float = 1.0,
        grace: float = 5.0,
        mode: str = "process",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = tmp_path
        self.store_url = store_url
        self.app = app
        self.n = n
        self.slots = slots
        self.lease = lease
        self.grace = grace
        self.mode = mode
        self.record_dir = tmp_path / "executions"
        self.record_dir.mkdir(exist_ok=True)
        self.log_dir = tmp_path / "logs"
        self.log_dir.mkdir(exist_ok=True)
        self.env = subprocess_env(store_url)
        self.env[RECORD_ENV] = str(self.record_dir)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env.update(env or {})
        self.workers: list[Worker | None] = [None] * n
        self.history: list[Worker] = []  # every process started, in order
        self.faults: list[Fault] = []
        self._generation = [0] * n
        self._options: list[dict[str, float]] = [{} for _ in range(n)]
        self._lock = threading.RLock()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- processes --------------------------------------------------------
    def start(self, index: int | None = None, **options: float) -> None:
        """Start worker ``index`` (all if None). ``options`` (``lease``,
        ``grace``, ``slots``) override the cluster's for this worker."""
        indexes = range(self.n) if index is None else [index]
        for i in indexes:
            self._start(i, options)

    def _start(self, i: int, options: Mapping[str, float]) -> Worker:
        with self._lock:
            old = self.workers[i]
            if old is not None and old.popen.poll() is None:
                raise RuntimeError(f"worker {i} is still running")
            if options:
                self._options[i] = dict(options)
            opts = self._options[i]
            self._generation[i] += 1
            gen = self._generation[i]
            log = self.log_dir / f"worker{i}.{gen}.log"
            cmd = [
                *self._prefix(i),
                sys.executable, "-m", "accord", "worker",
                "--app", self.app,
                "--slots", str(int(opts.get("slots", self.slots))),
                "--mode", self.mode,
                "--lease", str(opts.get("lease", self.lease)),
                "--grace", str(opts.get("grace", self.grace)),
                "--name", f"w{i}.{gen}",
            ]  # fmt: skip
            with open(log, "wb") as out:
                popen = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self._env(i),
                    cwd=self.root,
                    start_new_session=True,
                )
            worker = Worker(i, gen, popen, log, time.monotonic())
            self.workers[i] = worker
            self.history.append(worker)
            return worker

    def _prefix(self, i: int) -> list[str]:
        """What worker ``i``'s command runs through (it must exec the rest)."""
        return []

    def _env(self, i: int) -> dict[str, str]:
        """Worker ``i``'s environment."""
        return self.env

    def worker(self, i: int) -> Worker:
        worker = self.workers[i]
        if worker is None:
            raise RuntimeError(f"worker {i} was never started")
        return worker

    def pid(self, i: int) -> int:
        return self.worker(i).popen.pid

    def index_of(self, pid: int) -> int:
        """The worker slot whose current process is ``pid``."""
        for w in self.workers:
            if w is not None and w.popen.pid == pid:
                return w.index
        raise KeyError(f"no current worker has pid {pid}")

    def alive(self, i: int) -> bool:
        w = self.workers[i]
        return w is not None and w.popen.poll() is None

    def _signal(self, i: int, sig: signal.Signals, group: bool) -> int:
        pid = self.pid(i)
        if self.worker(i).popen.poll() is not None:
            return pid  # exited and reaped: its pid may belong to someone else now
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass
        return pid

    def _reap(self, i: int, timeout: float) -> int | None:
        try:
            return self.worker(i).popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def exit_codes(self) -> list[tuple[int, int, int | None]]:
        """(index, pid, return code or None if running) of every process started."""
        return [(w.index, w.popen.pid, w.popen.poll()) for w in self.history]

    def kill(self, i: int, *, group: bool = False) -> Fault:
        """SIGKILL worker ``i``'s node (``group``: with its slot processes).
        The fault ends when :meth:`restart` starts the worker again."""
        with self._lock:
            now = time.monotonic()
            pid = self._signal(i, signal.SIGKILL, group)
            self._reap(i, 10.0)
            fault = Fault("kill_group" if group else "kill", i, pid, now)
            self.faults.append(fault)
            return fault

    def pause(self, i: int, *, group: bool = True) -> Fault:
        """SIGSTOP worker ``i`` (``group``: with its slot processes)."""
        with self._lock:
            now = time.monotonic()
            pid = self._signal(i, signal.SIGSTOP, group)
            fault = Fault("pause", i, pid, now, detail="group" if group else "node")
            self.faults.append(fault)
            return fault

    def resume(self, i: int) -> None:
        """SIGCONT worker ``i`` and its group; ends its open pause."""
        with self._lock:
            pid = self._signal(i, signal.SIGCONT, True)
            now = time.monotonic()
            for fault in self.faults:
                if fault.kind == "pause" and fault.pid == pid and fault.end is None:
                    fault.end = now

    def term(self, i: int) -> Fault:
        """SIGTERM worker ``i``'s node: a graceful stop."""
        with self._lock:
            now = time.monotonic()
            pid = self._signal(i, signal.SIGTERM, False)
            fault = Fault("term", i, pid, now)
            self.faults.append(fault)
            return fault

    def wait_exit(self, i: int, timeout: float) -> int:
        """Wait for worker ``i`` to exit; its return code (TimeoutError if not)."""
        code = self._reap(i, timeout)
        if code is None:
            raise TimeoutError(f"worker {i} did not exit within {timeout} s")
        with self._lock:
            for fault in self.faults:
                if fault.kind == "term" and fault.target == i and fault.end is None:
                    fault.end = time.monotonic()
        return code

    def restart(self, i: int) -> Worker:
        """Start worker ``i`` again (killing its current process first)."""
        with self._lock:
            if self.alive(i):
                self.kill(i)
            worker = self._start(i, {})
            for fault in self.faults:
                if fault.target == i and fault.kind.startswith("kill") and fault.end is None:
                    fault.end = worker.started
                    fault.detail = f"restarted as pid {worker.popen.pid}"
            return worker

    def wait_ready(
        self, store: Store, indexes: Iterable[int] | None = None, timeout: float = 20.0
    ) -> None:
        """Wait until the given workers registered with the store and logged
        that they serve (their slot processes are started)."""
        wanted = list(range(self.n) if indexes is None else indexes)
        deadline = time.monotonic() + timeout
        while True:
            registered = {n.pid for n in store.nodes() if n.state == "running"}
            pending = [
                i
                for i in wanted
                if self.pid(i) not in registered or b"serving app" not in self.log_bytes(i)
            ]
            if not pending:
                return
            for i in pending:
                if not self.alive(i):
                    raise RuntimeError(
                        f"worker {i} exited before it was ready:\n{self.log_bytes(i).decode()}"
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers {pending} not ready within {timeout} s")
            time.sleep(0.05)

    # -- logs ---------------------------------------------------------------
    def log_bytes(self, i: int) -> bytes:
        return self.worker(i).log.read_bytes()

    def logs(self) -> str:
        """Every log of every worker generation, concatenated."""
        return "".join(
            f"==> {p.name} <==\n{p.read_text(errors='replace')}"
            for p in sorted(self.log_dir.glob("*.log"))
        )

    def count_in_logs(self, *needles: str) -> int:
        text = self.logs()
        return sum(text.count(n) for n in needles)

    def fenced_rejections(self) -> int:
        """Completions and heartbeats the store refused, as the nodes logged them."""
        return self.count_in_logs(*FENCED_LOG_LINES)

    def executions(self) -> list[Execution]:
        return read_executions(self.record_dir)

    def account(
        self,
        store: Store,
        run_ids: Iterable[int],
        submitted: Iterable[int],
        expected: Mapping[int, Any] | None = None,
    ) -> tuple[list[Row], list[Execution], dict[str, Any]]:
        """The runs' final rows, what this cluster executed, and :func:`account`'s
        figures over them with the cluster's faults and fenced rejections."""
        rows = snapshot(store, run_ids)
        executions = self.executions()
        figures = account(
            submitted,
            rows,
            executions,
            expected=expected,
            faults=self.faults,
            fenced_rejections=self.fenced_rejections(),
        )
        return rows, executions, figures

    def wait_executions(
        self,
        count: int,
        *,
        task_id: int | None = None,
        timeout: float = 20.0,
        ended: bool = False,
    ) -> list[Execution]:
        """Wait until at least ``count`` executions (of ``task_id``) started
        (``ended``: and returned); return them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [
                e
                for e in self.executions()
                if (task_id is None or e.task_id == task_id) and (not ended or e.end is not None)
            ]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(found)} of {count} executions within {timeout} s\n{self.logs()[-4000:]}"
                )
            time.sleep(0.02)

    def save_faults(self) -> Path:
        path = self.root / "faults.jsonl"
        with self._lock:
            path.write_text("".join(json.dumps(asdict(f)) + "\n" for f in self.faults))
        return path

    # -- teardown -----------------------------------------------------------
    def own_processes(self) -> list[Any]:
        """Live processes this cluster started: its nodes and their slots,
        also orphans of killed nodes (found by the recorder folder in their
        environment, which only our processes carry)."""
        import psutil

        mine = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.environ().get(RECORD_ENV) == str(self.record_dir):
                    mine.append(proc)
            except (psutil.Error, OSError):
                continue
        return mine

    def close(self) -> None:
        """SIGKILL every process this cluster started (nodes, their slots,
        orphans of killed nodes) and reap the nodes, its direct children."""
        with self._lock:
            for w in self.history:
                if w.popen.poll() is None:
                    w.popen.kill()
            for proc in self.own_processes():
                try:
                    proc.kill()
                    proc.resume()
                except Exception:
                    pass  # gone meanwhile
            for w in self.history:
                try:
                    w.popen.wait(10.0)
                except subprocess.TimeoutExpired:
                    pass
            self.save_faults()


@contextmanager
def chaos_app(store_url: str) -> Iterator[accord.App]:
    """tests/apps/chaos.py's app bound to this test's store, closed after."""
    from apps.chaos import app

    bind(app, store_url)
    try:
        yield app
    finally:
        app.close()
