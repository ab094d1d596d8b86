"""Claiming: which ready tasks a node takes, in one commit with its completions.

:meth:`ClaimMixin.exchange` records a node's finished attempts and claims its
next tasks in one transaction. A claim reads bounded candidates off the
indexes (:meth:`ClaimMixin._candidates`), ranks them by the policy, picks
those that fit the node's free resources and their limits, and takes them
(skipping rows other claimers hold). The cheap reads a node makes before
claiming (:meth:`ClaimMixin.has_ready` and friends) are here too."""

from __future__ import annotations

import json
from typing import Any

from accord.scheduling.policy import (
    Candidate,
    CostPolicy,
    NodeSpec,
    Policy,
    fits,
    needs_of,
)
from accord.store.records import (
    ClaimedTask,
    Completion,
    Outcome,
)
from accord.store.sql.complete import CompleteMixin, storable
from accord.store.sql.core import Conn, _Tx
from accord.store.sql.limits import LimitsMixin, _LimitState
from accord.store.sql.nodes import NodesMixin

MAX_LEVELS = 64
DEFAULT_POLICY = CostPolicy()


class ClaimMixin(CompleteMixin, NodesMixin, LimitsMixin):
    """The node's side of the task store: exchange, claims and ready reads."""

    # -- the node's side --------------------------------------------------
    def exchange(
        self,
        node_id: int,
        completions: list[Completion],
        *,
        queue: str,
        claim: int,
        lease_ttl: float,
        node: NodeSpec | None = None,
        free: dict[str, float] | None = None,
        policy: Policy | None = None,
        only_if_work: bool = False,
    ) -> tuple[list[bool], list[ClaimedTask]]:
        # The node cleans what it sends; this is the store's own guard, so
        # that no caller's text makes a completion fail on one backend alone.
        ok = Outcome.OK
        completions = [done if done.outcome is ok else storable(done) for done in completions]

        def body(tx: _Tx) -> tuple[list[bool], list[ClaimedTask]]:
            # Nobody waits for a task to be claimed: a claim alone is no news,
            # unless it also ended something (its event says so).
            tx.news = bool(completions)
            accepted = self._complete_all(tx, node_id, completions) if completions else []
            self._finish_runs(tx)
            claimed = []
            if claim > 0 and (not only_if_work or tx.work or node_id in self._left_behind):
                claimed = self._claim(tx, node_id, queue, claim, lease_ttl, node, free, policy)
            return accepted, claimed

        return self._write(body)

    def _claim(
        self,
        tx: _Tx,
        node_id: int,
        queue: str,
        limit: int,
        lease_ttl: float,
        node: NodeSpec | None,
        free: dict[str, float] | None,
        policy: Policy | None,
    ) -> list[ClaimedTask]:
        c = tx.c
        self._reclaim_expired(tx)
        now = tx.now
        node = node or NodeSpec()
        policy = policy or DEFAULT_POLICY
        free = dict(free) if free is not None else None
        per_level = limit * self.claimers + 16
        candidates = self._candidates(c, queue, now, per_level, node)
        self._left_behind.discard(node_id)
        if not candidates:
            return []
        speed = node.speed

        def rank(r: Any) -> tuple[float, ...]:
            return policy.key(Candidate(r[0], r[1], r[2], r[3], r[4], r[5]), now, speed)

        candidates.sort(key=rank)
        by_priority = getattr(policy, "priority_first", True)
        priority_of = {r[0]: r[1] for r in candidates}
        needs_by_id: dict[int, dict[str, float]] = {}
        limits: dict[str, _LimitState | None] = {}
        rows: list[Any] = []
        rest = candidates
        while rest and len(rows) < limit:
            picked, rest = self._pick(tx, rest, limit - len(rows), free, node, limits, needs_by_id)
            if not picked:
                break
            taken = self._take(c, picked, node_id, now + lease_ttl, now, by_priority)
            rows += taken
            if len(taken) == len(picked):
                break
            # Another transaction holds some of them: their resources are free
            # again, and nothing of lower priority may take their place.
            got = {row[0] for row in taken}
            missed = [task_id for task_id in picked if task_id not in got]
            for task_id in missed:
                if free is not None:
                    for kind, amount in needs_by_id[task_id].items():
                        free[kind] = free.get(kind, 0.0) + amount
            if by_priority:
                floor = max(priority_of[task_id] for task_id in missed)
                kept = [r for r in rest if r[1] >= floor]
                if len(kept) < len(rest) or min(priority_of[i] for i in missed) < floor:
                    # Work was left for a held task, which may be free again
                    # once its holder commits: have the nodes look again.
                    tx.work = True
                rest = kept
        self._save_limits(tx, limits)
        if len(rows) < len(candidates):
            self._left_behind.add(node_id)
        if not rows:
            return []
        order = {r[0]: i for i, r in enumerate(candidates)}
        rows.sort(key=lambda r: order[r[0]])
        inputs: dict[int, list[bytes | None]] = {}
        with_deps = [row[0] for row in rows if row[9]]
        if with_deps:
            where, param = self._ids_in("d.task_id", with_deps)
            for task_id, result in c.execute(
                "SELECT d.task_id, t.result FROM deps d JOIN tasks t ON t.id = d.dep_id "
                f"WHERE {where} AND d.pos >= 0 ORDER BY d.task_id, d.pos",
                (param,),
            ):
                inputs.setdefault(task_id, []).append(result)
        claimed = []
        for row in rows:
            if row[11] is not None and row[11] < now and not row[12]:
                self._late(tx, row[0], row[1], now - row[11], "started")
            dep_results = inputs.get(row[0], [])
            claimed.append(
                ClaimedTask(
                    id=row[0],
                    run_id=row[1],
                    name=row[2],
                    args=row[3],
                    dep_results=dep_results,
                    fence=row[4],
                    attempt=row[5],
                    max_attempts=row[6],
                    timeout=row[7],
                    size=row[8],
                    priority=row[10],
                    needs=needs_by_id[row[0]],
                )
            )
        return claimed

    def _candidates(
        self, c: Conn, queue: str, now: float, per_level: int, node: NodeSpec
    ) -> list[Any]:
        """Bounded candidates, as accord.scheduling.policy.bounded_candidates
        states them: the oldest and the cheapest eligible tasks of each
        (requirement class, priority) level the node can run, read off the
        tasks_ready and tasks_ready_cost indexes, plus the earliest deadlines.
        Rows: id, priority, weight, size, ready_at, deadline_at, resources,
        limit_key."""
        candidates: list[Any] = []
        # Levels are found by skipping through the index, one seek each.
        level = c.execute(
            "SELECT req_key, priority FROM tasks WHERE queue = ? AND state = 'ready' "
            "ORDER BY req_key, priority LIMIT 1",
            (queue,),
        ).fetchone()
        levels = 0
        while level is not None and levels < MAX_LEVELS:
            levels += 1
            level_req, level_priority = level
            if node.can_meet(level_req):
                params = (queue, level_req, level_priority, now, per_level)
                oldest = c.execute(
                    "SELECT id, priority, weight, size, ready_at, deadline_at, resources, "
                    "limit_key FROM tasks WHERE queue = ? AND state = 'ready' AND req_key = ? "
                    "AND priority = ? AND ready_at <= ? ORDER BY ready_at, id LIMIT ?",
                    params,
                ).fetchall()
                candidates += oldest
                if len(oldest) == per_level:
                    # A longer level: its cheapest tasks too, off their own
                    # index (tasks_ready_cost), so that a cheap task behind a
                    # run of dear ones is a candidate.
                    candidates += c.execute(
                        "SELECT id, priority, weight, size, ready_at, deadline_at, resources, "
                        "limit_key FROM tasks WHERE queue = ? AND state = 'ready' "
                        # "+ready_at": not a range on tasks_ready, which SQLite
                        # would otherwise pick and sort the whole level by cost.
                        "AND req_key = ? AND priority = ? AND +ready_at <= ? "
                        "ORDER BY weight + size, ready_at, id LIMIT ?",
                        params,
                    ).fetchall()
            level = self._next_level(c, queue, level_req, level_priority)
        # Tasks with deadlines come first inside their band, wherever they sit:
        # the earliest deadlines join the candidates through their own index.
        seen: set[int] = set()
        unique = []
        for r in candidates:
            if r[0] not in seen:
                seen.add(r[0])
                unique.append(r)
        candidates = unique
        for r in c.execute(
            "SELECT id, priority, weight, size, ready_at, deadline_at, resources, limit_key, "
            "req_key FROM tasks WHERE queue = ? AND state = 'ready' AND deadline_at IS NOT NULL "
            "AND ready_at <= ? ORDER BY deadline_at LIMIT ?",
            (queue, now, per_level),
        ):
            if r[0] not in seen and node.can_meet(r[8]):
                candidates.append(r[:8])
        return candidates

    def _pick(
        self,
        tx: _Tx,
        ranked: list[Any],
        want: int,
        free: dict[str, float] | None,
        node: NodeSpec,
        limits: dict[str, _LimitState | None],
        needs_by_id: dict[int, dict[str, float]],
    ) -> tuple[list[int], list[Any]]:
        """Up to ``want`` ranked candidates that fit the node's free resources
        and their limits, and the candidates not looked at yet."""
        picked: list[int] = []
        for i, r in enumerate(ranked):
            needs = needs_of(json.loads(r[6]) if r[6] else None)
            # ``free`` may be scaled up for prefetch; a task needing more than
            # the node has at all could never start there: leave it ready.
            if free is not None and not (fits(needs, free) and node.can_hold(needs)):
                continue
            if r[7] is not None and not self._limit_allows(tx, r[7], limits):
                continue
            picked.append(r[0])
            needs_by_id[r[0]] = needs
            if free is not None:
                for kind, amount in needs.items():
                    free[kind] = free.get(kind, 0.0) - amount
            if len(picked) >= want:
                return picked, ranked[i + 1 :]
        return picked, []

    def _take(
        self,
        c: Conn,
        picked: list[int],
        node_id: int,
        lease_until: float,
        now: float,
        by_priority: bool,
    ) -> list[Any]:
        """Claim the picked tasks that are still ready. Where claimers run side
        by side, only rows no other transaction holds are locked and taken:
        the others are skipped, never waited for (and only what is taken is
        locked, so the rest stay visible to the other claimers). With
        ``by_priority``, a held task also keeps back the picks of lower
        priority than its own: they must not jump ahead of it."""
        where, param = self._ids_in("id", picked)
        if not (self.skip_locked and by_priority):
            # (On SQLite the one writer never finds a row held by another.)
            taken = f"SELECT id FROM tasks WHERE {where} AND state = 'ready'{self.skip_locked}"
        else:
            taken = (
                f"WITH picks AS (SELECT id, priority FROM tasks WHERE {where} "
                "AND state = 'ready'), "
                "locked AS (SELECT id, priority FROM tasks WHERE id IN (SELECT id FROM picks) "
                f"AND state = 'ready'{self.skip_locked}), "
                "held AS (SELECT max(priority) AS priority FROM picks "
                "WHERE id NOT IN (SELECT id FROM locked)) "
                "SELECT l.id FROM locked l, held h "
                "WHERE h.priority IS NULL OR l.priority >= h.priority"
            )
        return c.execute(
            f"WITH taken AS ({taken}) "
            "UPDATE tasks SET state = 'running', node_id = ?, attempts = attempts + 1, "
            "fence = fence + 1, lease_expires_at = ?, started_at = ? "
            "WHERE id IN (SELECT id FROM taken) AND state = 'ready' "
            "RETURNING id, run_id, name, args, fence, attempts, max_attempts, timeout, size, "
            "n_deps, priority, deadline_at, late",
            (param, node_id, lease_until, now),
        ).fetchall()

    @staticmethod
    def _next_level(c: Conn, queue: str, req: str, priority: int) -> tuple[str, int] | None:
        """The (req_key, priority) level after this one in index order.

        Two strict-range seeks rather than one row-value comparison, which
        SQLite answers by scanning every row of the current level.
        """
        row = c.execute(
            "SELECT priority FROM tasks WHERE queue = ? AND state = 'ready' AND req_key = ? "
            "AND priority > ? ORDER BY priority LIMIT 1",
            (queue, req, priority),
        ).fetchone()
        if row is not None:
            return req, row[0]
        found = c.execute(
            "SELECT req_key, priority FROM tasks WHERE queue = ? AND state = 'ready' "
            "AND req_key > ? ORDER BY req_key, priority LIMIT 1",
            (queue, req),
        ).fetchone()
        return (found[0], found[1]) if found is not None else None

    def has_ready(self, queue: str) -> bool:
        return bool(
            self._read(
                "SELECT EXISTS (SELECT 1 FROM tasks WHERE queue = ? AND state = 'ready' "
                "AND ready_at <= ?)",
                (queue, self.now()),
            )[0][0]
        )

    def best_ready_priority(self, queue: str) -> int | None:
        now = self.now()

        def scan(conn: Conn) -> int | None:
            top: int | None = None
            row = conn.execute(
                "SELECT req_key FROM tasks WHERE queue = ? AND state = 'ready' "
                "ORDER BY req_key LIMIT 1",
                (queue,),
            ).fetchone()
            while row is not None:
                # Only eligible tasks: a delayed task or a retry waiting out its
                # backoff cannot be claimed yet, so it is not more urgent work.
                found = conn.execute(
                    "SELECT priority FROM tasks WHERE queue = ? AND state = 'ready' "
                    "AND req_key = ? AND ready_at <= ? ORDER BY priority DESC LIMIT 1",
                    (queue, row[0], now),
                ).fetchone()
                high = found[0] if found is not None else None
                if high is not None and (top is None or high > top):
                    top = high
                row = conn.execute(
                    "SELECT req_key FROM tasks WHERE queue = ? AND state = 'ready' "
                    "AND req_key > ? ORDER BY req_key LIMIT 1",
                    (queue, row[0]),
                ).fetchone()
            return top

        return self._snap(scan)

    def ready_classes(self, queue: str | None = None) -> list[tuple[str, str, str | None, int]]:
        return [
            (r[0], r[1], r[2], r[3])
            for r in self._read(
                "SELECT queue, req_key, resources, count(*) FROM tasks WHERE state = 'ready' "
                "AND (CAST(? AS TEXT) IS NULL OR queue = ?) GROUP BY queue, req_key, resources "
                "ORDER BY queue, req_key",
                (queue, queue),
            )
        ]
