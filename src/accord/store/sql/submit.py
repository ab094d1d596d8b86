"""Submitting tasks: ids, idempotency keys, dependencies, one batch per commit.

:meth:`SubmitMixin.submit` plans a batch (:meth:`SubmitMixin._plan`: the id of
each task, an existing one where its key or ``seq`` was used) and writes its
new tasks and dependencies in a few statements
(:meth:`SubmitMixin._insert_tasks`)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from accord.errors import ConflictError, FencedError, NotFoundError
from accord.scheduling.policy import (
    req_key,
)
from accord.store.records import (
    NewRun,
    NewTask,
)
from accord.store.sql.core import Conn, _Tx
from accord.store.sql.limits import LimitsMixin
from accord.store.sql.settle import Settling


@dataclass(slots=True)
class _Plan:
    """How a batch of submitted tasks is written: each task's id, which of
    them are new (indices), their dependencies as ids, and the run of each
    task found by its idempotency key."""

    ids: list[int]
    fresh: list[int]
    deps_of: list[list[int]]
    runs: dict[int, int]


# Idempotency keys looked up per statement (far below both backends' limits
# on bound parameters).
_KEYS_PER_READ = 500


class SubmitMixin(Settling, LimitsMixin):
    """Writing new tasks and runs."""

    # -- submission -------------------------------------------------------
    def submit(
        self,
        tasks: list[NewTask],
        *,
        run: NewRun | None = None,
        run_id: int | None = None,
        parent: tuple[int, int] | None = None,
    ) -> tuple[int, list[int]]:
        def body(tx: _Tx) -> tuple[int, list[int]]:
            c = tx.c
            run_id_ = run_id
            parent_id = None
            if parent is not None:
                row = c.execute(
                    f"SELECT run_id, fence, state FROM tasks WHERE id = ?{self.share}", (parent[0],)
                ).fetchone()
                if row is None:
                    raise NotFoundError(f"parent task {parent[0]} does not exist")
                if row[1] != parent[1] or row[2] != "running":
                    self._refused(parent, "submission of child tasks", tx.now)
                    raise FencedError(
                        f"task {parent[0]} attempt with fence {parent[1]} no longer holds its "
                        "lease; its child tasks were not submitted",
                        task_id=parent[0],
                        fence=parent[1],
                    )
                run_id_, parent_id = row[0], parent[0]
            # Ids first (those of tasks that exist already, and new ones), so
            # that a new run names its root at once.
            plan = self._plan(c, tasks, parent_id)
            if tasks and not plan.fresh:
                # Every task exists (its key was used before, or an earlier attempt
                # of the parent made it): nothing is written. A new run is not
                # made either: the answer is the run of the first task.
                if run is not None:
                    run_id_ = plan.runs.get(plan.ids[0], run_id_)
                return _needed(run_id_), plan.ids
            if run is not None:
                # A rooted run is one task (Task.submit, App.start); were its
                # first task an existing one, the run would have no root of its own.
                rooted = run.rooted and bool(tasks) and plan.fresh[0] == 0
                run_id_ = c.execute(
                    "INSERT INTO runs (app, name, state, created_at, root_task_id) "
                    "VALUES (?, ?, 'running', ?, ?) RETURNING id",
                    (run.app, run.name, tx.now, plan.ids[0] if rooted else None),
                ).fetchone()[0]
            run_id_ = _needed(run_id_)
            self._insert_tasks(tx, run_id_, tasks, parent_id, plan)
            if not tasks:
                tx.touched.add(run_id_)  # an empty run has ended already
            self._finish_runs(tx)
            return run_id_, plan.ids

        return self._write(body)

    def _plan(self, c: Conn, tasks: list[NewTask], parent_id: int | None) -> _Plan:
        """The id of each task of a batch: the task that exists already for
        it, else a new id (``fresh``).

        A task exists already when an earlier attempt of its parent made it
        (the same ``seq``), or when its idempotency key was used: by any
        task, in any run and any batch, including an earlier task of this
        batch. A used key with another task name, other arguments or other
        dependencies is refused with :class:`ConflictError` (nothing of the
        batch is written), as it is for one task alone.
        """
        ids: list[int | None] = [None] * len(tasks)
        seqs = [task.seq for task in tasks if task.seq is not None]
        if parent_id is not None and seqs:
            # Children made by an earlier attempt of the parent are not made again.
            where, param = self._ids_in("seq", seqs)
            made = dict(
                c.execute(
                    f"SELECT seq, id FROM tasks WHERE parent_id = ? AND {where}",
                    (parent_id, param),
                ).fetchall()
            )
            for i, task in enumerate(tasks):
                if task.seq in made:
                    ids[i] = made[task.seq]
        first_with: dict[str, int] = {}  # key -> the batch's first task with it
        aliases: list[tuple[int, int]] = []  # (a later task, the first) with one key
        for i, task in enumerate(tasks):
            key = task.idempotency_key
            if key is None:
                continue
            if key in first_with:
                aliases.append((i, first_with[key]))
            else:
                first_with[key] = i
        used: dict[int, tuple[int, str, str, bytes]] = {}  # batch index -> (id, key, name, args)
        runs: dict[int, int] = {}
        lookup = [key for key, i in first_with.items() if ids[i] is None]
        for start in range(0, len(lookup), _KEYS_PER_READ):
            chunk = lookup[start : start + _KEYS_PER_READ]
            marks = ", ".join("?" * len(chunk))
            for task_id, run_id, key, name, args in c.execute(
                "SELECT id, run_id, idempotency_key, name, args FROM tasks "
                f"WHERE idempotency_key IN ({marks})",
                chunk,
            ).fetchall():
                i = first_with[key]
                ids[i] = task_id
                runs[task_id] = run_id
                used[i] = (task_id, key, name, bytes(args))
        alias_of = dict(aliases)
        fresh = [i for i, task_id in enumerate(ids) if task_id is None and i not in alias_of]
        for i, task_id in zip(fresh, self._new_task_ids(c, len(fresh)), strict=True):
            ids[i] = task_id
        for later, first in aliases:
            ids[later] = ids[first]
        known = [task_id for task_id in ids if task_id is not None]  # all of them now
        # Handles among the arguments are stored as positions: compare what they point at.
        deps_of = [[known[-d - 1] if d < 0 else d for d in task.deps] for task in tasks]
        if used:
            where, param = self._ids_in("task_id", [entry[0] for entry in used.values()])
            stored: dict[int, list[int]] = {}
            for task_id, dep_id in c.execute(
                f"SELECT task_id, dep_id FROM deps WHERE {where} AND pos >= 0 "
                "ORDER BY task_id, pos",
                (param,),
            ).fetchall():
                stored.setdefault(task_id, []).append(dep_id)
            for i, (task_id, key, name, args) in used.items():
                task = tasks[i]
                if (name, args, stored.get(task_id, [])) != (task.name, task.args, deps_of[i]):
                    raise ConflictError(
                        f"idempotency key {key!r} was used for task {task_id} ({name}) with "
                        "other arguments; use a new key for a different call",
                        task_id=task_id,
                    )
        for later, first in aliases:
            a, b = tasks[later], tasks[first]
            if (a.name, a.args, deps_of[later]) != (b.name, b.args, deps_of[first]):
                raise ConflictError(
                    f"idempotency key {a.idempotency_key!r} was used for an earlier task of "
                    f"the same batch ({b.name}) with other arguments; use a new key for a "
                    "different call",
                    task_id=None if first in fresh else ids[first],
                )
        return _Plan(known, fresh, deps_of, runs)

    def _insert_tasks(
        self, tx: _Tx, run_id: int, tasks: list[NewTask], parent_id: int | None, plan: _Plan
    ) -> None:
        """Write a batch's new tasks in a few statements, whatever its size."""
        c = tx.c
        fresh, known, deps_of = plan.fresh, plan.ids, plan.deps_of
        states: dict[int, str] = {}
        made_here = {known[i] for i in fresh}
        outside = sorted({d for i in fresh for d in deps_of[i]} - made_here)
        if outside:
            # Tasks that existed before this transaction (also those found by
            # seq or by key): locked until this commit, since their ends must
            # see the new dependents.
            where, param = self._ids_in("id", outside)
            states.update(
                c.execute(f"SELECT id, state FROM tasks WHERE {where}{self.share}", (param,))
            )
        limits = {tasks[i].limit_key: tasks[i] for i in fresh if tasks[i].limit_key is not None}
        for task in limits.values():
            self._define_limit(tx, task)
        rows, dep_rows = [], []
        for i in fresh:
            task, task_id, deps = tasks[i], known[i], deps_of[i]
            remaining = 0
            blocked: str | None = None
            for dep in deps:
                state = states.get(dep)
                if state is None:
                    raise NotFoundError(
                        f"{task.name}() depends on task {dep}, which does not exist",
                        task_id=dep,
                    )
                if state in ("failed", "cancelled"):
                    blocked = f"dependency task {dep} {state}"
                elif state != "succeeded":
                    remaining += 1
            state = "cancelled" if blocked else ("pending" if remaining else "ready")
            states[task_id] = state
            tx.work = tx.work or state == "ready"
            if blocked:
                tx.touched.add(run_id)
            rows.append(
                (
                    task_id,
                    run_id,
                    parent_id,
                    task.seq,
                    task.idempotency_key,
                    task.queue,
                    task.name,
                    state,
                    task.priority,
                    task.weight,
                    task.size,
                    task.args,
                    len(deps),
                    remaining,
                    task.max_attempts,
                    task.max_losses,
                    task.backoff,
                    task.max_backoff,
                    task.timeout,
                    json.dumps(task.requires) if task.requires else None,
                    json.dumps(task.resources) if task.resources else None,
                    max(task.ready_at, tx.now + task.delay),
                    tx.now,
                    blocked,
                    tx.now if blocked else None,
                    task.deadline_at if task.deadline_in is None else tx.now + task.deadline_in,
                    req_key(task.requires),
                    task.limit_key,
                )
            )
            dep_rows += [(task_id, pos, dep) for pos, dep in enumerate(deps)]
        if rows:
            c.executemany(
                "INSERT INTO tasks (id, run_id, parent_id, seq, idempotency_key, queue, name, "
                "state, priority, weight, size, args, n_deps, deps_remaining, max_attempts, "
                "max_losses, backoff, max_backoff, timeout, requires, resources, ready_at, "
                "created_at, error, finished_at, deadline_at, req_key, limit_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?, ?, ?, ?)",
                rows,
            )
        if dep_rows:
            c.executemany("INSERT INTO deps (task_id, pos, dep_id) VALUES (?, ?, ?)", dep_rows)


def _needed(run_id: int | None) -> int:
    if run_id is None:
        raise ValueError("submit needs a run, a run_id or a parent")
    return run_id
