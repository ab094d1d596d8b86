"""Where a node runs task attempts: child processes (default) or threads.

Both pools take claimed tasks one per slot and hand back Completions. A slot
whose task waits on another task's result is lent out meanwhile: the pool
starts another process or thread so that waiting never deadlocks a node.

Processes give isolation, timeouts that really stop the task (the process is
killed) and heartbeats that keep going while a task holds the GIL. Threads
suit I/O-bound tasks; a timed-out thread cannot be stopped, so its attempt is
recorded as failed, its thread abandoned and its eventual result discarded.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

import msgspec

from accord._checks import describe_exception, type_name
from accord.store.records import ClaimedTask, Completion, Outcome
from accord.tasks.registry import Runtime

_encode = msgspec.msgpack.Encoder().encode
_decode_message = msgspec.msgpack.Decoder().decode
_decode_completion = msgspec.msgpack.Decoder(Completion).decode

# Extra processes or threads a pool may start for slots lent by waiting tasks.
MAX_LENT = 64


def crash_completion(task: ClaimedTask, why: str, error_type: str) -> Completion:
    return Completion(
        task.id, task.fence, Outcome.ERROR, error=why, error_type=error_type, retryable=True
    )


class Pool(Protocol):
    fatal: str | None

    def free(self) -> int: ...
    def active(self) -> int: ...
    def start(self, task: ClaimedTask) -> None: ...
    def wait(self, timeout: float) -> list[Completion]: ...
    def kill(self, task_id: int) -> bool: ...
    def fence(self) -> list[ClaimedTask]: ...
    def wake(self) -> None: ...
    def running(self) -> list[ClaimedTask]: ...
    def blocked(self) -> set[int]: ...
    def close(self) -> None: ...


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Keep spawn from re-running the parent's main script in the child.

    The child imports the app's own module; running the caller's script
    again there would be wasted at best, and without an
    ``if __name__ == "__main__"`` guard would start it all over.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved: dict[str, Any] = {
        name: main.__dict__[name] for name in ("__file__", "__spec__") if name in vars(main)
    }
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


@dataclass(eq=False)
class _Proc:
    process: Any
    conn: Connection
    task: ClaimedTask | None = None
    deadline: float | None = None
    ready: bool = False
    blocked: bool = False
    sent_at: float = 0.0


class ProcessPool:
    """Slots as child processes started with ``spawn`` (safe beside threads)."""

    def __init__(self, runtime: Runtime, slots: int, node_id: int) -> None:
        self.runtime = runtime
        self.slots = slots
        self.node_id = node_id
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list[_Proc] = []
        # One poll object for the pool's life: building a selector per wait
        # costs more than the wait itself when tasks take microseconds.
        self._poll = select.poll()
        self._fds: dict[int, tuple[_Proc, bool]] = {}
        self._locator = runtime.locator()
        self._store_url = runtime.store_url
        self.fatal: str | None = None
        # wake() writes here, from any thread, to end a wait early.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll.register(self._wake_r, select.POLLIN)
        for _ in range(slots):
            self._spawn()

    def _spawn(self) -> _Proc:
        from accord.worker.child import child_main

        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=child_main,
            args=(self._locator, self._store_url, child, self.node_id),
            name="accord-slot",
            daemon=True,
        )
        if self._locator.startswith("__main__:"):
            process.start()  # the app lives in the main script: the child runs it
        else:
            with _main_hidden():
                process.start()
        child.close()
        proc = _Proc(process, parent)
        self._procs.append(proc)
        for fd, is_conn in ((parent.fileno(), True), (process.sentinel, False)):
            self._fds[fd] = (proc, is_conn)
            self._poll.register(fd, select.POLLIN)
        return proc

    def _forget(self, proc: _Proc) -> None:
        if proc in self._procs:
            self._procs.remove(proc)
        for fd in [fd for fd, (p, _) in self._fds.items() if p is proc]:
            del self._fds[fd]
            self._poll.unregister(fd)

    def active(self) -> int:
        return sum(1 for p in self._procs if p.task is not None and not p.blocked)

    def free(self) -> int:
        return self.slots - self.active()

    def running(self) -> list[ClaimedTask]:
        return [p.task for p in self._procs if p.task is not None]

    def blocked(self) -> set[int]:
        return {p.task.id for p in self._procs if p.task is not None and p.blocked}

    def start(self, task: ClaimedTask) -> None:
        proc = next((p for p in self._procs if p.task is None), None)
        if proc is None:
            lent = sum(1 for p in self._procs if p.blocked)
            if len(self._procs) >= self.slots + min(lent, MAX_LENT):
                raise RuntimeError("no free slot")
            proc = self._spawn()
        proc.task = task
        proc.sent_at = time.monotonic()
        proc.deadline = None
        if proc.ready and task.timeout:
            proc.deadline = proc.sent_at + task.timeout
        proc.conn.send_bytes(_encode(task))

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"w")
        except OSError:
            pass  # the pipe is full (a wake is pending already) or closed

    def wait(self, timeout: float) -> list[Completion]:
        done: list[Completion] = []
        events = self._poll.poll(max(0, int(timeout * 1000)))
        for fd, _ in events:
            if fd == self._wake_r:
                try:
                    os.read(self._wake_r, 4096)
                except OSError:
                    pass
                continue
            entry = self._fds.get(fd)
            if entry is None:
                continue  # its process was handled earlier in this loop
            proc, is_conn = entry
            if is_conn:
                self._read(proc, done)
            else:
                self._died(proc, done)
        self._check_timeouts(done)
        return done

    def _read(self, proc: _Proc, done: list[Completion]) -> None:
        # One message per readiness event: poll is level-triggered, so the next
        # wait returns at once for any message still in the pipe.
        try:
            raw = proc.conn.recv_bytes()
        except (EOFError, OSError):
            self._died(proc, done)
            return
        # Control messages are short msgpack arrays; completions are maps.
        if raw[0] in (0x91, 0x92):
            self._control(proc, _decode_message(raw))
            return
        completion = _decode_completion(raw)
        proc.task = None
        proc.blocked = False
        proc.deadline = None
        done.append(completion)
        self._retire_extra(proc)

    def _control(self, proc: _Proc, message: list[Any]) -> None:
        tag = message[0]
        if tag == "ready":
            proc.ready = True
            if proc.task is not None and proc.task.timeout:
                proc.deadline = time.monotonic() + proc.task.timeout
        elif tag == "blocked":
            proc.blocked = True
        elif tag == "unblocked":
            proc.blocked = False
        elif tag == "fatal":
            self.fatal = message[1]

    def _retire_extra(self, proc: _Proc) -> None:
        lent = sum(1 for p in self._procs if p.blocked)
        if len(self._procs) > self.slots + lent:
            self._forget(proc)
            self._stop(proc)

    def _died(self, proc: _Proc, done: list[Completion]) -> None:
        if proc not in self._procs:
            return
        self._forget(proc)
        proc.process.join(timeout=1.0)
        if proc.task is not None:
            why = f"the task's process {_exit_reason(proc.process.exitcode)}"
            done.append(crash_completion(proc.task, why, "WorkerCrashed"))
        proc.conn.close()
        if self.fatal is None and len(self._procs) < self.slots:
            self._spawn()

    def _check_timeouts(self, done: list[Completion]) -> None:
        now = time.monotonic()
        for proc in list(self._procs):
            if proc.task is not None and proc.deadline is not None and now > proc.deadline:
                task = proc.task
                self._kill_proc(proc)
                done.append(
                    crash_completion(task, f"timed out after {task.timeout} s", "TimeoutError")
                )

    def _kill_proc(self, proc: _Proc) -> None:
        self._forget(proc)
        proc.process.kill()
        proc.process.join(timeout=5.0)
        proc.conn.close()
        if len(self._procs) < self.slots:
            self._spawn()

    def kill(self, task_id: int) -> bool:
        for proc in self._procs:
            if proc.task is not None and proc.task.id == task_id:
                self._kill_proc(proc)
                return True
        return False

    def fence(self) -> list[ClaimedTask]:
        """SIGKILL every slot process that runs an attempt; safe to call from
        another thread while the node's loop is blocked (it changes nothing
        here: the loop sees the slots die and replaces them)."""
        stopped = []
        for proc in list(self._procs):
            task = proc.task
            if task is not None:
                proc.process.kill()
                stopped.append(task)
        return stopped

    def _stop(self, proc: _Proc) -> None:
        try:
            proc.conn.send_bytes(_encode(["stop"]))
        except OSError:
            pass
        proc.process.join(timeout=2.0)
        if proc.process.is_alive():
            proc.process.kill()
            proc.process.join(timeout=2.0)
        proc.conn.close()

    def close(self) -> None:
        procs = list(self._procs)
        for proc in procs:
            self._forget(proc)
        for proc in procs:
            if proc.task is not None:
                proc.process.kill()
        for proc in procs:
            self._stop(proc)
        self._poll.unregister(self._wake_r)
        os.close(self._wake_r)
        os.close(self._wake_w)


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Start threads with SIGTERM and SIGINT blocked, so the kernel delivers
    them to the main thread.

    A signal that lands on another thread sets CPython's pending flag without
    waking the main thread's eval loop (the flag is computed for the thread
    that caught it), so a node could miss its SIGTERM until some other event.
    """
    stops = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@dataclass(eq=False)
