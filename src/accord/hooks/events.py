"""What a hook is told: one small record per kind of event.

Times are the store's clock (seconds since the epoch), the same clock as
``accord events`` shows; fields the teller does not know are ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """A task attempt was claimed, started, succeeded, failed, retried, or
    lost its lease.

    ``options`` holds the task's values of the options that the hooks of its
    app declare (see :attr:`accord.hooks.Hook.options`), where the task is
    registered in this process; otherwise it is empty.
    """

    task_id: int
    run_id: int
    name: str
    queue: str
    at: float
    node_id: int | None = None
    attempt: int | None = None
    duration: float | None = None
    error: str | None = None
    error_type: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunEvent:
    """A run ended: ``state`` is ``succeeded``, ``failed`` or ``cancelled``."""

    run_id: int
    state: str
    at: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class NodeEvent:
    """A node was marked lost: no heartbeat for longer than its lease."""

    node_id: int
    name: str
    at: float
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class RefusedWrite:
    """The store refused a write made on behalf of a task attempt whose
    lease is gone (a stale fence): a state write, a message, a child task or
    the attempt's own result. Nothing of it was written."""

    task_id: int
    fence: int
    what: str
    at: float
