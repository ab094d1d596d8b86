"""Negative controls: the queue-accounting checker bites.

A checker that passes everything proves nothing, so each test first checks a
clean history (all zeros), then doctors it the way a broken runtime would
(a lost task, a result recorded by a stale attempt, a task recorded twice,
one fence run twice, a wrong value, a re-execution no fault explains) and
asserts the checker reports each.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

import accord
from accord.tasks.handles import Run
from apps import chaos
from support.checker import Row, account, hits, report, snapshot
from support.recorder import RECORD_ENV, Execution, Fault

pytestmark = pytest.mark.chaos


def _history(n: int) -> tuple[list[int], list[Row], list[Execution]]:
    ids = list(range(1, n + 1))
    rows = [
        Row(
            id=i,
            run_id=1,
            name="work",
            state="succeeded",
            fence=1,
            attempts=1,
            max_attempts=1,
            result={"key": i, "value": chaos.square(i), "task_id": i, "fence": 1},
            error=None,
            error_type=None,
        )
        for i in ids
    ]
    execs = [
        Execution(i, 1, 1, 1, 100 + i, 50, i, float(i), float(i) + 0.5, chaos.square(i))
        for i in ids
    ]
    return ids, rows, execs


def test_checker_reports_a_doctored_history() -> None:
    ids, rows, execs = _history(8)
    expected = {i: chaos.square(i) for i in ids}
    clean = account(ids, rows, execs, expected=expected)
    assert clean["completed"] == clean["submitted"] == 8
    assert clean["lost"] == clean["duplicated"] == clean["unexpected"] == 0
    assert clean["invariant_violations"] == 0 and clean["excess_executions"] == 0

    by_id = {r.id: r for r in rows}
    del by_id[1]  # lost: acknowledged, no row
    by_id[2] = dataclasses.replace(by_id[2], state="running")  # lost: never finished
    by_id[3] = dataclasses.replace(by_id[3], fence=2)  # a stale (fence 1) result accepted
    by_id[9] = dataclasses.replace(by_id[4], id=9, result={**by_id[4].result, "task_id": 9})
    by_id[5] = dataclasses.replace(by_id[5], result={**by_id[5].result, "value": -1})
    doctored_execs = [
        *execs,
        dataclasses.replace(execs[5], pid=999),  # task 6's fence 1 started twice
        dataclasses.replace(execs[6], fence=2, start=20.0, end=21.0),  # 7 ran again, no fault
        dataclasses.replace(execs[7], fence=2, start=20.0, end=21.0),  # 8 ran again after a kill
    ]
    doctored_execs[7] = dataclasses.replace(execs[7], ppid=60, end=None)  # cut short by:
    kill = Fault("kill", 0, pid=60, start=10.0, end=10.0)
    by_id[8] = dataclasses.replace(by_id[8], fence=2, result={**by_id[8].result, "fence": 2})
    figures = account(ids, list(by_id.values()), doctored_execs, expected=expected, faults=[kill])
    report("negative-control-synthetic", figures)
    assert figures["lost"] == 2
    assert figures["unexpected"] == 1  # row 9
    # 3 (stale fence), 4/9 (key recorded twice), 5 (wrong value), 6 (fence run twice)
    assert figures["duplicated"] == 4
    assert set(figures["duplicated_ids"]) == {3, 5, 6, 9}
    # Task 7's re-execution has no fault to explain it; task 8's second run
    # is explained by the kill of its node (pid 50) after its first run began.
    assert figures["excess_executions"] == 2  # 6 (same fence twice) and 7
    assert figures["invariant_violations"] >= 8
    assert figures["reclaim_gap_max_s"] == 10.0  # task 8: kill at 10, next start at 20


@pytest.mark.sqlite_only
@pytest.mark.timeout(60)
def test_checker_reports_a_doctored_store(
    tmp_path: Path, app: accord.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real run's store and executions pass; the same store with a row
    deleted, a fence bumped behind its result and a row copied does not."""
    record_dir = tmp_path / "executions"
    record_dir.mkdir()
    monkeypatch.setenv(RECORD_ENV, str(record_dir))
    handles = chaos.work.map(list(range(20)))
    run = Run(app, app.store.task(handles[0].id).run_id)
    with app.embedded_node(mode="thread", slots=2):
        run.wait(timeout=30)
    from support.recorder import read_executions

    execs = read_executions(record_dir)
    ids = [h.id for h in handles]
    expected = {h.id: chaos.square(k) for k, h in enumerate(handles)}
    clean = account(ids, snapshot(app.store, [run.id]), execs, expected=expected)
    assert clean["completed"] == 20 and clean["executions"] == 20
    assert clean["invariant_violations"] == 0, clean["violations"]

    db = app.store.url.removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM tasks WHERE id = ?", (ids[0],))
        conn.execute("UPDATE tasks SET fence = fence + 1 WHERE id = ?", (ids[1],))
        columns = [r[1] for r in conn.execute("PRAGMA table_info(tasks)") if r[1] != "id"]
        names = ", ".join(columns)
        conn.execute(
            f"INSERT INTO tasks ({names}) SELECT {names} FROM tasks WHERE id = ?", (ids[2],)
        )
    conn.close()
    figures = account(ids, snapshot(app.store, [run.id]), execs, expected=expected)
    report("negative-control-store", figures)
    assert figures["lost"] == 1
    assert figures["unexpected"] == 1
    assert figures["duplicated"] == 2  # the fence-bumped row and the copy
    assert figures["completed"] == 19


def test_a_blocking_fault_also_hits_what_ran_while_it_lasted() -> None:
    """A held store lock hits an attempt that started and ended during it
    (its result waited for the lock); a kill at the same time does not, and
    neither hits an attempt that started after the fault ended."""
    during = Execution(1, 1, 1, 1, 101, 50, 1, 20.0, 20.1)
    after = Execution(2, 1, 1, 1, 102, 50, 2, 40.0, 40.1)
    locked = Fault("store_locked", 0, pid=50, start=10.0, end=30.0, blocks=True)
    killed = Fault("kill", 0, pid=50, start=10.0, end=30.0)
    assert hits([during, after], [locked]) == {1: 1}
    assert hits([during, after], [killed]) == {}
