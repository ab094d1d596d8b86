"""Housekeeping: removing finished runs with everything kept for them (``accord prune``).

A run goes with its tasks (arguments, results, errors), their ``deps`` rows
and the logs of their attempts, the events recorded under the run, and the
state keys of its namespace (``<app>/runs/<run id>/``). It goes only if, inside the transaction that
removes it:

- its state is ``succeeded``, ``failed`` or ``cancelled`` and it finished
  before the cutoff (store time), and none of its tasks is open (pending,
  ready or running);
- no open task of any run depends on one of its tasks (that task's result
  is still to be read as an input): such a run is kept, and counted so;
- on PostgreSQL, no other transaction holds its row or one of its tasks'
  rows (a retry re-opening it, a submission that takes one of its results
  as an input): the run rows are taken ``FOR UPDATE SKIP LOCKED`` and their
  tasks likewise, and a run not wholly taken is left for the next prune. A
  transaction that comes later waits for the prune and then finds the rows
  gone. On SQLite the one writer holds the database for the whole batch.

Batches are bounded (``batch`` runs, and about :data:`TASKS_PER_BATCH` tasks:
a run with more tasks goes alone), one transaction each, oldest runs first.
A run is removed whole or not at all.

What stays: the objects the run's values referenced (the collector,
``accord objects gc``, takes those nothing else references once its grace
has passed); the writer's task id that state history, leases and messages
record (provenance: it may name a task that is gone); and, for the state
keys of the namespace, a tombstone row each (a key's version is never
reused) and their history until compaction.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

from accord.errors import ConfigError
from accord.store.records import TERMINAL, KvDelete
from accord.store.sql.core import _OPEN_STATES, Conn, SqlBase, _Tx
from accord.store.sql.leases import LeasesMixin
from accord.store.sql.state_core import prefix_end

ENDED = TERMINAL
_ENDED = "(" + ", ".join(f"'{state}'" for state in TERMINAL) + ")"
RUNS_PER_BATCH = 500
# About this many tasks go in one transaction (a run with more goes alone).
TASKS_PER_BATCH = 10_000
# The counts that prune() returns, in this order.
PRUNE_COUNTS = (
    "runs",
    "succeeded",
    "failed",
    "cancelled",
    "tasks",
    "deps",
    "events",
    "log_lines",
    "state_keys",
    "kept",
)
# Rows kept per task besides the task's own (keyed by its id): the lines its
# attempts printed and logged, and a row per attempt (accord.store.sql.logs).
_BY_TASK = ("task_logs", "task_log_attempts")

# A candidate run: (id, app, state, its number of tasks).
_Run = tuple[int, str, str, int]
# What a batch did: its counts, the last run id it looked at, whether more may follow.
_Batch = tuple[dict[str, Any], int, bool]


def check_prune(
    older_than: object, batch: object, states: Iterable[str] | None, app: object
) -> tuple[float, int, tuple[str, ...]]:
    """The arguments of :meth:`PruneMixin.prune`, checked."""
    if (
        isinstance(older_than, bool)
        or not isinstance(older_than, int | float)
        or not math.isfinite(older_than)
        or older_than <= 0
    ):
        raise ConfigError(
            f"older_than must be a positive number of seconds, not {older_than!r}",
            argument="older_than",
        )
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be a positive integer, not {batch!r}", argument="batch")
    chosen = tuple(sorted(set(states))) if states is not None else ENDED
    if isinstance(states, str) or not chosen or any(s not in ENDED for s in chosen):
        raise ConfigError(
            f"states must name run states among {', '.join(ENDED)}, not {states!r}",
            argument="states",
        )
    if app is not None and not isinstance(app, str):
        raise ConfigError(f"app must be an app's name, not {app!r}", argument="app")
    return float(older_than), batch, chosen


def run_namespace(app: str, run_id: int) -> str:
    """The prefix of a run's state keys (``app.state.run(run_id)``)."""
    return f"{app}/runs/{run_id}/"


