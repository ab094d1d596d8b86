"""Benchmark of housekeeping on the embedded (SQLite) store (or on a
PostgreSQL server): what keeping a finished run costs, and how fast
``store.prune`` removes runs.

Prints, with durable commits (WAL, synchronous=FULL):

- the bytes a finished run keeps per task, and its events and dependency
  rows per task: one run of ``--tasks`` tiny tasks (``one.map``: an int
  argument, an int result) and one fan-out plus fan-in workflow of as many
  (``fan``: every task but the root a dependency of the gather), each run
  by a node in this process, measured as the growth of the pages in use
  (SQLite) or of the tables' total size after ``VACUUM FULL`` (PostgreSQL);
- the prune rate in runs/s and tasks/s, for many small runs (10 tasks each)
  and for a few large ones (``--tasks`` each): the finished runs are copied
  row for row with SQL (as many as ``--runs``), then aged and pruned; the
  longest batch (one transaction, the longest the write lock is held) is
  shown too;
- the machine's own baseline beside it: the same number of rows deleted
  with plain ``DELETE ... WHERE run_id IN (...)`` statements from a bare
  SQLite table (an integer key, a run id with an index, a small blob),
  as many rows per transaction as prune's batches hold.

    python bench/bench_prune.py [--quick] [--tasks 2000] [--runs 5000] [--postgresql URL]

With ``--postgresql`` each figure is taken in a new schema on that server.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import accord  # noqa: E402
import apps  # noqa: E402
from accord.store.sql.prune import RUNS_PER_BATCH, TASKS_PER_BATCH  # noqa: E402

DAY = 86400.0
# Every column of a task but its id, run, parent and idempotency key.
_TASK_COLS = (
    "seq, queue, name, state, priority, weight, size, args, n_deps, deps_remaining, "
    "max_attempts, max_losses, backoff, max_backoff, timeout, requires, resources, attempts, "
    "losses, fence, node_id, lease_expires_at, ready_at, deadline_at, late, req_key, limit_key, "
    "created_at, started_at, finished_at, result, error, error_type, traceback"
)


@contextmanager
def store_url(postgresql: str | None) -> Iterator[str]:
    """A fresh store: an SQLite file, or a new schema on the server."""
    if postgresql is None:
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{folder}/bench.db"
        return
    from bench_postgres import drop_schema, fresh_schema

    name, url = fresh_schema(postgresql)
    try:
        yield url
    finally:
        drop_schema(postgresql, name)


def used_bytes(app: accord.App) -> int:
    """The bytes the store's rows take: pages in use (SQLite), or the total
    size of its tables with their indexes and TOAST once ``VACUUM FULL``
    has rewritten them without dead row versions (PostgreSQL)."""
    store: Any = app.store
    if app.store_url.startswith("sqlite:"):
        size = store._read("PRAGMA page_size")[0][0]
        pages = store._read("PRAGMA page_count")[0][0]
        free = store._read("PRAGMA freelist_count")[0][0]
        return int((pages - free) * size)
    import psycopg

    with psycopg.connect(app.store_url, autocommit=True) as conn:
        conn.execute("VACUUM FULL")
    return int(
        store._read(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        )[0][0]
    )


def count(app: accord.App, statement: str, run_id: int) -> int:
    store: Any = app.store
    return int(store._read(statement, (run_id,))[0][0])


def kept_per_task(app: accord.App, label: str, start: Callable[[], int]) -> int:
    """Run one run to its end; print what it keeps per task. Its id."""
    before = used_bytes(app)
    with app.embedded_node(slots=2, mode="thread"):
        run_id = start()
        app.get_run(run_id).wait(timeout=600)
    tasks = count(app, "SELECT count(*) FROM tasks WHERE run_id = ?", run_id)
    events = count(app, "SELECT count(*) FROM events WHERE run_id = ?", run_id)
    deps = count(
        app,
        "SELECT count(*) FROM deps d JOIN tasks t ON t.id = d.task_id WHERE t.run_id = ?",
        run_id,
    )
    grown = used_bytes(app) - before
    print(
        f"  {label:<34} {tasks:>6} tasks  {grown / tasks:8.0f} bytes/task  "
        f"{events / tasks:.4f} events/task ({events} in all)  {deps / tasks:.2f} deps rows/task"
    )
    return run_id


def copy_runs(app: accord.App, template: int, copies: int) -> int:
    """Copy the rows of a finished run ``copies`` times (tasks, deps, events);
    the number of tasks made."""
    store: Any = app.store
    low, high = store._read("SELECT min(id), max(id) FROM tasks WHERE run_id = ?", (template,))[0]
    span = high - low + 1
    made = 0
    per_commit = max(1, 20_000 // span)
    for start in range(0, copies, per_commit):

        def body(tx: Any, first: int = start) -> int:
            c = tx.c
            top_task = c.execute("SELECT max(id) FROM tasks").fetchone()[0]
            top_run = c.execute("SELECT max(id) FROM runs").fetchone()[0]
            n = 0
            for k in range(first, min(first + per_commit, copies)):
                run_id = top_run + 1 + k - first
                shift = top_task + 1 + (k - first) * span - low
                c.execute(
                    "INSERT INTO runs (id, app, name, root_task_id, state, created_at, "
                    "finished_at, error) SELECT ?, app, name, root_task_id + ?, state, "
                    "created_at, finished_at, error FROM runs WHERE id = ?",
                    (run_id, shift, template),
                )
                c.execute(
                    f"INSERT INTO tasks (id, run_id, parent_id, idempotency_key, {_TASK_COLS}) "
                    f"SELECT id + ?, ?, parent_id + ?, NULL, {_TASK_COLS} FROM tasks "
                    "WHERE run_id = ?",
                    (shift, run_id, shift, template),
                )
                c.execute(
                    "INSERT INTO deps (task_id, pos, dep_id) SELECT d.task_id + ?, d.pos, "
                    "d.dep_id + ? FROM deps d JOIN tasks t ON t.id = d.task_id "
                    "WHERE t.run_id = ?",
                    (shift, shift, template),
                )
                c.execute(
                    "INSERT INTO events (at, run_id, task_id, node_id, kind, detail) "
                    "SELECT at, ?, task_id + ?, node_id, kind, detail FROM events "
                    "WHERE run_id = ?",
                    (run_id, shift, template),
                )
                n += span
            return n

        made += store._write(body)
    return made


def prune_rate(app: accord.App, label: str) -> int:
    """Age every run and prune them all; print the rates. The tasks removed."""
    store: Any = app.store
    store._write(
        lambda tx: tx.c.execute("UPDATE runs SET finished_at = finished_at - ?", (30 * DAY,))
    )
    write = store._write
    batches: list[float] = []

    def timed(body: Any) -> Any:
        began = time.perf_counter()
        try:
            return write(body)
        finally:
            batches.append(time.perf_counter() - began)

    store._write = timed
    try:
        began = time.perf_counter()
        counts = store.prune(7 * DAY)
        elapsed = time.perf_counter() - began
    finally:
        del store._write
    runs, tasks = counts["runs"], counts["tasks"]
    print(
        f"  {label:<34} {runs:>6} runs {tasks:>8} tasks in {elapsed:6.2f} s: "
        f"{runs / elapsed:8.0f} runs/s {tasks / elapsed:9.0f} tasks/s  "
        f"({len(batches)} batches, longest {max(batches) * 1e3:.0f} ms, "
        f"median {statistics.median(batches) * 1e3:.0f} ms)"
    )
    return int(tasks)


def raw_deletes(rows: int, per_run: int, per_commit: int) -> float:
    """Rows per second deleted by plain DELETEs of whole runs from a bare
    SQLite table (WAL, synchronous=FULL), ``per_commit`` rows per transaction."""
    with tempfile.TemporaryDirectory() as folder:
        conn = sqlite3.connect(f"{folder}/raw.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, run_id INTEGER, data BLOB)")
        conn.execute("CREATE INDEX t_run ON t (run_id)")
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO t (id, run_id, data) VALUES (?, ?, ?)",
            ((i, i // per_run, b"x" * 16) for i in range(rows)),
        )
        conn.execute("COMMIT")
        runs = -(-rows // per_run)
        step = max(1, per_commit // per_run)
        began = time.perf_counter()
        for first in range(0, runs, step):
            ids = tuple(range(first, min(first + step, runs)))
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"DELETE FROM t WHERE run_id IN ({', '.join('?' * len(ids))})", ids)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - began
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
        conn.close()
    return rows / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and smaller runs")
    parser.add_argument("--tasks", type=int, default=2000, help="tasks of the measured run")
    parser.add_argument("--runs", type=int, default=5000, help="small runs to prune")
    parser.add_argument("--postgresql", metavar="URL", help="measure on this server instead")
    args = parser.parse_args()
    tasks = 500 if args.quick else args.tasks
    small = 1000 if args.quick else args.runs
    large = 5 if args.quick else 20
    where = "PostgreSQL" if args.postgresql else "SQLite (WAL, synchronous=FULL)"
    print(f"housekeeping on {where}")

    app = apps.app
    print("what a finished run keeps:")
    with store_url(args.postgresql) as url:
        app.runtime.reopen(url)
        kept_per_task(
            app,
            f"one.map of {tasks} tiny tasks",
            lambda: apps.one.map([(i,) for i in range(tasks)])[0].info().run_id,
        )
        kept_per_task(app, f"fan({tasks - 2}) workflow", lambda: app.start(apps.fan, tasks - 2).id)
        app.close()

    print("prune rate (runs copied row for row from a real one, then pruned):")
    rates: list[tuple[int, int, int]] = []
    for label, width, copies in (
        (f"{small} runs of 10 tasks", 8, small),
        (f"{large} runs of {tasks} tasks", tasks - 2, large),
    ):
        with store_url(args.postgresql) as url:
            app.runtime.reopen(url)
            with app.embedded_node(slots=2, mode="thread"):
                template = app.start(apps.fan, width)
                template.wait(timeout=600)
            copy_runs(app, template.id, copies - 1)
            removed = prune_rate(app, label)
            per_batch = min(RUNS_PER_BATCH, max(1, TASKS_PER_BATCH // (width + 2))) * (width + 2)
            rates.append((removed, width + 2, per_batch))
            app.close()

    print("baseline: plain DELETEs of the same rows from a bare SQLite table:")
    for (rows, per_run, per_commit), label in zip(rates, ("small runs", "large runs"), strict=True):
        rate = raw_deletes(rows, per_run, per_commit)
        print(f"  {label:<34} {rows:>8} rows, {per_commit} per commit: {rate:9.0f} rows/s")


if __name__ == "__main__":
    main()
