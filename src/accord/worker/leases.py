"""A node's hold on its tasks: heartbeats, losing a lease, self-fencing.

Every claimed task carries a lease that the node extends by heartbeat. The
heartbeat also says which tasks the node still holds: a task it lost (its
lease expired and another node took it, or it was cancelled) is stopped. A
node that cannot reach the store for ``lease_ttl - heartbeat`` seconds stops
its attempts itself (the watchdog), before another node may take them over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from accord._checks import clean_text
from accord.errors import StoreError
from accord.scheduling.policy import NodeSpec
from accord.store.records import ClaimedTask, Completion, TaskState
from accord.tasks.registry import Runtime
from accord.worker.pool import Pool

log = logging.getLogger("accord.node")

# What a lost task is said to be when the store cannot tell why.
_LOST = "lost (cancelled or lease taken over)"


class Leases:
    """The lease-keeping part of a :class:`~accord.worker.node.Node`."""

    runtime: Runtime
    node_id: int | None
    lease_ttl: float
    heartbeat_interval: float
    spec: NodeSpec
    fenced: int
    _heartbeat_ok: float
    _fence_lock: threading.Lock
    _self_fenced: dict[int, int]

    if TYPE_CHECKING:

        def _find_rank(self) -> None: ...

    def _cut_off(self) -> bool:
        """True when the store has not accepted a heartbeat for so long that
        another node may soon take this node's tasks."""
        return time.monotonic() - self._heartbeat_ok > self.lease_ttl - self.heartbeat_interval

    def _watch(self, pool: Pool, serving: threading.Event) -> None:
        """Self-fencing that does not depend on the node's loop: a store call
        can block for as long as the database is unreachable (or stopped),
        and the attempts must stop before their leases end all the same."""
        while not serving.wait(self.heartbeat_interval / 4):
            if self._self_fenced or not self._cut_off():
                continue
            stopped = pool.fence()
            with self._fence_lock:
                self._self_fenced.update({task.id: task.fence for task in stopped})
            if stopped:
                log.error(
                    "no heartbeat for too long (%.1fs): stopped %d running attempt(s) "
                    "before their leases end",
                    time.monotonic() - self._heartbeat_ok,
                    len(stopped),
                )

    def _hand_back_fenced(
        self, finished: list[Completion], held: dict[int, ClaimedTask]
    ) -> list[Completion]:
        """Attempts the watchdog stopped did not fail: hand them back (if
        their leases were not taken over meanwhile) instead of reporting."""
        with self._fence_lock:
            fenced = self._self_fenced
            back = [(c.task_id, c.fence) for c in finished if fenced.get(c.task_id) == c.fence]
            for task_id, _ in back:
                del fenced[task_id]
        if not back:
            return finished
        for task_id, _ in back:
            held.pop(task_id, None)
        try:
            released = self.runtime.store.release(self.node_id or 0, back)
        except StoreError as exc:
            log.warning("could not hand back stopped attempts: %s", exc)
        else:
            if released < len(back):
                self.fenced += len(back) - released
                log.warning(
                    "%d stopped attempt(s) were lost meanwhile (lease taken over)",
                    len(back) - released,
                )
        gone = {task_id for task_id, _ in back}
        return [c for c in finished if c.task_id not in gone]

    def _heartbeat(
        self, pool: Pool, held: dict[int, ClaimedTask], waiting: deque[ClaimedTask]
    ) -> None:
        assert self.node_id is not None
        # The store extends the leases from its transaction's start (on
        # PostgreSQL, now() is read at BEGIN, before any wait for a row lock),
        # so the lease is measured from before the call: the time of the
        # answer could be seconds later, and a node that counted from it
        # would believe in a lease that has already run out.
        sent = time.monotonic()
        try:
            still = self.runtime.store.heartbeat(
                self.node_id, self.lease_ttl, len(held), speed=self.spec.speed
            )
        except StoreError as exc:
            if self._cut_off():
                # Another node may take these tasks soon: drop them here too (the
                # watchdog stops process slots, but cannot stop slot threads).
                log.error("no heartbeat for too long (%s); stopping all attempts", exc)
                for task_id in list(held):
                    pool.kill(task_id)
                held.clear()
                waiting.clear()
            return
        orphans = [(task_id, fence) for task_id, fence in still.items() if task_id not in held]
        if orphans:
            # Claimed by a commit whose answer was lost (the connection broke
            # during COMMIT): this node never got them. Hand them back now
            # rather than keep their leases alive with every heartbeat.
            log.warning("handing back %d task(s) claimed by a lost commit", len(orphans))
            try:
                self.runtime.store.release(self.node_id, orphans)
            except StoreError as exc:
                log.warning("could not hand back tasks: %s", exc)
        self._heartbeat_ok = sent
        self._find_rank()
        lost = [task_id for task_id, task in held.items() if still.get(task_id) != task.fence]
        why = self._why_lost(lost) if lost else {}
        for task_id in lost:
            task = held[task_id]
            reason = why.get(task_id, _LOST)
            # A cancel is what someone asked for; a lost lease is a fault.
            level = logging.INFO if reason.startswith("cancelled") else logging.WARNING
            log.log(level, "task %d: %s; stopping it", task_id, reason)
            held.pop(task_id)
            if not pool.kill(task_id):
                try:
                    waiting.remove(task)
                except ValueError:
                    pass

    def _why_lost(self, task_ids: list[int]) -> dict[int, str]:
        """What to say of tasks the heartbeat no longer names (one read, on
        this rare path): cancelled (with the reason), or the lease lost."""
        try:
            rows = self.runtime.store.results(task_ids)
        except Exception:  # only the message depends on it: say what is known
            return {}
        # Fault-injection tests count "lease taken over" lines as fenced attempts.
        return {
            row.id: f"cancelled ({clean_text(row.error or 'no reason given', 200)})"
            if row.state is TaskState.CANCELLED
            else "lease lost (lease taken over by another attempt, or expired)"
            for row in rows
        }

    def _work_left(self) -> bool:
        """Whether ready work is left (a read, cheaper than a claim)."""
        try:
            return self.runtime.store.has_ready(self.runtime.name)
        except StoreError:
            return True
