"""Periodic tasks in the store: defining schedules, firing the due ones.

The store decides, not the nodes: every node of an app asks, at most once a
second, :meth:`SchedulesMixin.fire_schedules`, and the schedules that are due
by the store's clock (``tx.now``; on PostgreSQL the server's) fire in that
transaction. Each slot fires exactly once across all nodes and processes:

- The due rows are read with a row lock (PostgreSQL ``FOR UPDATE SKIP
  LOCKED``; SQLite's one writer holds the whole database), the slot's run is
  submitted and ``next_fire_at`` moves past now, all in one commit. Another
  transaction either skips the locked row or, once it committed, no longer
  finds it due.
- The task of a slot carries the idempotency key
  ``schedule:{app}:{name}:{slot}`` (a unique index): were a transaction run
  again after a commit whose answer was lost, the slot's task exists already
  and no second run is made.

The slots and the catch-up policies are in :mod:`accord.scheduling.periodic`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from accord.errors import ConflictError
from accord.scheduling.periodic import (
    MAX_CATCH_UP,
    Fired,
    Rule,
    ScheduleDef,
    ScheduleInfo,
    slot_key,
)
from accord.store.records import NewRun, NewTask
from accord.store.sql.core import _Tx
from accord.store.sql.submit import SubmitMixin

_COLUMNS = (
    "app, name, task, cron, every, catch_up, next_fire_at, last_fired_at, last_slot, "
    "last_run_id, fired, enabled, defined, defined_at"
)


class SchedulesMixin(SubmitMixin):
    """The ``schedules`` table: definitions, firings, pause and resume."""

    def define_schedules(self, app: str, schedules: list[ScheduleDef]) -> None:
        if not schedules and not self._read(
            "SELECT 1 FROM schedules WHERE app = ? AND defined = 1 LIMIT 1", (app,)
        ):
            return  # an app without schedules, as most are: nothing to write

        def body(tx: _Tx) -> None:
            c = tx.c
            tx.news = False  # unless a definition changes (its event says so)
            existing = {
                row[0]: (row[1], row[2], row[3], bytes(row[4]), row[5], row[6])
                for row in c.execute(
                    "SELECT name, task, cron, every, args, catch_up, defined FROM schedules "
                    f"WHERE app = ?{self.lock}",
                    (app,),
                ).fetchall()
            }
            for d in schedules:
                values = (d.task, d.rule.cron, d.rule.every, d.args, d.catch_up)
                old = existing.get(d.name)
                if old is None:
                    c.execute(
                        "INSERT INTO schedules (app, name, task, cron, every, args, catch_up, "
                        "next_fire_at, defined_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (app, d.name, *values, d.rule.next_after(tx.now), tx.now),
                    )
                    self._event(tx, "schedule_defined", None, None, f"{d.name}: {d.rule.text()}")
                elif old[:5] != values or not old[5]:
                    # A changed (or revived) definition starts afresh from now.
                    c.execute(
                        "UPDATE schedules SET task = ?, cron = ?, every = ?, args = ?, "
                        "catch_up = ?, next_fire_at = ?, defined = 1, defined_at = ? "
                        "WHERE app = ? AND name = ?",
                        (*values, d.rule.next_after(tx.now), tx.now, app, d.name),
                    )
                    self._event(tx, "schedule_defined", None, None, f"{d.name}: {d.rule.text()}")
            defined = {d.name for d in schedules}
            for name, old in existing.items():
                if name not in defined and old[5]:
                    c.execute(
                        "UPDATE schedules SET defined = 0 WHERE app = ? AND name = ?", (app, name)
                    )
                    self._event(
                        tx, "schedule_orphaned", None, None, f"{name}: no longer defined by {app}"
                    )

        self._write(body)

    def fire_schedules(self, app: str, templates: dict[str, NewTask]) -> list[Fired]:
        if not templates:
            return []
        names = sorted(templates)
        marks = ", ".join("?" * len(names))
        # A read first: most seconds nothing is due, and a write would wake watchers.
        if not self._read(
            "SELECT 1 FROM schedules WHERE app = ? AND next_fire_at <= ? AND enabled = 1 "
            f"AND defined = 1 AND name IN ({marks}) LIMIT 1",
            (app, self.now(), *names),
        ):
            return []

        def body(tx: _Tx) -> list[Fired]:
            c = tx.c
            tx.news = False  # unless something fires (its events say so)
            due = c.execute(
                "SELECT name, task, cron, every, args, catch_up, next_fire_at FROM schedules "
                f"WHERE app = ? AND next_fire_at <= ? AND enabled = 1 AND defined = 1 "
                f"AND name IN ({marks}) ORDER BY next_fire_at{self.skip_locked}",
                (app, tx.now, *names),
            ).fetchall()
            fired: list[Fired] = []
            for name, task, cron, every, args, catch_up, first in due:
                rule = Rule(cron=cron, every=every)
                template = templates[name]
                slots, skipped = rule.due(first, tx.now, MAX_CATCH_UP if catch_up == "all" else 1)
                if skipped != 0:
                    missed = "missed slots" if skipped is None else f"{skipped} missed slot(s)"
                    self._event(
                        tx,
                        "schedule_skipped",
                        None,
                        None,
                        f"{name}: {missed} before {_iso(slots[0])} not fired (catch_up="
                        f"{catch_up!r}{f', at most {MAX_CATCH_UP}' if catch_up == 'all' else ''})",
                    )
                run_id = None
                for slot in slots:
                    new = dataclasses.replace(
                        template,
                        name=task,
                        args=bytes(args),
                        deps=[],
                        idempotency_key=slot_key(app, name, slot),
                    )
                    try:
                        run_id = self._submit_slot(tx, new, NewRun(app=app, name=task))
                    except ConflictError as exc:
                        self._event(tx, "schedule_conflict", None, None, f"{name}: {exc}")
                        continue
                    fired.append(Fired(name, slot, run_id))
                    self._event(tx, "schedule_fired", run_id, None, f"{name}: {_iso(slot)}")
                c.execute(
                    "UPDATE schedules SET next_fire_at = ?, last_fired_at = ?, last_slot = ?, "
                    "last_run_id = coalesce(?, last_run_id), fired = fired + ? "
                    "WHERE app = ? AND name = ?",
                    (
                        rule.next_after(tx.now),
                        tx.now,
                        slots[-1] if slots else None,
                        run_id,
                        len(slots),
                        app,
                        name,
                    ),
                )
            if fired:
                self._finish_runs(tx)
            return fired

        return self._write(body)

    def _submit_slot(self, tx: _Tx, task: NewTask, run: NewRun) -> int:
        """Submit one slot's task as a new run, as ``Task.submit`` outside a
        task does (its key used already: the existing run, nothing written)."""
        plan = self._plan(tx.c, [task], None)
        if not plan.fresh:
            return plan.runs[plan.ids[0]]
        run_id: int = tx.c.execute(
            "INSERT INTO runs (app, name, state, created_at, root_task_id) "
            "VALUES (?, ?, 'running', ?, ?) RETURNING id",
            (run.app, run.name, tx.now, plan.ids[0]),
        ).fetchone()[0]
        self._insert_tasks(tx, run_id, [task], None, plan)
        return run_id

    def schedules(self, app: str | None = None) -> list[ScheduleInfo]:
        rows = self._read(
            f"SELECT {_COLUMNS} FROM schedules WHERE app = ? OR ? ORDER BY app, name",
            (app, app is None),
        )
        return [
            ScheduleInfo(
                app=r[0],
                name=r[1],
                task=r[2],
                rule=Rule(cron=r[3], every=r[4]).text(),
                catch_up=r[5],
                next_fire_at=r[6],
                last_fired_at=r[7],
                last_slot=r[8],
                last_run_id=r[9],
                fired=r[10],
                state="orphaned" if not r[12] else "paused" if not r[11] else "active",
                defined_at=r[13],
            )
            for r in rows
        ]

    def set_schedule_enabled(self, app: str, name: str, enabled: bool) -> bool:
        def body(tx: _Tx) -> bool:
            row = tx.c.execute(
                f"SELECT cron, every, enabled FROM schedules WHERE app = ? AND name = ?{self.lock}",
                (app, name),
            ).fetchone()
            if row is None:
                return False
            if bool(row[2]) != enabled:
                # Resumed: from the next slot on (what fell in the pause is not made up).
                tx.c.execute(
                    "UPDATE schedules SET enabled = ?, next_fire_at = ? WHERE app = ? AND name = ?",
                    (
                        int(enabled),
                        Rule(cron=row[0], every=row[1]).next_after(tx.now),
                        app,
                        name,
                    ),
                )
                verb = "resumed" if enabled else "paused"
                self._event(tx, f"schedule_{verb}", None, None, name)
            return True

        return self._write(body)


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
