"""Recording results as a node stops, and rows the store refuses as bad data.

The node's loop records results in the same commit as its next claim; these
are the paths beside it: a stopping node hands back what has not started and
records what finishes within its grace, and a batch the store refuses as bad
data is recorded row by row, a bad row as a failed attempt saying why.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from accord.errors import StoreError, StoreUnavailableError, UnstorableError
from accord.store.records import ClaimedTask, Completion
from accord.tasks.registry import Runtime
from accord.worker.execute import unstorable
from accord.worker.pool import Pool

log = logging.getLogger("accord.node")


class Recording:
    """The result-recording part of a :class:`~accord.worker.node.Node`."""

    runtime: Runtime
    node_id: int | None
    lease_ttl: float
    grace: float
    executed: int
    fenced: int
    heartbeat_interval: float
    _hard_stop: threading.Event

    if TYPE_CHECKING:

        def _heartbeat(
            self, pool: Pool, held: dict[int, ClaimedTask], waiting: deque[ClaimedTask]
        ) -> None: ...

        def _why_lost(self, task_ids: list[int]) -> dict[int, str]: ...

    def _drain(
        self,
        pool: Pool,
        held: dict[int, ClaimedTask],
        waiting: deque[ClaimedTask],
        done: list[Completion],
    ) -> None:
        """Hand back what has not started, let running tasks finish within the grace."""
        store = self.runtime.store
        assert self.node_id is not None
        store.release(self.node_id, [(t.id, t.fence) for t in waiting])
        for task in waiting:
            held.pop(task.id, None)
        waiting.clear()
        grace = 0.0 if self._hard_stop.is_set() else self.grace
        deadline = time.monotonic() + grace
        next_heartbeat = time.monotonic()
        while pool.active() and time.monotonic() < deadline and not self._hard_stop.is_set():
            # The grace may be longer than a lease: keep the running attempts'
            # leases alive (and learn of any lost meanwhile) as the loop does.
            if time.monotonic() >= next_heartbeat:
                self._heartbeat(pool, held, waiting)
                next_heartbeat = time.monotonic() + self.heartbeat_interval
            done.extend(pool.wait(0.05))
            if done:
                self._record(done, held)
                done.clear()
        done.extend(pool.wait(0))
        if done:
            self._record(done, held)
        unfinished = [(t.id, t.fence) for t in held.values()]
        for task_id, _ in unfinished:
            pool.kill(task_id)
        store.release(self.node_id, unfinished)

    def _record(self, done: list[Completion], held: dict[int, ClaimedTask]) -> None:
        """Record ``done`` (claiming nothing) while stopping; a store that is
        down raises, a bad row is set apart as in the loop."""
        assert self.node_id is not None
        try:
            self.runtime.store.exchange(
                self.node_id, done, queue=self.runtime.name, claim=0, lease_ttl=self.lease_ttl
            )
        except UnstorableError as exc:
            left = self._record_apart(done, held, exc)
            if left:
                raise StoreUnavailableError(
                    f"could not record {len(left)} result(s) while stopping: the store became "
                    "unreachable"
                ) from exc
        for completion in done:
            held.pop(completion.task_id, None)

    def _record_apart(
        self, done: list[Completion], held: dict[int, ClaimedTask], why: UnstorableError
    ) -> list[Completion]:
        """The store refused a batch of results as bad data: some row holds
        what this store cannot hold (text its encoding lacks, say). Record
        them one by one, so that the good ones go in and a bad one is recorded
        as a failed attempt saying why; never resend the batch as if the store
        were down. Returns the rows left for later if the store does go down
        meanwhile."""
        log.warning(
            "the store refused a batch of %d result(s) as bad data (%s); recording them one by one",
            len(done),
            why,
        )
        for position, completion in enumerate(done):
            try:
                accepted = self._record_one(completion)
            except StoreError as exc:
                log.warning("store unavailable, retrying later: %s", exc)
                return done[position:]
            held.pop(completion.task_id, None)
            self.executed += 1
            if not accepted:
                self.fenced += 1
                reason = self._why_lost([completion.task_id]).get(completion.task_id, "lease lost")
                log.warning("completion of task %d refused: %s", completion.task_id, reason)
        return []

    def _record_one(self, completion: Completion) -> bool:
        assert self.node_id is not None
        store = self.runtime.store
        try:
            (accepted,), _ = store.exchange(
                self.node_id,
                [completion],
                queue=self.runtime.name,
                claim=0,
                lease_ttl=self.lease_ttl,
            )
            return accepted
        except UnstorableError as exc:
            refused = exc
        log.warning("task %d: its outcome is refused by the store: %s", completion.task_id, refused)
        fallback = unstorable(completion, refused)
        try:
            (accepted,), _ = store.exchange(
                self.node_id, [fallback], queue=self.runtime.name, claim=0, lease_ttl=self.lease_ttl
            )
            return accepted
        except UnstorableError as exc:
            # Even ASCII text is refused: the fault is not in this row's data.
            raise StoreError(
                f"the store refuses to record any outcome for task {completion.task_id}: {exc}"
            ) from exc