class _Thread:
    inbox: queue.SimpleQueue[ClaimedTask | None] = field(default_factory=queue.SimpleQueue)
    task: ClaimedTask | None = None
    deadline: float | None = None
    blocked: bool = False
    thread: threading.Thread | None = None


class ThreadPool:
    """Slots as threads of the node's process, for I/O-bound tasks."""

    def __init__(self, runtime: Runtime, slots: int, node_id: int) -> None:
        self.runtime = runtime
        self.slots = slots
        self.node_id = node_id
        self._threads: list[_Thread] = []
        self._events: queue.SimpleQueue[tuple[_Thread | None, str, Any]] = queue.SimpleQueue()
        self.fatal: str | None = None
        for _ in range(slots):
            self._spawn()

    def _spawn(self) -> _Thread:
        slot = _Thread()
        slot.thread = threading.Thread(
            target=self._serve, args=(slot,), name="accord-slot", daemon=True
        )
        with _stop_signals_blocked():
            slot.thread.start()
        self._threads.append(slot)
        return slot

    def _serve(self, slot: _Thread) -> None:
        from accord.worker.execute import error_completion, execute

        while True:
            task = slot.inbox.get()
            if task is None:
                return

            def on_block(flag: bool, slot: _Thread = slot) -> None:
                self._events.put((slot, "blocked" if flag else "unblocked", None))

            try:
                completion = execute(self.runtime, task, node_id=self.node_id, on_block=on_block)
            except BaseException as exc:
                # execute() turns what the task raises into a Completion; this is
                # what is left (a failure in accord's own code): a slot thread
                # that ended here would leave the task held, and heartbeated, for ever.
                why = f"the attempt could not be run: {describe_exception(exc)}"
                completion = error_completion(task, why, type_name(exc))
            self._events.put((slot, "done", completion))

    def active(self) -> int:
        return sum(1 for t in self._threads if t.task is not None and not t.blocked)

    def free(self) -> int:
        return self.slots - self.active()

    def running(self) -> list[ClaimedTask]:
        return [t.task for t in self._threads if t.task is not None]

    def blocked(self) -> set[int]:
        return {t.task.id for t in self._threads if t.task is not None and t.blocked}

    def start(self, task: ClaimedTask) -> None:
        slot = next((t for t in self._threads if t.task is None), None)
        if slot is None:
            slot = self._spawn()
        slot.task = task
        slot.deadline = time.monotonic() + task.timeout if task.timeout else None
        slot.inbox.put(task)

    def wake(self) -> None:
        self._events.put((None, "wake", None))

    def wait(self, timeout: float) -> list[Completion]:
        done: list[Completion] = []
        try:
            first = self._events.get(timeout=timeout)
        except queue.Empty:
            first = None
        while first is not None:
            slot, kind, payload = first
            if slot is not None and slot in self._threads:
                if kind == "done":
                    slot.task = None
                    slot.blocked = False
                    done.append(payload)
                    lent = sum(1 for t in self._threads if t.blocked)
                    if len(self._threads) > self.slots + lent:
                        self._threads.remove(slot)
                        slot.inbox.put(None)
                elif kind == "blocked":
                    slot.blocked = True
                elif kind == "unblocked":
                    slot.blocked = False
            try:
                first = self._events.get_nowait()
            except queue.Empty:
                first = None
        now = time.monotonic()
        for slot in list(self._threads):
            if slot.task is not None and slot.deadline is not None and now > slot.deadline:
                task = slot.task
                self._abandon(slot)
                done.append(
                    crash_completion(
                        task,
                        f"timed out after {task.timeout} s (its thread was abandoned)",
                        "TimeoutError",
                    )
                )
        return done

    def _abandon(self, slot: _Thread) -> None:
        # A thread cannot be stopped: forget it, let it finish into the void.
        self._threads.remove(slot)
        slot.inbox.put(None)
        if len(self._threads) < self.slots:
            self._spawn()

    def fence(self) -> list[ClaimedTask]:
        """Threads cannot be stopped from outside: their attempts run on
        (their completions are refused if their leases were taken over)."""
        return []

    def kill(self, task_id: int) -> bool:
        for slot in self._threads:
            if slot.task is not None and slot.task.id == task_id:
                self._abandon(slot)
                return True
        return False

    def close(self) -> None:
        for slot in self._threads:
            slot.inbox.put(None)
        self._threads = []


def make_pool(mode: str, runtime: Runtime, slots: int, node_id: int) -> Pool:
    if mode == "process":
        return ProcessPool(runtime, slots, node_id)
    return ThreadPool(runtime, slots, node_id)
