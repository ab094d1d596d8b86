"""Handles to submitted tasks and to runs."""

from __future__ import annotations

import time
from typing import Any, Generic, TypeVar

from accord import serde
from accord.errors import TaskCancelled, TaskFailed
from accord.store.base import Store
from accord.store.records import TERMINAL, RunInfo, TaskInfo, TaskResult, TaskState
from accord.tasks import context
from accord.tasks.registry import AppLike, Runtime, as_runtime

R = TypeVar("R")

# A waiter checks the store's change counter (cheap) this often at first and
# backs off to the slower pace while nothing changes.
POLL_FAST = 0.0005
POLL_QUICK = 0.002
POLL_QUICK_FOR = 0.25
POLL_SLOW = 0.02


def wait_until(
    store: Store, check: Any, timeout: float | None, what: str, *, looked: bool = False
) -> Any:
    """Call ``check()`` until it returns non-None, re-checking after store commits.

    ``looked``: the caller has just called ``check()`` (and found nothing),
    having read ``store.changed()`` before it; the first look is skipped
    (on PostgreSQL it is a round trip to the server)."""
    began = time.monotonic()
    deadline = None if timeout is None else began + timeout
    found = None
    if not looked:
        store.changed()
        found = check()
    while found is None:
        pause = POLL_FAST
        while not store.wait_changed(pause):
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{what} did not finish within {timeout} s")
            # Stay quick for a short wait; back off for a long one.
            cap = POLL_SLOW if time.monotonic() - began > POLL_QUICK_FOR else POLL_QUICK
            pause = min(pause * 1.5, cap)
        found = check()
    return found


def outcome(row: TaskResult, name: str, offload: serde.Offload | None = None) -> Any:
    """The value of a finished task, or its error raised."""
    if row.state is TaskState.SUCCEEDED:
        return serde.loads(row.result, offload)
    if row.state is TaskState.CANCELLED:
        raise TaskCancelled(
            f"task {row.id} ({name}) was cancelled: {row.error or 'no reason given'}",
            task_id=row.id,
            reason=row.error,
        )
    raise TaskFailed(
        f"task {row.id} ({name}) failed: {row.error_type or 'Error'}: {row.error}",
        task_id=row.id,
        error_type=row.error_type,
        error=row.error,
        traceback=row.traceback,
    )


class Handle(Generic[R]):
    """A submitted task. Pass it to another task's ``submit`` to make that
    task depend on this one; the dependent then receives its result."""

    __slots__ = ("_error", "_id", "_name", "_owner", "_runtime")

    def __init__(
        self,
        app: AppLike,
        task_id: int | None,
        name: str,
        owner: context.TaskContext | None = None,
    ) -> None:
        self._runtime: Runtime = as_runtime(app)
        self._id = task_id
        self._name = name
        # A child not written yet: the attempt whose batch holds it.
        self._owner = owner
        self._error: BaseException | None = None

    def _bind(self, task_id: int) -> None:
        self._id = task_id
        self._owner = None

    def _fail(self, error: BaseException) -> None:
        """The batch that held this child was not written."""
        self._error = error
        self._owner = None

    @property
    def id(self) -> int:
        """The task's id (writes the submission first if it is still buffered).

        Raises the error that kept it from being written, if one did."""
        if self._id is None and self._owner is not None:
            self._owner.flush()
        if self._id is None:
            if self._error is not None:
                raise self._error
            raise RuntimeError(f"task {self._name} was submitted but not written")
        return self._id

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        shown = self._id if self._id is not None else "unwritten"
        return f"<Handle {self._name} task={shown}>"

    def status(self) -> TaskState:
        return self.info().state

    def info(self) -> TaskInfo:
        return self._runtime.store.task(self.id)

    def done(self) -> bool:
        return self.status().terminal

    def cancel(self, reason: str = "cancelled by user") -> bool:
        """Cancel the task and its dependents; False if it had already ended."""
        return self._runtime.store.cancel_tasks([self.id], reason) > 0

    def result(self, timeout: float | None = None) -> R:
        """Wait for the task and return its value.

        Raises :class:`TaskFailed` if it failed, :class:`TaskCancelled` if it
        was cancelled, and ``TimeoutError`` if ``timeout`` seconds pass first.
        Inside a task, the waiting attempt lends its slot to other tasks.
        """
        task_id = self.id
        store = self._runtime.store

        def check() -> TaskResult | None:
            rows = store.results([task_id])
            if rows and rows[0].state.value in TERMINAL:
                return rows[0]
            return None

        store.changed()  # from here on, a commit wakes the wait below
        row = check()
        if row is None:
            what = f"task {task_id}"
            ctx = context.current()
            if ctx is not None:
                ctx.flush()
                with ctx.blocking():
                    row = wait_until(store, check, timeout, what, looked=True)
            else:
                row = wait_until(store, check, timeout, what, looked=True)
        value: R = outcome(row, self._name, self._runtime.objects)
        return value


class Run:
    """A run: the tasks started by one ``app.start`` or one top-level submit."""

    __slots__ = ("_runtime", "id")

    def __init__(self, app: AppLike, run_id: int) -> None:
        self._runtime: Runtime = as_runtime(app)
        self.id = run_id

    def __repr__(self) -> str:
        return f"<Run {self.id}>"

    def info(self) -> RunInfo:
        return self._runtime.store.run(self.id)

    def status(self) -> str:
        return self.info().state

    def tasks(self) -> list[TaskInfo]:
        return self._runtime.store.tasks(self.id)

    def cancel(self, reason: str = "cancelled by user") -> int:
        """Cancel every open task of the run; return how many were cancelled."""
        return self._runtime.store.cancel_run(self.id, reason)

    def wait(self, timeout: float | None = None, *, progress: bool = False) -> Any:
        """Wait until every task of the run has ended; return the run's value.

        The value is the root task's (the workflow's) value; a run without a
        root (``Task.map``) returns the list of its tasks' values. Raises like
        :meth:`Handle.result` when the run failed or was cancelled.
        ``progress=True`` shows a progress bar of the run's tasks meanwhile
        (on stderr in a terminal, as a widget in a notebook).
        """
        if progress:
            from accord.tasks.progress import follow

            return follow(self, label=f"run {self.id}", timeout=timeout)
        store = self._runtime.store

        def check() -> str | None:
            # Only the state while waiting: counting the run's tasks on every
            # commit would cost the waiter more than the run.
            state = store.run_state(self.id)
            return state if state != "running" else None

        wait_until(store, check, timeout, f"run {self.id}")
        info = store.run(self.id)
        if info.root_task_id is not None:
            root = store.results([info.root_task_id])[0]
            return outcome(root, info.name, self._runtime.objects)
        tasks = store.tasks(self.id)
        rows = store.results([t.id for t in tasks])
        by_id = {row.id: row for row in rows}
        objects = self._runtime.objects
        return [outcome(by_id[t.id], t.name, objects) for t in tasks]

    result = wait
