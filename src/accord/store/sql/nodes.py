"""Nodes and the leases of the tasks they hold.

Registering and stopping nodes, heartbeats (which extend the leases a node
holds), handing tasks back, and the sweeps that find what nobody looks after
any more: nodes whose heartbeats stopped, task leases that expired (the task
goes back to ready, or fails once it has lost its ``lease_losses``), and
deadlines that passed."""

from __future__ import annotations

import json

from accord.hooks import NodeEvent
from accord.store.sql.core import _Tx
from accord.store.sql.settle import Settling

_EXPIRED_BATCH = 64
# Expired leases and missed deadlines are looked for at most this often by
# each process (claims are much more frequent under load).
SWEEP_INTERVAL = 0.05


class NodesMixin(Settling):
    """Node records, heartbeats and the sweeps of expired leases and deadlines."""

    def _record_overdue(self, tx: _Tx) -> None:
        """Record a deadline miss for open tasks past their deadline, once each."""
        overdue = tx.c.execute(
            "SELECT id, run_id, deadline_at, state FROM tasks WHERE late = 0 "
            "AND deadline_at IS NOT NULL AND state IN ('pending', 'ready', 'running') "
            f"AND deadline_at < ? ORDER BY deadline_at LIMIT ?{self.skip_locked}",
            (tx.now, _EXPIRED_BATCH),
        ).fetchall()
        for task_id, run_id, deadline_at, state in overdue:
            self._late(tx, task_id, run_id, tx.now - deadline_at, f"still {state}")

    def _mark_lost(self, tx: _Tx) -> None:
        """Mark nodes lost whose last heartbeat is older than their lease."""
        for node_id, name, heartbeat_at in tx.c.execute(
            "UPDATE nodes SET state = 'lost' WHERE state = 'running' "
            "AND heartbeat_at + lease_ttl < ? RETURNING id, name, heartbeat_at",
            (tx.now,),
        ).fetchall():
            detail = f"{name}: no heartbeat for {tx.now - heartbeat_at:.1f}s, longer than its lease"
            self._event(tx, "node_lost", None, None, detail, node_id)
            if self.hooks.wants("node_lost"):
                tx.tell.append(("node_lost", NodeEvent(node_id, name, tx.now, detail)))

    def _reclaim_expired(self, tx: _Tx) -> None:
        # Sweeps, a few times a second per process rather than in every claim.
        if tx.now < self._next_sweep:
            return
        self._next_sweep = tx.now + SWEEP_INTERVAL
        c = tx.c
        self._record_overdue(tx)
        if tx.now >= self._next_lost_sweep:
            self._next_lost_sweep = tx.now + 1.0
            self._mark_lost(tx)
        # A lost lease is the node's fault, not the task's: it does not use up
        # the task's retries. It is still bounded (the task's lease_losses), so that a
        # task that kills or hangs every node that runs it ends up failed.
        expired = c.execute(
            "SELECT t.id, t.run_id, t.losses, t.max_losses, n.name, t.node_id, t.name, t.queue, "
            "t.attempts "
            "FROM tasks t LEFT JOIN nodes n ON n.id = t.node_id "
            f"WHERE t.state = 'running' AND t.lease_expires_at < ? LIMIT ?{self.skip_locked_t}",
            (tx.now, _EXPIRED_BATCH),
        ).fetchall()
        failed = False
        for task_id, run_id, losses, max_losses, node, node_id, name, queue, attempts in expired:
            losses += 1
            why = f"lease expired on node {node} (the node died or hung; loss {losses})"
            self._event(tx, "lease_expired", run_id, task_id, why)
            self._tell_task(
                tx,
                "lease_lost",
                (task_id, run_id, name, queue, attempts),
                node_id=node_id,
                error=why,
                error_type="LeaseExpired",
            )
            if losses >= max_losses:
                self._fail(
                    tx,
                    task_id,
                    run_id,
                    f"lost its lease {losses} times: every node that ran it died or hung",
                    "LeaseExpired",
                    None,
                )
                failed = True
            else:
                tx.work = True
                c.execute(
                    "UPDATE tasks SET state = 'ready', node_id = NULL, lease_expires_at = NULL, "
                    "attempts = attempts - 1, losses = ?, error = ?, "
                    "error_type = 'LeaseExpired' WHERE id = ?",
                    (losses, why, task_id),
                )
        if failed:
            # The failed task may have been its run's last open one: end the run
            # now, or it would stay 'running' until something else touched it.
            self._finish_runs(tx)

    def heartbeat(
        self, node_id: int, lease_ttl: float, running: int, speed: float | None = None
    ) -> dict[int, int]:
        def body(tx: _Tx) -> dict[int, int]:
            tx.c.execute(
                "UPDATE tasks SET lease_expires_at = ? WHERE node_id = ? AND state = 'running'",
                (tx.now + lease_ttl, node_id),
            )
            tx.c.execute(
                "UPDATE nodes SET heartbeat_at = ?, running = ?, state = 'running', "
                "speed = coalesce(?, speed) WHERE id = ?",
                (tx.now, running, speed, node_id),
            )
            return dict(
                tx.c.execute(
                    "SELECT id, fence FROM tasks WHERE node_id = ? AND state = 'running'",
                    (node_id,),
                ).fetchall()
            )

        return self._write(body)

    def release(self, node_id: int, held: list[tuple[int, int]]) -> int:
        if not held:
            return 0

        def body(tx: _Tx) -> int:
            released = 0
            for task_id, fence in held:
                tx.work = True
                row = tx.c.execute(
                    "UPDATE tasks SET state = 'ready', node_id = NULL, lease_expires_at = NULL, "
                    "attempts = attempts - 1, started_at = NULL "
                    "WHERE id = ? AND fence = ? AND state = 'running' AND node_id = ? "
                    "RETURNING run_id",
                    (task_id, fence, node_id),
                ).fetchone()
                if row is not None:
                    released += 1
                    self._event(tx, "released", row[0], task_id, f"handed back by node {node_id}")
            return released

        return self._write(body)

    def register_node(
        self,
        *,
        name: str,
        host: str,
        pid: int,
        queue: str,
        slots: int,
        mode: str,
        capabilities: list[str],
        resources: dict[str, float] | None = None,
        speed: float = 1.0,
        lease_ttl: float = 30.0,
    ) -> int:
        def body(tx: _Tx) -> int:
            node_id: int = tx.c.execute(
                "INSERT INTO nodes (name, host, pid, queue, slots, mode, capabilities, "
                "resources, speed, started_at, heartbeat_at, lease_ttl) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    name,
                    host,
                    pid,
                    queue,
                    slots,
                    mode,
                    json.dumps(capabilities),
                    json.dumps(resources or {}),
                    speed,
                    tx.now,
                    tx.now,
                    lease_ttl,
                ),
            ).fetchone()[0]
            self._event(tx, "node_started", None, None, f"{name} ({slots} {mode} slots)", node_id)
            return node_id

        return self._write(body)

    def stop_node(self, node_id: int) -> None:
        def body(tx: _Tx) -> None:
            tx.c.execute(
                "UPDATE nodes SET state = 'stopped', stopped_at = ?, running = 0 WHERE id = ?",
                (tx.now, node_id),
            )
            self._event(tx, "node_stopped", None, None, None, node_id)

        return self._write(body)
