"""The running task attempt's fence, as state and messaging need it.

A task attempt holds its task by a lease; once the lease is lost (the node
stopped heartbeating, another node took the task over), writes made on the
attempt's behalf must be refused. The worker enters the attempt here when it
starts running it, and every state write and message sent from inside it
carries ``(task id, fence)``, which the store checks in the same transaction.
This is the one context variable through which that fence travels: the
state and messaging layers read it without knowing about tasks.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Attempt:
    """The running attempt: its store, task and fence."""

    store_url: str
    task_id: int
    fence: int


_current: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar(
    "accord_attempt", default=None
)


def fence_for(store_url: str) -> tuple[int, int] | None:
    """``(task id, fence)`` of the running attempt if it uses the store at
    ``store_url``, else ``None``: writes made with it are refused once the
    attempt has lost its lease."""
    attempt = _current.get()
    if attempt is None or attempt.store_url != store_url:
        return None
    return attempt.task_id, attempt.fence


def enter(attempt: Attempt) -> contextvars.Token[Attempt | None]:
    return _current.set(attempt)


def leave(token: contextvars.Token[Attempt | None]) -> None:
    _current.reset(token)
