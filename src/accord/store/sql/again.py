"""Running again what ended: a failed or cancelled task with what its end
cancelled (``retry_task``), and a new run with a finished run's arguments
(``rerun``)."""

from __future__ import annotations

import json

from accord.errors import ConfigError, ConflictError, NotFoundError
from accord.store.records import NewRun, NewTask
from accord.store.sql.core import _OPEN_STATES, SqlBase, _Tx

_TASK_COPY = (
    "name, queue, args, priority, weight, size, max_attempts, max_losses, backoff, "
    "max_backoff, timeout, requires, resources, limit_key"
)


class AgainMixin(SqlBase):
    """Retrying tasks and rerunning runs (one transaction each)."""

    def retry_task(self, task_id: int) -> list[int]:
        """Make a failed or cancelled task ready again (its attempts counted
        from zero, its next claim fenced above every earlier one), with the
        tasks that its end cancelled: those that waited on it, those that
        took its result as theirs, and those its run's end cancelled. The
        run is open again. Returns the ids made ready or pending, the task
        first."""

        def body(tx: _Tx) -> list[int]:
            c = tx.c
            row = c.execute(
                f"SELECT run_id, state, forward_to FROM tasks WHERE id = ?{self.lock}",
                (task_id,),
            ).fetchone()
            if row is None:
                raise NotFoundError(f"task {task_id} does not exist", task_id=task_id)
            run_id, state, forward_to = row
            if state not in ("failed", "cancelled"):
                raise ConflictError(
                    f"task {task_id} is {state}: only a failed or cancelled task runs again",
                    task_id=task_id,
                    state=state,
                )
            if forward_to is not None:
                raise ConfigError(
                    f"task {task_id} took its value from task {forward_to}, which ended "
                    f"{state}: retry that one (accord retry {forward_to})",
                    task_id=task_id,
                )
            (waiting,) = c.execute(
                "SELECT count(*) FROM deps d JOIN tasks u ON u.id = d.dep_id "
                "WHERE d.task_id = ? AND u.state <> 'succeeded'",
                (task_id,),
            ).fetchone()
            if waiting:
                cause = c.execute(
                    "SELECT u.id, u.state FROM deps d JOIN tasks u ON u.id = d.dep_id "
                    "WHERE d.task_id = ? AND u.state <> 'succeeded' ORDER BY d.pos LIMIT 1",
                    (task_id,),
                ).fetchone()
                raise ConfigError(
                    f"task {task_id} waits on task {cause[0]}, which is {cause[1]}: retry that "
                    f"one (accord retry {cause[0]}) and task {task_id} runs again with it",
                    task_id=task_id,
                )
            self._restart(tx, task_id)
            reopened = [task_id]
            reopened += self._reopen_dependents(tx, run_id, [task_id])
            run_state, root = c.execute(
                f"SELECT state, root_task_id FROM runs WHERE id = ?{self.lock}", (run_id,)
            ).fetchone()
            if root is not None and root not in reopened and self._raised(tx, root):
                # The workflow ended with the task (it raised what the task
                # raised): it runs again too, and finds the children it made.
                self._restart(tx, root)
                reopened.append(root)
            if run_state != "running":
                # What the run's end cancelled goes on as well.
                cancelled_by_end = [
                    r[0]
                    for r in c.execute(
                        "SELECT id FROM tasks WHERE run_id = ? AND state = 'cancelled' "
                        "AND (error LIKE ? OR error LIKE ?) ORDER BY id",
                        (run_id, f"run {run_id} failed: %", f"run {run_id} cancelled: %"),
                    )
                ]
                for other in cancelled_by_end:
                    if other not in reopened and self._reopen(tx, other):
                        reopened.append(other)
                reopened += self._reopen_dependents(
                    tx, run_id, [i for i in reopened if i != task_id]
                )
                c.execute(
                    "UPDATE runs SET state = 'running', finished_at = NULL, error = NULL "
                    "WHERE id = ?",
                    (run_id,),
                )
            tx.work = True
            tx.touched.add(run_id)
            self._event(
                tx,
                "retried",
                run_id,
                task_id,
                f"run again by request, with {len(reopened) - 1} task(s) its end cancelled",
            )
            return list(dict.fromkeys(reopened))

        return self._write(body)

    def _raised(self, tx: _Tx, task_id: int) -> bool:
        """Whether a task ended failed or cancelled by itself (not through a
        task whose value it was to take)."""
        row = tx.c.execute(
            "SELECT state, forward_to FROM tasks WHERE id = ?", (task_id,)
        ).fetchone()
        return row is not None and row[0] in ("failed", "cancelled") and row[1] is None

    def _restart(self, tx: _Tx, task_id: int) -> None:
        """A task ready again as if new: attempts and lost leases from zero."""
        tx.c.execute(
            "UPDATE tasks SET state = 'ready', attempts = 0, losses = 0, node_id = NULL, "
            "lease_expires_at = NULL, result = NULL, error = NULL, error_type = NULL, "
            "traceback = NULL, started_at = NULL, finished_at = NULL, late = 0, forward_to = NULL, "
            "deps_remaining = 0, ready_at = ? WHERE id = ?",
            (tx.now, task_id),
        )

    def _reopen(self, tx: _Tx, task_id: int) -> bool:
        """A cancelled task open again: ready if its inputs all succeeded,
        else pending on those that have not."""
        (remaining,) = tx.c.execute(
            "SELECT count(*) FROM deps d JOIN tasks u ON u.id = d.dep_id "
            "WHERE d.task_id = ? AND u.state <> 'succeeded'",
            (task_id,),
        ).fetchone()
        state = "pending" if remaining else "ready"
        changed = tx.c.execute(
            "UPDATE tasks SET state = ?, deps_remaining = ?, error = NULL, error_type = NULL, "
            "traceback = NULL, result = NULL, finished_at = NULL, lease_expires_at = NULL, "
            f"node_id = NULL, ready_at = {self.greatest}(ready_at, ?) "
            f"WHERE id = ? AND state NOT IN {_OPEN_STATES} RETURNING id",
            (state, remaining, tx.now, task_id),
        ).fetchone()
        return changed is not None

    def _reopen_dependents(self, tx: _Tx, run_id: int, opened: list[int]) -> list[int]:
        """Reopen, generation by generation, the tasks that ended because
        one of ``opened`` did: cancelled through it as a dependency, or
        forwarding its value."""
        reopened: list[int] = []
        frontier = list(opened)
        while frontier:
            found = []
            for dep_id in frontier:
                for waiter, state, error, forward_to in tx.c.execute(
                    "SELECT t.id, t.state, t.error, t.forward_to FROM deps d "
                    "JOIN tasks t ON t.id = d.task_id WHERE d.dep_id = ? ORDER BY t.id",
                    (dep_id,),
                ).fetchall():
                    through_it = (
                        state == "cancelled"
                        and (error or "").startswith(f"dependency task {dep_id} (")
                    ) or (forward_to == dep_id and state in ("failed", "cancelled"))
                    if through_it and self._reopen(tx, waiter):
                        found.append(waiter)
            reopened += found
            frontier = found
        return reopened

    def rerun(self, run_id: int) -> int:
        """A new run of the same tasks with the same arguments: the run's
        root (a workflow), or, for a run without one, its top-level tasks."""
        rows = self._read(
            "SELECT r.name, r.app, r.root_task_id FROM runs r WHERE r.id = ?", (run_id,)
        )
        if not rows:
            raise NotFoundError(f"run {run_id} does not exist", run_id=run_id)
        name, app, root = rows[0]
        where = "id = ?" if root is not None else "run_id = ? AND parent_id IS NULL"
        tops = self._read(
            f"SELECT id, {_TASK_COPY} FROM tasks WHERE {where} ORDER BY id",
            (root if root is not None else run_id,),
        )
        taken = self._read(
            "SELECT count(*) FROM deps d JOIN tasks t ON t.id = d.task_id "
            "WHERE t.run_id = ? AND t.parent_id IS NULL AND d.pos >= 0",
            (run_id,),
        )[0][0]
        if taken:
            raise ConfigError(
                f"run {run_id}'s tasks take results of other tasks as arguments; start it "
                "again from its code instead"
            )
        tasks = [
            NewTask(
                name=r[1],
                queue=r[2],
                args=bytes(r[3]),
                priority=r[4],
                weight=r[5],
                size=r[6],
                max_attempts=r[7],
                max_losses=r[8],
                backoff=r[9],
                max_backoff=r[10],
                timeout=r[11],
                requires=json.loads(r[12]) if r[12] else None,
                resources=json.loads(r[13]) if r[13] else None,
                limit_key=r[14],
            )
            for r in tops
        ]
        new_run, _ = self.submit(tasks, run=NewRun(app=app, name=name, rooted=root is not None))
        return new_run
