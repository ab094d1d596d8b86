"""The context of a running task attempt.

Code running inside a task reaches its attempt through :func:`current`. The
context also collects the child tasks the attempt submits: they are written
in batches, each carrying the attempt's fence, and numbered in submission
order so that a re-executed parent finds the children its earlier attempt
made instead of making them twice.

When children are written: a background writer (one thread per process: the
node's process in thread mode, the slot process in process mode, which
writes to the store on its own connection) writes a batch once no child has
joined it for ``FLUSH_QUIET`` seconds, or once its oldest child has waited
``FLUSH_AGE`` seconds, so other nodes can start children while the parent
goes on computing, and children submitted in a loop still go in few commits.
The attempt's own thread writes at once when ``FLUSH_COUNT`` children are
waiting (which also bounds the buffer), before it waits on a child or reads
an unwritten handle's id, and when it ends (before its result is reported,
after a failure too). An error of a background write (say the attempt lost
its lease) is raised in the attempt at its next submit or flush, and by the
handles of that batch.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from accord import _attempt
from accord.state import State
from accord.store.records import NewTask

if TYPE_CHECKING:
    from accord.tasks.registry import Runtime

log = logging.getLogger("accord.context")

# Write buffered children once this many are waiting (the submitting thread
# does), or (the background writer does) once no child came for FLUSH_QUIET
# seconds or the oldest has waited FLUSH_AGE seconds.
FLUSH_COUNT = 500
FLUSH_QUIET = 0.001
FLUSH_AGE = 0.005


class Child(Protocol):
    """A child's handle as the batch that holds it sees it (a ``Handle``)."""

    _id: int | None

    @property
    def id(self) -> int: ...

    def _bind(self, task_id: int) -> None: ...

    def _fail(self, error: BaseException) -> None: ...


@dataclass
class TaskContext:
    """What a task attempt knows about itself (see :func:`current`)."""

    runtime: Runtime
    task_id: int
    run_id: int
    name: str
    attempt: int
    max_attempts: int
    fence: int
    node_id: int | None = None
    # Called with True before the attempt blocks on another task and with
    # False after, so that its node can lend the slot meanwhile.
    on_block: Callable[[bool], None] | None = None
    _seq: int = 0
    # The batch being collected (guarded by _lock): its children, their
    # handles, each handle's place by id(handle), the batch's number, when
    # its first and its latest child came, and a background write's error.
    _pending: list[NewTask] = field(default_factory=list)
    _handles: list[Child] = field(default_factory=list)
    _index: dict[int, int] = field(default_factory=dict, repr=False)
    _batch: int = 0
    _first_at: float = 0.0
    _last_at: float = 0.0
    _error: Exception | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    # Held while a batch is written, so batches commit one at a time and in
    # order (a later batch may name an earlier one's children by id).
    _writing: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def next_seq(self) -> int:
        with self._lock:
            seq = self._seq
            self._seq += 1
            return seq

    def add(self, task: NewTask, handle: Child, refs: Sequence[Child] = ()) -> None:
        """Buffer a child task whose arguments hold the handles ``refs``
        (their tasks become its dependencies)."""
        while True:
            with self._lock:
                self._raise_error()
                deps: list[int] = []
                unwritten: Child | None = None
                for ref in refs:
                    if ref._id is not None:
                        deps.append(ref._id)
                    elif id(ref) in self._index and self._handles[self._index[id(ref)]] is ref:
                        deps.append(-(self._index[id(ref)] + 1))  # in this batch
                    else:
                        unwritten = ref  # in a batch being written, or another attempt's
                        break
                if unwritten is None:
                    task.deps = deps
                    now = time.monotonic()
                    first = not self._pending
                    if first:
                        self._first_at = now
                    self._last_at = now
                    self._index[id(handle)] = len(self._pending)
                    self._pending.append(task)
                    self._handles.append(handle)
                    full = len(self._pending) >= FLUSH_COUNT
                    batch = self._batch
                    break
            # Outside the lock: its batch is written first (this waits for it).
            unwritten.id  # noqa: B018
        if full:
            self.flush()
        elif first:
            _writer.schedule(self, batch, now + FLUSH_QUIET)

    def owns(self, handle: Child) -> bool:
        """Whether ``handle`` waits in the batch being collected."""
        with self._lock:
            place = self._index.get(id(handle))
            return place is not None and self._handles[place] is handle

    def flush(self) -> None:
        """Write the buffered children now, in one transaction fenced by this
        attempt; raise the error of a background write if one failed since."""
        with self._writing:
            self._write_batch()
        with self._lock:
            self._raise_error()

    def close(self) -> None:
        """The attempt has ended (before its outcome is reported): write what
        is still buffered. After a failure too: the children the background
        writer took are in the store already, so the others are written as
        well, and the attempt leaves every child it submitted, not a part
        (a retry finds them all by number). An error here is not the
        attempt's: its own outcome is what gets recorded."""
        try:
            with self._writing:
                self._write_batch()
        except Exception as exc:
            log.warning(
                "task %s: the children it submitted last were not written: %s", self.task_id, exc
            )

    def _raise_error(self) -> None:
        # Called with _lock held: a background write's error, raised once.
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _write_batch(self) -> None:
        """Write the batch collected so far (the caller holds ``_writing``)."""
        with self._lock:
            pending, handles = self._pending, self._handles
            if not pending:
                return
            # A new batch starts: children added from now on (while this one is
            # written) are numbered in it, and name this one's by id.
            self._pending, self._handles, self._index = [], [], {}
            self._batch += 1
        try:
            _, ids = self.runtime.store.submit(pending, parent=(self.task_id, self.fence))
        except BaseException as exc:
            for handle in handles:
                handle._fail(exc)
            raise
        for handle, task_id in zip(handles, ids, strict=True):
            handle._bind(task_id)

    def _write_due(self, batch: int) -> float | None:
        """The background writer's visit for batch ``batch``: write it if it
        is due; return when to come back, or None when done."""
        if not self._writing.acquire(blocking=False):
            # The attempt's thread is writing: the batch it took may be an
            # older one, so look again shortly.
            return time.monotonic() + FLUSH_QUIET
        try:
            with self._lock:
                if self._batch != batch or not self._pending:
                    return None  # written already
                now = time.monotonic()
                due = min(self._last_at + FLUSH_QUIET, self._first_at + FLUSH_AGE)
                if now < due:
                    return due  # children are still coming: let the batch grow
            try:
                self._write_batch()
            except Exception as exc:
                with self._lock:
                    if self._error is None:
                        self._error = exc
            return None
        finally:
            self._writing.release()

    def blocking(self) -> _Blocking:
        return _Blocking(self)

    @property
    def state(self) -> State:
        """The state of this task's run: keys under ``<app>/runs/<run_id>/``.

        Writes through it (like every state write and message sent from inside
        the attempt) carry the attempt's fence.
        """
        return State(self.runtime.store, f"{self.runtime.name}/", offload=self.runtime.objects).run(
            self.run_id
        )


