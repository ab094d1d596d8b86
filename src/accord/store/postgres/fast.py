"""PostgreSQL's faster paths: statements that do in one what the shared SQL does in many."""

from __future__ import annotations

from typing import Any

from accord.scheduling.policy import NodeSpec
from accord.store.postgres.dialect import _CANDIDATES_SQL
from accord.store.records import Completion, Outcome
from accord.store.sql.core import Conn, _Tx
from accord.store.sql.store import SqlStore


class PgFastPaths(SqlStore):
    """Claim candidates, successes and run ends in one statement each."""

    def _candidates(
        self, c: Conn, queue: str, now: float, per_level: int, node: NodeSpec
    ) -> list[Any]:
        """The same candidates as on SQLite, in one statement: the levels by a
        recursive skip through the tasks_ready index, each level's oldest
        tasks by a lateral index scan, then the earliest deadlines."""
        candidates: list[Any] = []
        seen: set[int] = set()
        params = (queue, queue, queue, now, per_level, queue, now, per_level, queue, now, per_level)
        for row in c.execute(_CANDIDATES_SQL, params):
            if row[0] not in seen and node.can_meet(row[8]):
                seen.add(row[0])
                candidates.append(row[:8])
        return candidates

    def _complete_all(self, tx: _Tx, node_id: int, completions: list[Completion]) -> list[bool]:
        """Record every successful attempt, and count them to the node, in
        one statement."""
        ok = [done for done in completions if done.outcome is Outcome.OK]
        accepted: set[int] = set()
        if ok:
            if len(ok) == 1:  # a plan that can be kept
                values = "(VALUES (?::bigint, ?::bigint, ?::bytea))"
                given: tuple[Any, ...] = (ok[0].task_id, ok[0].fence, ok[0].result)
            else:
                values = "unnest(?::bigint[], ?::bigint[], ?::bytea[])"
                given = ([d.task_id for d in ok], [d.fence for d in ok], [d.result for d in ok])
            rows = tx.c.execute(
                "WITH done AS (UPDATE tasks AS t SET state = 'succeeded', result = v.result, "
                f"finished_at = ?, lease_expires_at = NULL FROM {values} AS v (id, fence, result) "
                "WHERE t.id = v.id AND t.fence = v.fence AND t.state = 'running' "
                "RETURNING t.id, t.run_id, t.deadline_at, t.late, t.limit_key, t.name, t.queue, "
                "t.attempts), counted AS (UPDATE nodes SET completed = completed + "
                "(SELECT count(*) FROM done) WHERE id = ?) "
                "SELECT id, run_id, deadline_at, late, limit_key, name, queue, attempts FROM done",
                (tx.now, *given, node_id),
            ).fetchall()
            durations = {done.task_id: done.duration for done in ok}
            for task_id, run_id, deadline_at, late, limit_key, name, queue, attempts in rows:
                self._succeeded(tx, task_id, run_id, deadline_at, late, limit_key)
                self._tell_task(
                    tx,
                    "task_succeeded",
                    (task_id, run_id, name, queue, attempts),
                    node_id=node_id,
                    duration=durations[task_id],
                )
                accepted.add(task_id)
            for done in ok:
                if done.task_id not in accepted:
                    self._refused_result(tx, done)
            # Not folded into the statement above: a dependent registered by a
            # transaction that the UPDATE waited for is only seen by a later
            # statement's snapshot.
            self._settle(tx, [(task_id, "succeeded") for task_id in sorted(accepted)])
        others = [
            self._complete(tx, done, node_id)
            for done in completions
            if done.outcome is not Outcome.OK
        ]
        self._count_completed(tx, node_id, sum(others))
        results = iter(others)
        return [
            done.task_id in accepted if done.outcome is Outcome.OK else next(results)
            for done in completions
        ]

    def _end_run(self, tx: _Tx, run_id: int, state: str, error: str | None) -> None:
        tx.news = True
        tx.c.execute(
            "WITH ended AS (UPDATE runs SET state = ?, finished_at = ?, error = ? WHERE id = ? "
            "RETURNING id) INSERT INTO events (at, run_id, task_id, node_id, kind, detail) "
            "SELECT ?, id, NULL, NULL, ?, ? FROM ended",
            (state, tx.now, error, run_id, tx.now, f"run_{state}", error),
        )
        self._tell_run(tx, run_id, state, error)
