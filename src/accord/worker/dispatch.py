"""What a node claims and starts: prefetch, free capacity, urgent work first.

A node holds its slots' tasks plus about ``PREFETCH_SECONDS`` of work queued
here, starts queued tasks on free slots in priority order (skipping those
whose resources are not free yet), and learns the mean task duration and its
speed v = size / time from what finished.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from accord.hooks import TaskEvent
from accord.scheduling.policy import NodeSpec, fits
from accord.store.records import ClaimedTask, Completion, Outcome
from accord.tasks.registry import Runtime
from accord.worker.pool import Pool

# Claim enough tasks to keep the slots busy for about this long, so that
# short tasks are claimed many per commit and long ones one by one.
PREFETCH_SECONDS = 0.02
MAX_PREFETCH = 512
MIN_PRIORITY = -(2**63)


class Dispatch:
    """The claiming and starting part of a :class:`~accord.worker.node.Node`."""

    runtime: Runtime
    node_id: int | None
    slots: int
    spec: NodeSpec
    _stop: threading.Event
    _avg_duration: float | None

    if TYPE_CHECKING:

        def _cut_off(self) -> bool: ...

    def _target(self) -> int:
        """How many tasks to hold: the slots, plus ~20 ms of work queued."""
        if self._stop.is_set():
            return 0
        avg = self._avg_duration
        if avg is None:
            return self.slots
        extra = int(PREFETCH_SECONDS / max(avg, 1e-5)) * self.slots
        return self.slots + min(extra, MAX_PREFETCH)

    @staticmethod
    def _holding(
        held: dict[int, ClaimedTask], finishing: set[int], pool: Pool, urgent_level: int | None
    ) -> list[ClaimedTask]:
        """The held tasks that take capacity from a claim: all of them but
        those finishing in this commit (their dependents can be claimed in the
        same commit); for an urgent claim, only those running or at least as
        important as the urgent work, since it goes ahead of the rest queued
        here (the prefetched backlog must not crowd it out)."""
        if urgent_level is None:
            return [t for t in held.values() if t.id not in finishing]
        running = {t.id for t in pool.running()}
        return [
            t
            for t in held.values()
            if t.id not in finishing and (t.id in running or t.priority >= urgent_level)
        ]

    def _free(
        self, tasks: Iterable[ClaimedTask], pool: Pool, scale: float = 1.0
    ) -> dict[str, float]:
        """Capacity (times ``scale``) not taken by ``tasks``; a task that waits
        on another lends its share meanwhile.

        Claims use the capacity scaled by the prefetch factor, so that short
        tasks can queue here while long ones are claimed only as they fit.
        """
        free = {kind: amount * scale for kind, amount in self.spec.capacity.items()}
        lent = pool.blocked()
        for task in tasks:
            if task.id in lent:
                continue
            for kind, amount in task.needs.items():
                free[kind] = free.get(kind, 0.0) - amount
        return free

    def _dispatch(
        self,
        pool: Pool,
        waiting: deque[ClaimedTask],
        dispatched: dict[int, float],
        now: float,
        floor: int = MIN_PRIORITY,
    ) -> None:
        """Start queued tasks on free slots, in order, skipping those whose
        resources are not free yet (smaller tasks go ahead meanwhile), and
        none of a priority below ``floor``."""
        if self._cut_off():
            return  # their leases may be gone: start nothing until a heartbeat passes
        if not waiting or pool.free() <= 0:
            return
        free = self._free(pool.running(), pool)
        skipped: list[ClaimedTask] = []
        while waiting and pool.free() > 0 and waiting[0].priority >= floor:
            task = waiting.popleft()
            if not fits(task.needs, free):
                skipped.append(task)
                continue
            for kind, amount in task.needs.items():
                free[kind] = free.get(kind, 0.0) - amount
            dispatched[task.id] = now
            pool.start(task)
            self._tell("task_started", task)
        waiting.extendleft(reversed(skipped))

    def _tell(self, method: str, task: ClaimedTask) -> None:
        """Tell the app's hooks that this node claimed or started ``task``."""
        hooks = self.runtime.hooks
        if hooks.wants(method):
            event = TaskEvent(
                task.id,
                task.run_id,
                task.name,
                self.runtime.name,
                self.runtime.store.now(),
                node_id=self.node_id,
                attempt=task.attempt,
            )
            hooks.emit(method, event)

    def _learn(
        self,
        finished: list[Completion],
        dispatched: dict[int, float],
        held: dict[int, ClaimedTask],
        now: float,
    ) -> None:
        """Update the mean task duration (for prefetch) and the speed v = size / time."""
        for completion in finished:
            sent = dispatched.pop(completion.task_id, None)
            if sent is None:
                continue
            took = max(completion.duration or (now - sent), 1e-6)
            avg = self._avg_duration
            self._avg_duration = took if avg is None else 0.9 * avg + 0.1 * took
            task = held.get(completion.task_id)
            if task is not None and task.size > 0 and completion.outcome is Outcome.OK:
                self.spec.speed = 0.9 * self.spec.speed + 0.1 * (task.size / took)
