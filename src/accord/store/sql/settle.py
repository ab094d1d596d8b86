"""How tasks end and what follows: failures, forwards, dependents, runs, cancels.

When a task ends, :meth:`Settling._settle` propagates the end to the tasks
waiting on it, a generation at a time; :meth:`Settling._finish_runs` closes
the runs that have no open task left. Cancelling tasks and runs is here too:
a cancel is one more way for a task to end."""

from __future__ import annotations

from accord.errors import NotFoundError
from accord.hooks import RunEvent
from accord.store.sql.core import _OPEN_STATES, TASK_ROW, SqlBase, _Tx


class Settling(SqlBase):
    """Ending tasks and runs, and propagating the ends."""

    def _fail(
        self,
        tx: _Tx,
        task_id: int,
        run_id: int,
        error: str | None,
        error_type: str | None,
        traceback: str | None,
        *,
        node_id: int | None = None,
        duration: float | None = None,
    ) -> None:
        row = tx.c.execute(
            "UPDATE tasks SET state = 'failed', finished_at = ?, lease_expires_at = NULL, "
            f"error = ?, error_type = ?, traceback = ? WHERE id = ? RETURNING {TASK_ROW}",
            (tx.now, error, error_type, traceback, task_id),
        ).fetchone()
        tx.touched.add(run_id)
        self._event(tx, "failed", run_id, task_id, error)
        self._tell_task(
            tx,
            "task_failed",
            row,
            node_id=node_id,
            duration=duration,
            error=error,
            error_type=error_type,
        )
        self._settle(tx, [(task_id, "failed")])

    def _forward(self, tx: _Tx, task_id: int, target: int) -> None:
        c = tx.c
        row = c.execute(
            "SELECT state, result, error, error_type, traceback FROM tasks "
            f"WHERE id = ?{self.share}",
            (target,),
        ).fetchone()
        if row is None:
            c.execute(
                "UPDATE tasks SET state = 'failed', finished_at = ?, error = ? WHERE id = ?",
                (tx.now, f"returned a handle to task {target}, which does not exist", task_id),
            )
            self._settle(tx, [(task_id, "failed")])
            return
        state = row[0]
        if state in ("succeeded", "failed", "cancelled"):
            c.execute(
                "UPDATE tasks SET state = ?, result = ?, error = ?, error_type = ?, "
                "traceback = ?, finished_at = ?, lease_expires_at = NULL, forward_to = ? "
                "WHERE id = ?",
                (state, row[1], row[2], row[3], row[4], tx.now, target, task_id),
            )
            self._settle(tx, [(task_id, state)])
            return
        c.execute(
            "INSERT INTO deps (task_id, pos, dep_id) VALUES (?, -1, ?) "
            "ON CONFLICT (task_id, pos) DO UPDATE SET dep_id = excluded.dep_id",
            (task_id, target),
        )
        c.execute(
            "UPDATE tasks SET state = 'pending', deps_remaining = 1, forward_to = ?, "
            "lease_expires_at = NULL WHERE id = ?",
            (target, task_id),
        )

    def _settle(self, tx: _Tx, ended: list[tuple[int, str]]) -> None:
        """Propagate tasks' ends to the tasks that wait on them, a generation
        at a time: one query finds every waiting task of a generation."""
        c = tx.c
        while ended:
            states = dict(ended)
            ended = []
            where, param = self._ids_in("d.dep_id", list(states))
            rows = c.execute(
                "SELECT d.dep_id, t.id, t.run_id, t.deps_remaining, t.forward_to FROM deps d "
                f"JOIN tasks t ON t.id = d.task_id WHERE {where} AND t.state = 'pending' "
                f"ORDER BY t.id, d.pos{self.lock_t}",
                (param,),
            ).fetchall()
            left: dict[int, int] = {}  # waiting tasks' new counts of unfinished dependencies
            moved: set[int] = set()  # tasks no longer pending
            for done_id, dep_id, run_id, remaining, forward_to in rows:
                if dep_id in moved:
                    continue
                tx.touched.add(run_id)
                done_state = states[done_id]
                remaining = left.get(dep_id, remaining)
                if done_state == "succeeded" and remaining > 1:
                    left[dep_id] = remaining - 1
                    continue
                left.pop(dep_id, None)
                moved.add(dep_id)
                if done_state == "succeeded" and forward_to == done_id:
                    # A task that returned a handle succeeds with its result.
                    row = c.execute(
                        "UPDATE tasks SET state = 'succeeded', deps_remaining = 0, "
                        "finished_at = ?, result = (SELECT result FROM tasks WHERE id = ?) "
                        f"WHERE id = ? RETURNING {TASK_ROW}",
                        (tx.now, done_id, dep_id),
                    ).fetchone()
                    self._tell_task(tx, "task_succeeded", row)
                    ended.append((dep_id, "succeeded"))
                elif done_state == "succeeded":
                    tx.work = True
                    c.execute(
                        "UPDATE tasks SET state = 'ready', deps_remaining = 0, "
                        f"ready_at = {self.greatest}(ready_at, ?) WHERE id = ?",
                        (tx.now, dep_id),
                    )
                elif forward_to == done_id:
                    row = c.execute(
                        "UPDATE tasks SET (state, error, error_type, traceback) = "
                        "(SELECT state, error, error_type, traceback FROM tasks WHERE id = ?), "
                        f"finished_at = ? WHERE id = ? RETURNING {TASK_ROW}, error, error_type",
                        (done_id, tx.now, dep_id),
                    ).fetchone()
                    if done_state == "failed":
                        self._tell_task(tx, "task_failed", row[:5], error=row[5], error_type=row[6])
                    ended.append((dep_id, done_state))
                else:
                    name = c.execute("SELECT name FROM tasks WHERE id = ?", (done_id,)).fetchone()
                    c.execute(
                        "UPDATE tasks SET state = 'cancelled', finished_at = ?, error = ? "
                        "WHERE id = ?",
                        (tx.now, f"dependency task {done_id} ({name[0]}) {done_state}", dep_id),
                    )
                    ended.append((dep_id, "cancelled"))
            if left:
                c.executemany(
                    "UPDATE tasks SET deps_remaining = ? WHERE id = ?",
                    [(count, dep_id) for dep_id, count in left.items()],
                )

    def _finish_runs(self, tx: _Tx) -> None:
        """Close the runs touched by this transaction that have no open task left.

        Transactions that end tasks of one run concurrently must not each see
        the other's task still open and both leave the run running. The open
        task that keeps a run going is read with a share lock, so it cannot
        end before this transaction commits (whoever ends it then sees this
        transaction's work), skipping tasks that other transactions are
        changing right now; when none is left, the run row is locked, so the
        last of those transactions decides after the others, with a fresh read.
        On SQLite the one writer holds the database and no lock is needed.
        """
        c = tx.c
        for run_id in sorted(tx.touched):
            # A ready task is locked only when nothing else keeps the run open:
            # claimers skip what is locked, and would pass it over.
            row = c.execute(
                "SELECT r.state, t.state, EXISTS (SELECT 1 FROM tasks o WHERE o.run_id = r.id "
                f"AND o.state IN ('pending', 'running') LIMIT 1{self.share_skip_locked}) "
                "OR EXISTS (SELECT 1 FROM tasks o WHERE o.run_id = r.id "
                f"AND o.state = 'ready' LIMIT 1{self.share_skip_locked}) "
                "FROM runs r LEFT JOIN tasks t ON t.id = r.root_task_id WHERE r.id = ?",
                (run_id,),
            ).fetchone()
            if row is None or row[0] != "running":
                continue
            if row[1] not in ("failed", "cancelled") and row[2]:
                continue  # the usual case: the run goes on
            run = c.execute(
                f"SELECT root_task_id FROM runs WHERE id = ? AND state = 'running'{self.lock}",
                (run_id,),
            ).fetchone()
            if run is None:
                continue
            root_id = run[0]
            # Read again after the lock: what committed meanwhile counts.
            root_state, root_error, still_open = c.execute(
                "SELECT (SELECT state FROM tasks WHERE id = ?), "
                "(SELECT error FROM tasks WHERE id = ?), "
                f"EXISTS (SELECT 1 FROM tasks WHERE run_id = ? AND state IN {_OPEN_STATES})",
                (root_id, root_id, run_id),
            ).fetchone()
            if root_state in ("failed", "cancelled"):
                # The workflow itself ended without a value: stop what it started.
                # A workflow cancelled through a failure (its value was to be a
                # failed task's result, or a dependent's) ends its run failed.
                state = root_state
                if state == "cancelled":
                    failed = c.execute(
                        "SELECT 1 FROM tasks WHERE run_id = ? AND state = 'failed' LIMIT 1",
                        (run_id,),
                    ).fetchone()
                    state = "failed" if failed else state
                reason = f"run {run_id} {state}: task {root_id} {root_state}"
                open_ids = [
                    row[0]
                    for row in c.execute(
                        f"SELECT id FROM tasks WHERE run_id = ? AND state IN {_OPEN_STATES}",
                        (run_id,),
                    )
                ]
                for task_id in open_ids:
                    self._cancel_one(tx, task_id, reason)
                self._end_run(tx, run_id, state, root_error)
                continue
            if still_open:
                continue
            if root_id is not None:
                state, error = root_state, root_error
            else:
                counts = dict(
                    c.execute(
                        "SELECT state, count(*) FROM tasks WHERE run_id = ? GROUP BY state",
                        (run_id,),
                    ).fetchall()
                )
                state = (
                    "failed"
                    if counts.get("failed")
                    else "cancelled"
                    if counts.get("cancelled")
                    else "succeeded"
                )
                error = None if state == "succeeded" else f"{counts.get(state)} task(s) {state}"
            self._end_run(tx, run_id, state, error)

    def _end_run(self, tx: _Tx, run_id: int, state: str, error: str | None) -> None:
        tx.c.execute(
            "UPDATE runs SET state = ?, finished_at = ?, error = ? WHERE id = ?",
            (state, tx.now, error, run_id),
        )
        self._event(tx, f"run_{state}", run_id, None, error)
        self._tell_run(tx, run_id, state, error)

    def _tell_run(self, tx: _Tx, run_id: int, state: str, error: str | None) -> None:
        if self.hooks.wants("run_ended"):
            tx.tell.append(("run_ended", RunEvent(run_id, state, tx.now, error)))

    # -- control ----------------------------------------------------------
    def _cancel_one(self, tx: _Tx, task_id: int, reason: str) -> bool:
        tx.news = True
        row = tx.c.execute(
            "UPDATE tasks SET state = 'cancelled', finished_at = ?, error = ?, "
            f"lease_expires_at = NULL WHERE id = ? AND state IN {_OPEN_STATES} RETURNING run_id",
            (tx.now, reason, task_id),
        ).fetchone()
        if row is None:
            return False
        tx.touched.add(row[0])
        self._settle(tx, [(task_id, "cancelled")])
        return True

    def cancel_tasks(self, task_ids: list[int], reason: str) -> int:
        def body(tx: _Tx) -> int:
            for task_id in task_ids:
                if tx.c.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone() is None:
                    raise NotFoundError(f"task {task_id} does not exist", task_id=task_id)
            count = 0
            for task_id in task_ids:
                # Record only what was cancelled here, under its run (so that
                # events(run_id) shows it); an ended task is left as it is.
                if self._cancel_one(tx, task_id, reason):
                    count += 1
                    (run_id,) = tx.c.execute(
                        "SELECT run_id FROM tasks WHERE id = ?", (task_id,)
                    ).fetchone()
                    self._event(tx, "cancelled", run_id, task_id, reason)
            self._finish_runs(tx)
            return count

        return self._write(body)

    def cancel_run(self, run_id: int, reason: str) -> int:
        def body(tx: _Tx) -> int:
            if tx.c.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                raise NotFoundError(f"run {run_id} does not exist", run_id=run_id)
            open_ids = [
                row[0]
                for row in tx.c.execute(
                    f"SELECT id FROM tasks WHERE run_id = ? AND state IN {_OPEN_STATES} "
                    "ORDER BY id",
                    (run_id,),
                )
            ]
            count = sum(self._cancel_one(tx, task_id, reason) for task_id in open_ids)
            self._event(tx, "run_cancel", run_id, None, reason)
            self._finish_runs(tx)
            return count

        return self._write(body)
