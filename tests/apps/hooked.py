"""An app with a hook that records what it is told (tests/test_hooks.py).

The hook is added where the app is made, so the task options it declares
are known when the tasks below are defined.
"""

from __future__ import annotations

import threading
from typing import Any

import accord
from accord.hooks import Hook


def _severity(value: Any) -> str:
    if value not in ("page", "ticket"):
        raise ValueError(f"alert must be 'page' or 'ticket', not {value!r}")
    return str(value)


class Recorder(Hook):
    """Keeps every event, as (method, event), in the order told."""

    options = {"alert": _severity}

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, Any]] = []

    def _keep(self, method: str, event: Any) -> None:
        with self.lock:
            self.seen.append((method, event))

    def of(self, task_id: int) -> list[str]:
        """The methods told of task ``task_id``, in order."""
        with self.lock:
            return [m for m, e in self.seen if getattr(e, "task_id", None) == task_id]

    def events(self, method: str) -> list[Any]:
        with self.lock:
            return [e for m, e in self.seen if m == method]

    def task_claimed(self, event: Any) -> None:
        self._keep("task_claimed", event)

    def task_started(self, event: Any) -> None:
        self._keep("task_started", event)

    def task_succeeded(self, event: Any) -> None:
        self._keep("task_succeeded", event)

    def task_failed(self, event: Any) -> None:
        self._keep("task_failed", event)

    def task_retried(self, event: Any) -> None:
        self._keep("task_retried", event)

    def lease_lost(self, event: Any) -> None:
        self._keep("lease_lost", event)

    def write_refused(self, event: Any) -> None:
        self._keep("write_refused", event)

    def node_lost(self, event: Any) -> None:
        self._keep("node_lost", event)

    def run_ended(self, event: Any) -> None:
        self._keep("run_ended", event)


recorder = Recorder()
app = accord.App("hooked", hooks=[recorder])


@app.task(alert="page")
def add(a: int, b: int) -> int:
    return a + b


@app.task(retries=1, backoff=0.05)
def always_fails() -> None:
    raise RuntimeError("this task always fails")


@app.workflow
def total(n: int) -> int:
    return sum(add(i, i) for i in range(n))


@app.workflow
def forwards(n: int) -> accord.Handle[int]:
    """Returns a handle: it succeeds with the child's result."""
    return add.submit(n, n)