class _Blocking:
    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx

    def __enter__(self) -> None:
        if self.ctx.on_block is not None:
            self.ctx.on_block(True)

    def __exit__(self, *exc: Any) -> None:
        if self.ctx.on_block is not None:
            self.ctx.on_block(False)


_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "accord_task", default=None
)


def current() -> TaskContext | None:
    """The running task attempt's context, or ``None`` outside a task."""
    return _current.get()


_Token = tuple[contextvars.Token[TaskContext | None], contextvars.Token[_attempt.Attempt | None]]


def enter(ctx: TaskContext) -> _Token:
    """Make ``ctx`` the running attempt (its fence reaches state and messaging)."""
    attempt = _attempt.Attempt(ctx.runtime.store_url, ctx.task_id, ctx.fence)
    return _current.set(ctx), _attempt.enter(attempt)


def leave(token: _Token) -> None:
    mine, fence = token
    _attempt.leave(fence)
    _current.reset(mine)


# While children wait for the background writer, the interpreter switches
# threads this often (seconds) instead of every 5 ms (see _Writer).
WRITE_SWITCH_INTERVAL = 0.0002


class _Writer:
    """The background writer of buffered children: one thread per process,
    started when first needed, visiting attempts' batches when they are due.

    A parent that computes in Python holds the GIL, and gives it up only when
    the switch interval (5 ms by default) ends; the writer needs it back to
    wake up and after each of the dozen statements of a write (the driver
    lets go of it for each), so a write would take tens of milliseconds. While
    batches wait, the interval is therefore shortened, and put back as it was
    once none waits (only the writer changes it, under its lock).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, TaskContext, int]] = []  # heap: when, order, ...
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._switch_interval: float | None = None  # the one to put back

    def schedule(self, ctx: TaskContext, batch: int, at: float) -> None:
        with self._cond:
            if self._switch_interval is None:
                self._switch_interval = sys.getswitchinterval()
                sys.setswitchinterval(min(self._switch_interval, WRITE_SWITCH_INTERVAL))
            heapq.heappush(self._due, (at, next(self._order), ctx, batch))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="accord-children", daemon=True
                )
                self._thread.start()
            if self._due[0][2] is ctx:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    if self._due and self._due[0][0] <= now:
                        _, _, ctx, batch = heapq.heappop(self._due)
                        break
                    self._cond.wait(self._due[0][0] - now if self._due else None)
            try:
                again = ctx._write_due(batch)
            except Exception:  # never let one attempt stop the others' writes
                log.exception("writing the children of task %s failed", ctx.task_id)
                again = None
            if again is not None:
                self.schedule(ctx, batch, again)
            with self._cond:
                if not self._due and self._switch_interval is not None:
                    sys.setswitchinterval(self._switch_interval)
                    self._switch_interval = None


_writer = _Writer()


def _after_fork() -> None:
    # A forked child has none of its parent's threads: it starts its own writer.
    global _writer
    _writer = _Writer()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
