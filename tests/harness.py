"""Fault-injection harness for the chaos suite (RELIABILITY.md §4.1).

Four parts, reusable by every scenario:

- :class:`Cluster` starts ``python -m accord worker`` processes as direct
  children of the test (each in its own process group, output to log files,
  never to pipes), injects process faults into them (SIGKILL, SIGSTOP/SIGCONT,
  SIGTERM, restart), always ``wait()``s them, and when it closes kills every
  process it started (also orphaned slot processes of killed nodes).
- :class:`Nemesis` applies faults at seeded random intervals from a thread and
  logs each with its monotonic start and end (``Cluster.faults``).
- The execution recorder: :func:`record` is called by the tasks of
  ``tests/apps/chaos.py``; each attempt appends a ``start`` line before it
  does anything and an ``end`` line when it returns, to a per-process JSONL
  file opened with ``O_APPEND`` in the folder named by ``CHAOS_RECORD_DIR``.
  Two lines rather than one so an attempt killed half-way still counts as an
  execution. :func:`read_executions` pairs them into :class:`Execution` s.
- :func:`account`, a pure function over the submitted ids, the final task rows
  (:func:`snapshot`) and the executions, returns the queue-accounting figures
  of RELIABILITY.md (submitted, completed, lost, duplicated, unexpected,
  executions, max_exec_per_task, fenced_rejections, ...).

Times are ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process
of the machine), so the test, the nemesis and the tasks can be compared.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import accord
from accord import serde
from accord.store.base import Store

RECORD_ENV = "CHAOS_RECORD_DIR"
# What a node logs when the store refuses a completion of an attempt whose
# fence is no longer current, and when a heartbeat shows it lost a task.
FENCED_LOG_LINES = ("refused: lease lost", "lease taken over")


# -- execution recorder -----------------------------------------------------
def record(event: str, key: Any, **extra: Any) -> dict[str, Any]:
    """Append one line about the running attempt to this process's log file.

    Called from task code. Returns the entry (the attempt's id, fence, ...)
    whether or not recording is on (``CHAOS_RECORD_DIR`` unset: nothing is
    written).
    """
    ctx = accord.current()
    entry: dict[str, Any] = {
        "ev": event,
        "task_id": ctx.task_id if ctx else None,
        "fence": ctx.fence if ctx else None,
        "attempt": ctx.attempt if ctx else None,
        "node_id": ctx.node_id if ctx else None,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "key": key,
        "t": time.monotonic(),
        "wall": time.time(),
        **extra,
    }
    folder = os.environ.get(RECORD_ENV)
    if folder:
        line = (json.dumps(entry) + "\n").encode()
        fd = os.open(
            os.path.join(folder, f"exec-{os.getpid()}.jsonl"),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND,
            0o644,
        )
        try:
            os.write(fd, line)  # one write of a short line: never interleaved
        finally:
            os.close(fd)
    return entry


@dataclass(frozen=True, slots=True)
class Execution:
    """One attempt that started running a task's function."""

    task_id: int
    fence: int
    attempt: int
    node_id: int | None
    pid: int
    ppid: int  # the node process that ran the slot
    key: Any
    start: float
    end: float | None  # None: the attempt never returned (killed, crashed)
    value: Any = None


def finished(key: Any, value: Any, started: dict[str, Any]) -> dict[str, Any]:
    """Record the attempt's end and return what a recorded task returns: its
    value with the attempt's identity (``started`` is :func:`record`'s entry)."""
    record("end", key, value=value)
    return {
        "key": key,
        "value": value,
        "task_id": started["task_id"],
        "fence": started["fence"],
        "attempt": started["attempt"],
        "pid": started["pid"],
    }


def read_executions(folder: str | os.PathLike[str]) -> list[Execution]:
    """Pair the ``start``/``end`` lines of every recorder file under ``folder``."""
    starts: dict[tuple[int, int, int], dict[str, Any]] = {}
    ends: dict[tuple[int, int, int], dict[str, Any]] = {}
    extra_starts: list[dict[str, Any]] = []
    for path in sorted(Path(folder).glob("exec-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # the last line of a file being written right now
            ident = (entry["pid"], entry["task_id"], entry["fence"])
            if entry["ev"] == "start":
                if ident in starts:
                    extra_starts.append(entry)
                else:
                    starts[ident] = entry
            elif entry["ev"] == "end":
                ends[ident] = entry
    out = []
    pairs = [(s, ends.get(ident)) for ident, s in starts.items()]
    pairs += [(s, None) for s in extra_starts]  # a fence started twice in one process
    for s, e in pairs:
        out.append(
            Execution(
                task_id=s["task_id"],
                fence=s["fence"],
                attempt=s["attempt"],
                node_id=s["node_id"],
                pid=s["pid"],
                ppid=s["ppid"],
                key=s["key"],
                start=s["t"],
                end=e["t"] if e else None,
                value=e.get("value") if e else None,
            )
        )
    out.sort(key=lambda x: x.start)
    return out


# -- final rows -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Row:
    """A task's final row in the store, with its result decoded."""

    id: int
    run_id: int
    name: str
    state: str
    fence: int
    attempts: int
    max_attempts: int
    result: Any
    error: str | None
    error_type: str | None


def snapshot(store: Store, run_ids: Iterable[int]) -> list[Row]:
    """Every task row of the given runs, read through the store's API."""
    rows: list[Row] = []
    for run_id in run_ids:
        infos = store.tasks(run_id)
        results = {r.id: r for r in store.results([t.id for t in infos])}
        for t in infos:
            raw = results[t.id].result
            rows.append(
                Row(
                    id=t.id,
                    run_id=t.run_id,
                    name=t.name,
                    state=t.state.value,
                    fence=t.fence,
                    attempts=t.attempts,
                    max_attempts=t.max_attempts,
                    result=serde.loads(raw) if raw is not None else None,
                    error=t.error,
                    error_type=t.error_type,
                )
            )
    return rows


# -- faults and the cluster -------------------------------------------------
@dataclass(slots=True)
class Fault:
    """One injected fault; ``end`` is when it was healed (None: not yet)."""

    kind: str
    target: int
    pid: int
    start: float
    end: float | None = None
    wall: float = field(default_factory=time.time)
    detail: str = ""
    # The node could not record anything while the fault lasted (the store was
    # locked or out of reach): every execution on it that ran during the fault
    # is hit, not only those started before it (a task claimed just before can
    # start and end meanwhile, and its result wait until the node fences itself).
    blocks: bool = False


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
        from support import subprocess_env

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


class Nemesis:
    """Applies faults to a cluster at seeded random intervals, in a thread.

    ``kinds`` holds ``"kill"`` (SIGKILL the node, restart it after
    ``restart_after`` seconds), ``"kill_group"`` (the same for node and slots)
    and ``"pause"`` (SIGSTOP the group for ``pause_for`` seconds). At most
    ``max_faults`` faults; :meth:`stop` ends the schedule and heals (resumes
    paused workers, restarts dead ones). The log is ``cluster.faults``.
    """

    def __init__(
        self,
        cluster: Cluster,
        seed: int,
        *,
        kinds: Sequence[str] = ("kill",),
        interval: tuple[float, float] = (0.3, 0.8),
        restart_after: tuple[float, float] = (0.0, 0.2),
        pause_for: tuple[float, float] = (0.5, 1.5),
        max_faults: int = 1000,
    ) -> None:
        self.cluster = cluster
        self.seed = seed
        self.rng = random.Random(seed)
        self.kinds = list(kinds)
        self.interval = interval
        self.restart_after = restart_after
        self.pause_for = pause_for
        self.max_faults = max_faults
        self.count = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)

    def start(self) -> Nemesis:
        self._thread.start()
        return self

    def __enter__(self) -> Nemesis:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            while self.count < self.max_faults:
                if self._stop.wait(self.rng.uniform(*self.interval)):
                    return
                self._one()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def _one(self) -> None:
        c = self.cluster
        kind = self.rng.choice(self.kinds)
        target = self.rng.randrange(c.n)
        self.count += 1
        if kind in ("kill", "kill_group"):
            c.kill(target, group=kind == "kill_group")
            self._stop.wait(self.rng.uniform(*self.restart_after))
            c.restart(target)
        elif kind == "pause":
            c.pause(target)
            self._stop.wait(self.rng.uniform(*self.pause_for))
            c.resume(target)
        else:
            raise ValueError(f"unknown fault kind {kind!r}")

    def stop(self) -> None:
        """End the schedule, then heal every worker."""
        self._stop.set()
        if self._thread.is_alive() or self._thread.ident is not None:
            self._thread.join(30.0)
        c = self.cluster
        for i in range(c.n):
            if c.workers[i] is None:
                continue
            c.resume(i)
            if not c.alive(i):
                c.restart(i)
        if self.error is not None:
            raise self.error


# -- the checker ------------------------------------------------------------
def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# How long after its node a slot may still start a task it had been sent.
SLOT_DEATH_S = 0.5


def hits(executions: Sequence[Execution], faults: Sequence[Fault]) -> dict[int, int]:
    """For each task, how many of its executions a fault hit: the execution
    ran on the faulted node (its slot's parent) and started before the fault,
    or never returned (a slot dies a moment after its node: it may start a
    task already in its pipe just after the fault was logged). A fault that
    ``blocks`` also hits the executions that ran while it lasted."""
    out: dict[int, int] = defaultdict(int)
    for e in executions:
        if any(f.pid == e.ppid and _hit(e, f) for f in faults):
            out[e.task_id] += 1
    return dict(out)


def _hit(e: Execution, f: Fault) -> bool:
    if e.end is None or e.start <= f.start + SLOT_DEATH_S:
        return True
    return f.blocks and f.end is not None and e.start <= f.end + SLOT_DEATH_S


def reclaim_gaps(executions: Sequence[Execution], faults: Sequence[Fault]) -> list[float]:
    """For each execution a fault cut short, the seconds from the fault to
    the start of the next execution of the same task."""
    by_task: dict[int, list[Execution]] = defaultdict(list)
    for e in executions:
        by_task[e.task_id].append(e)
    gaps = []
    for runs in by_task.values():
        runs.sort(key=lambda e: e.start)
        for e, nxt in itertools.pairwise(runs):
            cut = [f for f in faults if f.pid == e.ppid and e.start <= f.start <= nxt.start]
            if cut:
                gaps.append(nxt.start - min(f.start for f in cut))
    return gaps


def account(
    submitted: Iterable[int],
    rows: Sequence[Row],
    executions: Sequence[Execution] | None,
    *,
    expected: Mapping[int, Any] | None = None,
    faults: Sequence[Fault] = (),
    fenced_rejections: int = 0,
) -> dict[str, Any]:
    """Queue accounting (RELIABILITY.md §4.1, checker 1). Pure.

    - ``submitted``: ids of the acknowledged submissions (tasks expected to
      succeed); ``rows``: the final rows of their runs; ``executions``: what
      the recorder saw (None: not recorded); ``expected``: task id -> the
      ``value`` its result must carry; ``faults``: the fault log.
    - ``lost``: a submitted task with no row, or one never finished.
    - ``duplicated``: a task whose recorded result is not the work of exactly
      one current attempt: the result names another task or another fence
      than the row's final one (a stale attempt's completion was accepted),
      no recorded execution of that fence returned it, one fence started more
      than once, or its key was recorded as the result of another row too;
      also a wrong value. Every reason is listed in ``violations``.
    - ``unexpected``: rows or executions of tasks nobody submitted.
    - ``excess_executions``: tasks run more than ``1 + faults that hit them``.
    """
    ids = list(dict.fromkeys(submitted))
    id_set = set(ids)
    by_id = {r.id: r for r in rows}
    violations: list[str] = []
    lost: list[int] = []
    failed: list[int] = []
    bad: set[int] = set()
    execs = list(executions or [])
    per_task = Counter(e.task_id for e in execs)
    per_fence = Counter((e.task_id, e.fence) for e in execs)
    returned = {(e.task_id, e.fence): e for e in execs if e.end is not None}
    keys: dict[Any, list[int]] = defaultdict(list)

    for task_id in ids:
        row = by_id.get(task_id)
        if row is None:
            lost.append(task_id)
            violations.append(f"task {task_id}: acknowledged but has no row")
            continue
        if row.state in ("pending", "ready", "running"):
            lost.append(task_id)
            violations.append(f"task {task_id}: never finished (state {row.state})")
            continue
        if row.state != "succeeded":
            failed.append(task_id)
            continue
        res = row.result
        if not isinstance(res, dict) or "fence" not in res:
            bad.add(task_id)
            violations.append(f"task {task_id}: result {res!r} does not name its attempt")
            continue
        if res.get("task_id") != task_id:
            bad.add(task_id)
            violations.append(f"task {task_id}: result made by task {res.get('task_id')}")
        if res["fence"] != row.fence:
            bad.add(task_id)
            violations.append(
                f"task {task_id}: result from fence {res['fence']}, final fence {row.fence}"
            )
        if executions is not None and (task_id, res["fence"]) not in returned:
            bad.add(task_id)
            violations.append(f"task {task_id}: no recorded execution of fence {res['fence']}")
        if expected is not None and task_id in expected and res.get("value") != expected[task_id]:
            bad.add(task_id)
            violations.append(
                f"task {task_id}: value {res.get('value')!r}, expected {expected[task_id]!r}"
            )
    for row in rows:  # every row, also unexpected ones: a key recorded twice is a duplicate
        if row.state == "succeeded" and isinstance(row.result, dict) and "key" in row.result:
            keys[_hashable(row.result["key"])].append(row.id)
    for key, owners in keys.items():
        if len(owners) > 1:
            bad.update(owners[1:])
            violations.append(f"key {key!r}: result recorded by tasks {owners}")
    for (task_id, fence), n in per_fence.items():
        if n > 1:
            bad.add(task_id)
            violations.append(f"task {task_id}: fence {fence} started {n} times")

    unexpected = sorted({r.id for r in rows if r.id not in id_set})
    unexpected_execs = sorted({e.task_id for e in execs if e.task_id not in id_set})
    for task_id in unexpected:
        violations.append(f"task {task_id}: in the store but never submitted")
    for task_id in unexpected_execs:
        if task_id not in by_id:
            violations.append(f"task {task_id}: executed but never submitted")

    hit = hits(execs, faults)
    excess = sorted(t for t, n in per_task.items() if n > 1 + hit.get(t, 0))
    for task_id in excess:
        violations.append(
            f"task {task_id}: {per_task[task_id]} executions, {hit.get(task_id, 0)} faults hit it"
        )
    gaps = reclaim_gaps(execs, faults)
    return {
        "submitted": len(ids),
        "completed": sum(1 for t in ids if t in by_id and by_id[t].state == "succeeded"),
        "failed": len(failed),
        "lost": len(lost),
        "duplicated": len(bad),
        "unexpected": len(set(unexpected) | set(unexpected_execs)),
        "executions": len(execs) if executions is not None else None,
        "max_exec_per_task": max(per_task.values(), default=0),
        "exec_histogram": dict(sorted(Counter(per_task.values()).items())),
        "excess_executions": len(excess),
        "faults": len(faults),
        "fenced_rejections": fenced_rejections,
        "reclaim_gap_p50_s": _round(statistics.median(gaps)) if gaps else None,
        "reclaim_gap_p99_s": _round(_percentile(gaps, 0.99)),
        "reclaim_gap_max_s": _round(max(gaps, default=None)),
        "invariant_violations": len(violations),
        "violations": violations[:20],
        "lost_ids": lost[:20],
        "duplicated_ids": sorted(bad)[:20],
    }


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else value


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def report(scenario: str, figures: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """Print the scenario's one-line JSON report (seen with ``pytest -s``)."""
    out = {"scenario": scenario, **figures, **extra}
    print(json.dumps(out, default=str))
    return out


def wait_for(check: Callable[[], Any], timeout: float, what: str, pause: float = 0.02) -> Any:
    """Call ``check`` until it returns something truthy; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(pause)


@contextmanager
def chaos_app(store_url: str) -> Iterator[accord.App]:
    """tests/apps/chaos.py's app bound to this test's store, closed after."""
    from apps.chaos import app
    from support import bind

    bind(app, store_url)
    try:
        yield app
    finally:
        app.close()


# -- database faults ----------------------------------------------------------
class DbNemesis:
    """Crashes a :class:`pgserver.PgServer` at seeded random intervals, in a thread.

    ``kinds`` holds ``"db_kill"`` (SIGKILL of the postmaster, a direct child:
    crash recovery on restart) and ``"db_stop"`` (fast shutdown). The server
    stays down for ``down_for`` seconds, then is started again; the fault ends
    when it accepts connections. Faults are logged in ``faults`` as
    :class:`Fault` s (``target`` -1, ``pid`` the postmaster's, ``detail`` the
    seconds it was down); ``end - start`` includes the restart. At most
    ``max_faults``; :meth:`stop` ends the schedule and makes sure the server runs.
    """

    def __init__(
        self,
        server: Any,
        seed: int,
        *,
        kinds: Sequence[str] = ("db_kill", "db_stop"),
        interval: tuple[float, float] = (3.0, 6.0),
        down_for: tuple[float, float] = (0.0, 2.0),
        max_faults: int = 1000,
    ) -> None:
        self.server = server
        self.seed = seed
        self.rng = random.Random(seed)
        self.kinds = list(kinds)
        self.interval = interval
        self.down_for = down_for
        self.max_faults = max_faults
        self.faults: list[Fault] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="db-nemesis", daemon=True)

    def start(self) -> DbNemesis:
        self._thread.start()
        return self

    def __enter__(self) -> DbNemesis:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            while len(self.faults) < self.max_faults:
                if self._stop.wait(self.rng.uniform(*self.interval)):
                    return
                self.crash(self.rng.choice(self.kinds), self.rng.uniform(*self.down_for))
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def crash(self, kind: str, down: float) -> Fault:
        """One fault now: take the server down (``kind``) for ``down`` s, restart it."""
        pid = self.server.pid or -1
        fault = Fault(kind, -1, pid, time.monotonic(), detail=f"down {down:.2f}s")
        self.faults.append(fault)
        if kind == "db_kill":
            self.server.kill()
        elif kind == "db_stop":
            self.server.stop()
        else:
            raise ValueError(f"unknown database fault {kind!r}")
        time.sleep(down)  # not cut short by stop(): a fault always heals itself
        self.server.start()
        fault.end = time.monotonic()
        return fault

    def stop(self) -> None:
        """End the schedule (a fault under way runs to its restart); the server runs."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(60.0)
        if not self.server.running:
            self.server.start()
        if self.error is not None:
            raise self.error
