"""The hook interface: what the node and the store tell plugins.

Subclass :class:`Hook` and override the methods for the events you need;
the others cost nothing. Register it with ``app.hooks.add(hook)`` (or
``App(hooks=[...])``). Metrics, alerts, tracing and the dashboard's live
feed are hooks; the kernel knows none of them.

Who tells what, in the process where it happens:

- the node: ``task_claimed`` (its claim committed), ``task_started`` (a
  slot began the attempt);
- the store, after the transaction that recorded it commits:
  ``task_succeeded``, ``task_failed``, ``task_retried``, ``lease_lost`` (an
  expired lease taken back from a node that died or hung), ``node_lost``,
  ``run_ended``;
- the store, as it refuses it: ``write_refused`` (a stale fence).

Each event is told once, by the process whose commit made it true: a node's
hooks hear of the tasks it ran, the sweeps it made and the runs its commits
ended; a process that cancels a run hears that it ended. Hooks run on the
thread that tells them, so they must be quick: hand slow work (an HTTP call)
to a queue. A hook that raises is logged and never stops the teller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from accord.hooks.events import NodeEvent, RefusedWrite, RunEvent, TaskEvent

OptionCheck = Callable[[Any], Any]
"""Checks a task option's value: returns the value to keep, or raises
(``ValueError``, ``TypeError``, ``accord.ConfigError``) saying what is wrong."""


class Hook:
    """Base class of hooks; every method is a no-op until overridden.

    ``options`` declares the task options this hook adds, by name, each with
    the function that checks its value: ``@app.task(alert="pager")`` is
    accepted once a hook declaring ``alert`` is added to the app, and the
    task's value reaches the hook as ``event.options["alert"]``.
    """

    options: ClassVar[Mapping[str, OptionCheck]] = {}

    def task_claimed(self, event: TaskEvent) -> None:
        """A node's claim of the task committed."""

    def task_started(self, event: TaskEvent) -> None:
        """A slot of the node began running the attempt."""

    def task_succeeded(self, event: TaskEvent) -> None:
        """The attempt's result was recorded."""

    def task_failed(self, event: TaskEvent) -> None:
        """The task failed for good (no retries left, or not retryable)."""

    def task_retried(self, event: TaskEvent) -> None:
        """The attempt failed and the task is ready again after its backoff."""

    def lease_lost(self, event: TaskEvent) -> None:
        """The task's lease expired on ``event.node_id`` and was taken back."""

    def write_refused(self, event: RefusedWrite) -> None:
        """A write on behalf of an attempt that lost its lease was refused."""

    def node_lost(self, event: NodeEvent) -> None:
        """A node stopped heartbeating for longer than its lease."""

    def run_ended(self, event: RunEvent) -> None:
        """A run succeeded, failed or was cancelled."""


METHODS = (
    "task_claimed",
    "task_started",
    "task_succeeded",
    "task_failed",
    "task_retried",
    "lease_lost",
    "write_refused",
    "node_lost",
    "run_ended",
)
