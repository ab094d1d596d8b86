"""Recording the attempts that nodes finished: success, retry or failure.

:func:`storable` makes what a node reports fit every store; the
:class:`CompleteMixin` methods record each finished attempt (refused if its
fence is stale), schedule retries with :func:`backoff_delay`, and hand the
ends to :mod:`accord.store.sql.settle`."""

from __future__ import annotations

import random

from accord._checks import MAX_ERROR_CHARS, MAX_TRACEBACK_CHARS, clean_text, seconds_or_none
from accord.store.records import (
    Completion,
    Outcome,
)
from accord.store.sql.core import TASK_ROW, _Tx
from accord.store.sql.settle import Settling


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform in [d/2, d], d = base * 2^(n-1)."""
    delay: float = min(cap, base * (2.0 ** max(0, attempt - 1)))
    return delay * (0.5 + random.random() / 2)


def storable(done: Completion) -> Completion:
    """``done`` with what no store (or not every store) can hold made
    storable: NUL and lone surrogates in its texts escaped, overlong texts cut,
    a retry delay that is not a finite number of seconds dropped (the task's
    backoff applies), a handle past 64 bits recorded as a failure."""
    if done.outcome is Outcome.OK:
        return done
    if done.outcome is Outcome.FORWARD:
        target = done.forward_to
        if isinstance(target, int) and _MIN_ID <= target <= _MAX_ID:
            return done
        return Completion(
            done.task_id,
            done.fence,
            Outcome.ERROR,
            error=f"returned a handle to task {clean_text(repr(target), 200)}, which does not "
            "exist",
            error_type="BadHandle",
            retryable=False,
            duration=done.duration,
        )
    error, error_type, trace = done.error, done.error_type, done.traceback
    delay = done.retry_delay
    clean = Completion(
        done.task_id,
        done.fence,
        Outcome.ERROR,
        error=None if error is None else clean_text(str(error), MAX_ERROR_CHARS),
        error_type=None if error_type is None else clean_text(str(error_type), 200),
        traceback=None if trace is None else clean_text(str(trace), MAX_TRACEBACK_CHARS),
        retryable=bool(done.retryable),
        retry_delay=None if delay is None else seconds_or_none(delay),
        duration=done.duration,
    )
    return clean


_MIN_ID, _MAX_ID = -(2**63), 2**63 - 1


class CompleteMixin(Settling):
    """Finished attempts of the node's side."""

    def _complete_all(self, tx: _Tx, node_id: int, completions: list[Completion]) -> list[bool]:
        """Record finished attempts (each is refused if its fence is stale)
        and count them to the node."""
        accepted = [self._complete(tx, done, node_id) for done in completions]
        self._count_completed(tx, node_id, sum(accepted))
        return accepted

    @staticmethod
    def _count_completed(tx: _Tx, node_id: int, count: int) -> None:
        if count:
            tx.c.execute(
                "UPDATE nodes SET completed = completed + ? WHERE id = ?", (count, node_id)
            )

    def _succeeded(
        self,
        tx: _Tx,
        task_id: int,
        run_id: int,
        deadline_at: float | None,
        late: int,
        limit_key: str | None,
    ) -> None:
        tx.touched.add(run_id)
        # Its concurrency limit has room again: new work for the other nodes.
        tx.work = tx.work or limit_key is not None
        if deadline_at is not None and deadline_at < tx.now and not late:
            self._late(tx, task_id, run_id, tx.now - deadline_at, "finished")

    def _complete(self, tx: _Tx, done: Completion, node_id: int | None = None) -> bool:
        c = tx.c
        if done.outcome is Outcome.OK:
            row = c.execute(
                "UPDATE tasks SET state = 'succeeded', result = ?, finished_at = ?, "
                "lease_expires_at = NULL WHERE id = ? AND fence = ? AND state = 'running' "
                f"RETURNING run_id, deadline_at, late, limit_key, {TASK_ROW}",
                (done.result, tx.now, done.task_id, done.fence),
            ).fetchone()
            if row is None:
                self._refused_result(tx, done)
                return False
            self._succeeded(tx, done.task_id, *row[:4])
            self._tell_task(tx, "task_succeeded", row[4:], node_id=node_id, duration=done.duration)
            self._settle(tx, [(done.task_id, "succeeded")])
            return True
        row = c.execute(
            f"SELECT run_id, attempts, max_attempts, backoff, max_backoff, {TASK_ROW} FROM tasks "
            f"WHERE id = ? AND fence = ? AND state = 'running'{self.lock}",
            (done.task_id, done.fence),
        ).fetchone()
        if row is None:
            self._refused_result(tx, done)
            return False
        run_id, attempts, max_attempts, backoff, max_backoff = row[:5]
        tx.touched.add(run_id)
        if done.outcome is Outcome.FORWARD:
            assert done.forward_to is not None
            self._forward(tx, done.task_id, done.forward_to)
        elif done.retryable and attempts < max_attempts:
            delay = done.retry_delay
            if delay is None:
                delay = backoff_delay(attempts, backoff, max_backoff)
            tx.work = True
            c.execute(
                "UPDATE tasks SET state = 'ready', ready_at = ?, node_id = NULL, "
                "lease_expires_at = NULL, error = ?, error_type = ?, traceback = ? WHERE id = ?",
                (tx.now + delay, done.error, done.error_type, done.traceback, done.task_id),
            )
            self._event(tx, "retry", run_id, done.task_id, f"{done.error} (next in {delay:.2f}s)")
            self._tell_task(
                tx,
                "task_retried",
                row[5:],
                node_id=node_id,
                duration=done.duration,
                error=done.error,
                error_type=done.error_type,
            )
        else:
            self._fail(
                tx,
                done.task_id,
                run_id,
                done.error,
                done.error_type,
                done.traceback,
                node_id=node_id,
                duration=done.duration,
            )
            tx.work = True  # a concurrency limit it held may have room now
        return True

    def _refused_result(self, tx: _Tx, done: Completion) -> None:
        self._refused(
            (done.task_id, done.fence),
            f"the result of task {done.task_id} (its lease was lost or it was cancelled)",
            tx.now,
        )