class PruneMixin(SqlBase):
    """Removing finished runs, and giving the space back (SQLite's VACUUM)."""

    def prune(
        self,
        older_than: float,
        *,
        dry_run: bool = False,
        batch: int = RUNS_PER_BATCH,
        states: Iterable[str] | None = None,
        app: str | None = None,
    ) -> dict[str, int]:
        seconds, batch, chosen = check_prune(older_than, batch, states, app)
        cutoff = self.now() - seconds
        report = dict.fromkeys(PRUNE_COUNTS, 0)
        after = 0  # runs up to this id were looked at
        more = True
        while more:
            step = functools.partial(
                self._prune_batch, after=after, cutoff=cutoff, batch=batch, states=chosen, app=app
            )
            if dry_run:
                counts, after, more = self._snap(functools.partial(step, tx=None))
            else:
                counts, after, more = self._write(functools.partial(self._prune_in, step))
                kv = counts.pop("_kv", None)
                if kv is not None and isinstance(self, LeasesMixin):
                    self._retention(*kv)
            for key, value in counts.items():
                report[key] += value
        return report

    def _prune_in(self, step: Callable[..., _Batch], tx: _Tx) -> _Batch:
        return step(tx.c, tx=tx)

    def _prune_batch(
        self,
        c: Conn,
        *,
        tx: _Tx | None,
        after: int,
        cutoff: float,
        batch: int,
        states: tuple[str, ...],
        app: str | None,
    ) -> _Batch:
        """Remove (``tx``), or count (``tx`` None: a dry run's read), the next
        batch of runs after id ``after``; return the counts, the last id
        looked at, and whether more may follow."""
        counts: dict[str, Any] = dict.fromkeys(PRUNE_COUNTS, 0)
        where = [
            "r.id > ?",
            "r.finished_at < ?",
            f"r.state IN ({', '.join('?' * len(states))})",
            "NOT EXISTS (SELECT 1 FROM tasks o WHERE o.run_id = r.id "
            f"AND o.state IN {_OPEN_STATES})",
        ]
        params: list[Any] = [after, cutoff, *states]
        if app is not None:
            where.append("r.app = ?")
            params.append(app)
        # A dry run reads in a read-only transaction: nothing to lock.
        candidates: list[_Run] = [
            (int(r[0]), str(r[1]), str(r[2]), int(r[3]))
            for r in c.execute(
                "SELECT r.id, r.app, r.state, (SELECT count(*) FROM tasks t WHERE t.run_id = r.id) "
                f"FROM runs r WHERE {' AND '.join(where)} "
                f"ORDER BY r.id LIMIT ?{self.skip_locked if tx is not None else ''}",
                (*params, batch),
            ).fetchall()
        ]
        if not candidates:
            return counts, after, False
        taken: list[_Run] = []
        total = 0
        for run in candidates:
            if taken and total + run[3] > TASKS_PER_BATCH:
                break
            taken.append(run)
            total += run[3]
        more = len(candidates) == batch or len(taken) < len(candidates)
        last = taken[-1][0]
        runs = taken
        if tx is not None and self.skip_locked:
            runs = self._lock_tasks(c, runs)
        runs = self._without_dependents(c, runs)
        counts["kept"] = len(taken) - len(runs)
        if not runs:
            return counts, last, more
        ids = [run[0] for run in runs]
        in_runs, runs_param = self._ids_in("run_id", ids)
        prefixes = [run_namespace(run[1], run[0]) for run in runs]
        if tx is None:
            for run in runs:
                counts[run[2]] += 1
            counts["runs"] = len(runs)
            counts["tasks"] = sum(run[3] for run in runs)
            counts["deps"] = self._count(
                c, f"deps WHERE task_id IN (SELECT id FROM tasks WHERE {in_runs})", runs_param
            )
            counts["events"] = self._count(c, f"events WHERE {in_runs}", runs_param)
            counts["log_lines"] = self._count(
                c, f"task_logs WHERE task_id IN (SELECT id FROM tasks WHERE {in_runs})", runs_param
            )
            counts["state_keys"] = self._live_keys(c, prefixes)
            return counts, last, more
        gone = c.execute(
            f"DELETE FROM deps WHERE task_id IN (SELECT id FROM tasks WHERE {in_runs}) "
            "RETURNING task_id",
            (runs_param,),
        ).fetchall()
        counts["deps"] = len(gone)
        for table in _BY_TASK:
            gone = c.execute(
                f"DELETE FROM {table} WHERE task_id IN (SELECT id FROM tasks WHERE {in_runs}) "
                "RETURNING task_id",
                (runs_param,),
            ).fetchall()
            if table == "task_logs":
                counts["log_lines"] = len(gone)
        counts["events"] = len(
            c.execute(f"DELETE FROM events WHERE {in_runs} RETURNING id", (runs_param,)).fetchall()
        )
        counts["tasks"] = len(
            c.execute(f"DELETE FROM tasks WHERE {in_runs} RETURNING id", (runs_param,)).fetchall()
        )
        in_ids, ids_param = self._ids_in("id", ids)
        for (state,) in c.execute(
            f"DELETE FROM runs WHERE {in_ids} AND state IN {_ENDED} RETURNING state",
            (ids_param,),
        ).fetchall():
            counts[state] += 1
            counts["runs"] += 1
        tx.news = False  # nobody waits on what ended long ago
        if isinstance(self, LeasesMixin) and self._live_keys(c, prefixes):
            # The namespaces' keys go as one revision of the state store, as
            # any delete does (watchers see it); last, after the task rows,
            # as fenced writers lock a task row before the keys' lock.
            meta, _ = self._begin_kv(tx)
            changed, revision = self._apply(tx, [KvDelete(p, True) for p in prefixes], None)
            counts["state_keys"] = changed
            counts["_kv"] = (meta.revision, revision, meta.retain)
            tx.news = True
        return counts, last, more

    def _lock_tasks(self, c: Conn, runs: list[_Run]) -> list[_Run]:
        """Lock the tasks of ``runs`` (PostgreSQL); the runs whose tasks were
        all free. Another transaction holding one (a retry re-opening the
        run, a submission taking a result as an input) keeps its run."""
        in_runs, param = self._ids_in("run_id", [run[0] for run in runs])
        held = dict(
            c.execute(
                f"SELECT run_id, count(*) FROM (SELECT run_id FROM tasks WHERE {in_runs}"
                f"{self.skip_locked}) s GROUP BY run_id",
                (param,),
            ).fetchall()
        )
        return [run for run in runs if held.get(run[0], 0) == run[3]]

    def _without_dependents(self, c: Conn, runs: list[_Run]) -> list[_Run]:
        """``runs`` but those with a task that an open task depends on."""
        if not runs:
            return runs
        in_runs, param = self._ids_in("t.run_id", [run[0] for run in runs])
        needed = {
            int(r[0])
            for r in c.execute(
                "SELECT DISTINCT t.run_id FROM tasks t JOIN deps d ON d.dep_id = t.id "
                f"JOIN tasks w ON w.id = d.task_id WHERE {in_runs} AND w.state IN {_OPEN_STATES}",
                (param,),
            ).fetchall()
        }
        return [run for run in runs if run[0] not in needed]

    def _count(self, c: Conn, rows: str, param: Any) -> int:
        return int(c.execute(f"SELECT count(*) FROM {rows}", (param,)).fetchone()[0])

    def _live_keys(self, c: Conn, prefixes: list[str]) -> int:
        """How many live state keys are under ``prefixes``, in one statement."""
        if not isinstance(self, LeasesMixin):
            return 0
        ranges: list[Any] = []
        for prefix in prefixes:
            ranges += [prefix, prefix_end(prefix)]
        values = ", ".join(["(?, ?)"] * len(prefixes))
        return int(
            c.execute(
                f"WITH p (lo, hi) AS (VALUES {values}) SELECT count(*) FROM p "
                "JOIN kv k ON k.key >= p.lo AND k.key < p.hi WHERE k.value IS NOT NULL",
                ranges,
            ).fetchone()[0]
        )

    # -- the space freed ----------------------------------------------------
    def file_space(self) -> tuple[int, int] | None:
        """SQLite: the store file's size and the bytes free inside it (pages
        that deleted rows left, which new rows reuse); None elsewhere."""
        if not self.url.startswith("sqlite:"):
            return None
        size = int(self._read("PRAGMA page_size")[0][0])
        pages = int(self._read("PRAGMA page_count")[0][0])
        free = int(self._read("PRAGMA freelist_count")[0][0])
        return pages * size, free * size

    def vacuum(self) -> tuple[int, int] | None:
        """SQLite: rewrite the store file without its free pages (``VACUUM``,
        which holds the write lock meanwhile and needs room for a copy of the
        file) and empty the write-ahead log; the file's size before and
        after. None on PostgreSQL, whose autovacuum makes the space of deleted
        rows reusable by itself."""
        before = self.file_space()
        if before is None:
            return None
        self._read("VACUUM")
        self._read("PRAGMA wal_checkpoint(TRUNCATE)")
        after = self.file_space()
        assert after is not None
        return before[0], after[0]
