"""The context of a running task attempt.

Code running inside a task reaches its attempt through :func:`current`. The
context also collects the child tasks the attempt submits: they are written
in batches, each carrying the attempt's fence, and numbered in submission
order so that a re-executed parent finds the children its earlier attempt
made instead of making them twice.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from accord.store.base import NewTask

if TYPE_CHECKING:
    from accord.app import App
    from accord.handles import Handle
    from accord.state import State

# Write buffered children once this many are waiting, or once the oldest has
# waited this long, so nodes can start on them while the parent still runs.
FLUSH_COUNT = 500
FLUSH_AGE = 0.05


@dataclass
class TaskContext:
    """What a task attempt knows about itself (see :func:`current`)."""

    app: App
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
    _pending: list[NewTask] = field(default_factory=list)
    _handles: list[Handle[Any]] = field(default_factory=list)
    _first_at: float = 0.0

    def next_seq(self) -> int:
        seq = self._seq
        self._seq += 1
        return seq

    def add(self, task: NewTask, handle: Handle[Any]) -> int:
        """Buffer a child task; return its index in the current batch."""
        if not self._pending:
            self._first_at = time.monotonic()
        self._pending.append(task)
        self._handles.append(handle)
        index = len(self._pending) - 1
        if len(self._pending) >= FLUSH_COUNT or time.monotonic() - self._first_at > FLUSH_AGE:
            self.flush()
        return index

    def owns(self, handle: Handle[Any]) -> bool:
        return any(h is handle for h in self._handles)

    def flush(self) -> None:
        """Write the buffered children in one transaction fenced by this attempt."""
        if not self._pending:
            return
        pending, handles = self._pending, self._handles
        self._pending, self._handles = [], []
        _, ids = self.app.store.submit(pending, parent=(self.task_id, self.fence))
        for handle, task_id in zip(handles, ids, strict=True):
            handle._bind(task_id)

    def blocking(self) -> _Blocking:
        return _Blocking(self)

    @property
    def state(self) -> State:
        """The state of this task's run: keys under ``<app>/runs/<run_id>/``.

        Writes through it (like every state write and message sent from inside
        the attempt) carry the attempt's fence.
        """
        return self.app.state.run(self.run_id)


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


def fence_for(store_url: str) -> tuple[int, int] | None:
    """``(task id, fence)`` of the running attempt if its app uses the store at
    ``store_url``, else ``None``: writes made with it are refused once the
    attempt has lost its lease."""
    ctx = _current.get()
    if ctx is None or ctx.app.store_url != store_url:
        return None
    return ctx.task_id, ctx.fence


def enter(ctx: TaskContext) -> contextvars.Token[TaskContext | None]:
    return _current.set(ctx)


def leave(token: contextvars.Token[TaskContext | None]) -> None:
    _current.reset(token)
