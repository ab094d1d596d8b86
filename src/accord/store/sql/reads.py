"""Reads of the task store: tasks, results, runs, nodes and events.

Each is one statement outside any transaction (``_read``); none writes."""

from __future__ import annotations

import json
from typing import Any

from accord.errors import NotFoundError
from accord.store.records import (
    Event,
    NodeInfo,
    RunInfo,
    TaskInfo,
    TaskResult,
    TaskState,
)
from accord.store.sql.core import SqlBase

_TASK_INFO_SQL = """
SELECT t.id, t.run_id, t.parent_id, t.name, t.queue, t.state, t.priority, t.attempts,
       t.max_attempts, t.fence, t.node_id, n.name, t.created_at, t.started_at,
       t.finished_at, t.ready_at, t.deadline_at, t.requires, t.resources, t.error,
       t.error_type, t.traceback, t.forward_to, t.losses, t.max_losses
FROM tasks t LEFT JOIN nodes n ON n.id = t.node_id
"""


class ReadsMixin(SqlBase):
    """What clients and the CLI read back."""

    # -- reads ------------------------------------------------------------
    def results(self, task_ids: list[int]) -> list[TaskResult]:
        where, param = self._ids_in("id", task_ids)
        rows = self._read(
            f"SELECT id, state, result, error, error_type, traceback FROM tasks WHERE {where}",
            (param,),
        )
        return [TaskResult(r[0], TaskState(r[1]), r[2], r[3], r[4], r[5]) for r in rows]

    def task(self, task_id: int) -> TaskInfo:
        rows = self._read(_TASK_INFO_SQL + " WHERE t.id = ?", (task_id,))
        if not rows:
            raise NotFoundError(f"task {task_id} does not exist", task_id=task_id)
        return _task_info(rows[0])

    def tasks(self, run_id: int) -> list[TaskInfo]:
        self.run(run_id)
        rows = self._read(_TASK_INFO_SQL + " WHERE t.run_id = ? ORDER BY t.id", (run_id,))
        return [_task_info(r) for r in rows]

    def run(self, run_id: int) -> RunInfo:
        rows = self._read(
            "SELECT id, app, name, state, root_task_id, created_at, finished_at, error "
            "FROM runs WHERE id = ?",
            (run_id,),
        )
        if not rows:
            raise NotFoundError(f"run {run_id} does not exist", run_id=run_id)
        return self._run_info(rows[0])

    def run_state(self, run_id: int) -> str:
        rows = self._read("SELECT state FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise NotFoundError(f"run {run_id} does not exist", run_id=run_id)
        return str(rows[0][0])

    def _run_info(self, row: Any) -> RunInfo:
        counts = dict(
            self._read(
                "SELECT state, count(*) FROM tasks WHERE run_id = ? GROUP BY state", (row[0],)
            )
        )
        return RunInfo(
            id=row[0],
            app=row[1],
            name=row[2],
            state=row[3],
            root_task_id=row[4],
            created_at=row[5],
            finished_at=row[6],
            error=row[7],
            counts=counts,
        )

    def runs(
        self,
        limit: int = 20,
        *,
        state: str | None = None,
        name: str | None = None,
        since: float | None = None,
    ) -> list[RunInfo]:
        where, params = _filters(("state", state), ("name", name), ("created_at >=", since))
        rows = self._read(
            "SELECT id, app, name, state, root_task_id, created_at, finished_at, error "
            f"FROM runs{where} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [self._run_info(r) for r in rows]

    def nodes(self, include_stopped: bool = False) -> list[NodeInfo]:
        rows = self._read(
            "SELECT id, name, host, pid, queue, slots, mode, capabilities, state, started_at, "
            "heartbeat_at, stopped_at, running, completed, resources, speed FROM nodes "
            "WHERE state != 'stopped' OR ? ORDER BY id",
            (include_stopped,),
        )
        return [
            NodeInfo(
                id=r[0],
                name=r[1],
                host=r[2],
                pid=r[3],
                queue=r[4],
                slots=r[5],
                mode=r[6],
                capabilities=json.loads(r[7] or "[]"),
                resources=json.loads(r[14] or "{}"),
                speed=r[15],
                state=r[8],
                started_at=r[9],
                heartbeat_at=r[10],
                stopped_at=r[11],
                running=r[12],
                completed=r[13],
            )
            for r in rows
        ]

    def events(
        self,
        run_id: int | None = None,
        limit: int = 100,
        *,
        task_id: int | None = None,
        kind: str | None = None,
        since: float | None = None,
    ) -> list[Event]:
        where, params = _filters(
            ("run_id", run_id), ("task_id", task_id), ("kind", kind), ("at >=", since)
        )
        rows = self._read(
            "SELECT id, at, run_id, task_id, node_id, kind, detail FROM events"
            f"{where} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [Event(*r) for r in reversed(rows)]

    def task_args(self, task_id: int) -> bytes:
        rows = self._read("SELECT args FROM tasks WHERE id = ?", (task_id,))
        if not rows:
            raise NotFoundError(f"task {task_id} does not exist", task_id=task_id)
        return bytes(rows[0][0])

    def dependencies(self, run_id: int) -> list[tuple[int, int, int]]:
        rows = self._read(
            "SELECT d.task_id, d.pos, d.dep_id FROM deps d JOIN tasks t ON t.id = d.task_id "
            "WHERE t.run_id = ? ORDER BY d.task_id, d.pos",
            (run_id,),
        )
        return [(r[0], r[1], r[2]) for r in rows]


def _task_info(r: Any) -> TaskInfo:
    return TaskInfo(
        id=r[0],
        run_id=r[1],
        parent_id=r[2],
        name=r[3],
        queue=r[4],
        state=TaskState(r[5]),
        priority=r[6],
        attempts=r[7],
        max_attempts=r[8],
        fence=r[9],
        node_id=r[10],
        node_name=r[11],
        created_at=r[12],
        started_at=r[13],
        finished_at=r[14],
        ready_at=r[15],
        deadline_at=r[16],
        requires=json.loads(r[17]) if r[17] else [],
        resources=json.loads(r[18]) if r[18] else None,
        error=r[19],
        error_type=r[20],
        traceback=r[21],
        forward_to=r[22],
        losses=r[23],
        max_losses=r[24],
    )


def _filters(*pairs: tuple[str, Any]) -> tuple[str, list[Any]]:
    """A WHERE clause of the pairs whose value is given (``"column"`` for
    equality, or ``"column op"``), and its parameters."""
    terms, params = [], []
    for column, value in pairs:
        if value is not None:
            terms.append(f"{column} ?" if " " in column else f"{column} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(terms) if terms else ""), params
