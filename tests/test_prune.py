"""Housekeeping: ``store.prune`` and ``accord prune`` remove finished runs
with every row kept for them, and nothing else (accord.store.sql.prune)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import psycopg
import pytest

import accord
from accord.errors import ConfigError, NotFoundError, ObjectNotFound
from accord.store.sql.prune import PruneMixin
from accord.worker import housekeeping
from apps import flows as f
from support.common import sql, table_counts, wait_for
from test_cli import cli

DAY = 86400.0
WEEK = 7 * DAY


def age(store_url: str, run_ids: list[int], days: float = 30) -> None:
    """Make runs look as if they ended ``days`` ago."""
    for run_id in run_ids:
        sql(
            store_url,
            "UPDATE runs SET finished_at = finished_at - ? WHERE id = ?",
            (days * DAY, run_id),
        )


def rows_of(store_url: str, run_ids: list[int]) -> dict[str, int]:
    """The rows kept for these runs, table by table."""
    marks = ", ".join("?" * len(run_ids))
    ids = tuple(run_ids)
    tasks = f"SELECT id FROM tasks WHERE run_id IN ({marks})"

    def count(statement: str) -> int:
        return int(sql(store_url, statement, ids)[0][0])

    return {
        "runs": count(f"SELECT count(*) FROM runs WHERE id IN ({marks})"),
        "tasks": count(f"SELECT count(*) FROM tasks WHERE run_id IN ({marks})"),
        "deps": count(f"SELECT count(*) FROM deps WHERE task_id IN ({tasks})"),
        "events": count(f"SELECT count(*) FROM events WHERE run_id IN ({marks})"),
    }


def finished(flows: accord.App) -> tuple[accord.Run, accord.Run, accord.Run]:
    """Two runs that succeeded and one that failed."""
    with flows.embedded_node(slots=2):
        one = flows.start(f.dag, 6, 2)
        two = flows.start(f.dag, 4, 2)
        bad = flows.start(f.failing_workflow, "no")
        assert one.wait(timeout=60) == sum(i * i for i in range(6))
        assert two.wait(timeout=60) == sum(i * i for i in range(4))
        with pytest.raises(accord.TaskError):
            bad.wait(timeout=60)
    return one, two, bad


def test_old_finished_runs_go_with_all_their_rows(flows: accord.App, store_url: str) -> None:
    one, two, bad = finished(flows)
    for run in (one, two, bad):
        flows.state.run(run.id).put("note", f"of run {run.id}")
    flows.state.put("shared", "stays")
    age(store_url, [one.id, bad.id])
    old = rows_of(store_url, [one.id, bad.id])
    assert old["tasks"] == 10 + 4 and old["deps"] > 0 and old["events"] >= 2
    root = one.info().root_task_id
    kept = rows_of(store_url, [two.id])
    before = table_counts(store_url)

    dry = flows.store.prune(WEEK, dry_run=True)
    assert table_counts(store_url) == before  # a dry run changes nothing
    expected = {
        "runs": 2,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 0,
        **{k: old[k] for k in ("tasks", "deps", "events")},
        "log_lines": 0,
        "state_keys": 2,
        "kept": 0,
    }
    assert dry == expected

    # Only the failed one, then the rest.
    only_failed = flows.store.prune(WEEK, states=["failed"])
    assert only_failed["runs"] == only_failed["failed"] == 1 and only_failed["succeeded"] == 0
    assert flows.store.prune(WEEK) == {k: expected[k] - only_failed[k] for k in expected}

    assert rows_of(store_url, [one.id, bad.id]) == {"runs": 0, "tasks": 0, "deps": 0, "events": 0}
    assert rows_of(store_url, [two.id]) == kept
    after = table_counts(store_url)
    for table in ("runs", "tasks", "deps", "events"):
        assert after[table] == before[table] - old[table], table
    untouched = {"nodes", "limits", "objects", "object_chunks", "mailbox_messages", "schedules"}
    assert {t: after[t] for t in untouched} == {t: before[t] for t in untouched}
    # The run-scoped state of a removed run goes (one revision of deletes); the rest stays.
    assert flows.state.run(one.id).get("note") is None
    assert flows.state.run(bad.id).get("note") is None
    assert flows.state.run(two.id).value("note") == f"of run {two.id}"
    assert flows.state.value("shared") == "stays"
    with pytest.raises(NotFoundError):
        flows.store.run(one.id)
    assert root is not None
    with pytest.raises(NotFoundError):
        flows.store.task(root)
    assert flows.store.prune(WEEK)["runs"] == 0  # nothing left to do


def test_the_logs_of_a_pruned_runs_tasks_go(flows: accord.App, store_url: str) -> None:
    one, two, _ = finished(flows)
    for run in (one, two):
        task = run.info().root_task_id
        sql(
            store_url,
            "INSERT INTO task_log_attempts (task_id, attempt, fence, bytes) VALUES (?, 1, 1, 10)",
            (task,),
        )
        for seq in range(3):
            sql(
                store_url,
                "INSERT INTO task_logs (task_id, attempt, seq, at, stream, text, size) "
                "VALUES (?, 1, ?, 0, 'stdout', 'hello', 5)",
                (task, seq),
            )
    age(store_url, [one.id])
    assert flows.store.prune(WEEK, dry_run=True)["log_lines"] == 3
    assert flows.store.prune(WEEK)["log_lines"] == 3
    counts = table_counts(store_url)
    assert counts["task_logs"] == 3 and counts["task_log_attempts"] == 1
    lines, _ = flows.store.task_logs(two.info().root_task_id or 0)
    assert [line.text for line in lines] == ["hello"] * 3


def test_running_and_recent_runs_stay(flows: accord.App, store_url: str) -> None:
    (recent,) = finished(flows)[:1]
    waiting = f.square.submit(3)  # no node: its run stays open
    open_run = waiting.info().run_id
    # Even with an old end time, a run that is running stays; and so does one
    # marked ended while one of its tasks is open.
    sql(store_url, "UPDATE runs SET finished_at = 1 WHERE id = ?", (open_run,))
    odd = f.square.submit(4)
    odd_run = odd.info().run_id
    sql(store_url, "UPDATE runs SET state = 'succeeded', finished_at = 1 WHERE id = ?", (odd_run,))
    before = table_counts(store_url)
    counts = flows.store.prune(60)
    assert counts["runs"] == 0
    assert table_counts(store_url) == before
    assert flows.store.run(recent.id).state == "succeeded"
    with flows.embedded_node(slots=2):
        assert waiting.result(timeout=60) == 9
        assert odd.result(timeout=60) == 16


def test_an_old_run_stays_while_an_open_task_needs_its_result(
    flows: accord.App, store_url: str
) -> None:
    with flows.embedded_node(slots=1):
        first = f.square.submit(7)
        assert first.result(timeout=60) == 49
    old_run = first.info().run_id
    age(store_url, [old_run])
    needs = f.echo.submit(first)  # another run, waiting for a node: it reads 49 when it runs
    counts = flows.store.prune(WEEK)
    assert counts["runs"] == 0 and counts["kept"] == 1
    assert flows.store.run(old_run).state == "succeeded"
    with flows.embedded_node(slots=1):
        assert needs.result(timeout=60) == 49
    assert flows.store.prune(WEEK)["runs"] == 1
    assert rows_of(store_url, [old_run])["tasks"] == 0
    assert needs.result(timeout=5) == 49  # what it read stays its own


def test_prune_goes_in_bounded_batches(
    flows: accord.App, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with flows.embedded_node(slots=2):
        handles = [f.square.submit(i) for i in range(5)]
        assert [h.result(timeout=60) for h in handles] == [i * i for i in range(5)]
    age(store_url, [h.info().run_id for h in handles])
    store = flows.store
    commits: list[int] = []
    write = store._write  # type: ignore[attr-defined]

    def counted(body: Any) -> Any:
        commits.append(1)
        return write(body)

    monkeypatch.setattr(store, "_write", counted)
    assert store.prune(WEEK, batch=2, dry_run=True)["runs"] == 5
    assert commits == []  # a dry run reads
    assert store.prune(WEEK, batch=2)["runs"] == 2 + 2 + 1
    assert len(commits) == 3


def test_a_batch_holds_a_bounded_number_of_tasks(
    flows: accord.App, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import accord.store.sql.prune as prune_module

    one, two, bad = finished(flows)
    age(store_url, [one.id, two.id, bad.id])
    monkeypatch.setattr(prune_module, "TASKS_PER_BATCH", 1)
    store = flows.store
    commits: list[int] = []
    write = store._write  # type: ignore[attr-defined]
    monkeypatch.setattr(store, "_write", lambda body: commits.append(1) or write(body))
    assert store.prune(WEEK)["runs"] == 3
    assert len(commits) == 3  # a run bigger than the bound goes alone, whole


@pytest.mark.parametrize(
    ("older_than", "options"),
    [
        (0, {}),
        (-5, {}),
        (math.nan, {}),
        (math.inf, {}),
        (True, {}),
        ("7d", {}),
        (60, {"batch": 0}),
        (60, {"states": ["running"]}),
        (60, {"states": "failed"}),
        (60, {"app": 3}),
    ],
)
def test_bad_arguments_are_refused_and_change_nothing(
    flows: accord.App, store_url: str, older_than: Any, options: dict[str, Any]
) -> None:
    (one,) = finished(flows)[:1]
    age(store_url, [one.id])
    before = table_counts(store_url)
    with pytest.raises(ConfigError):
        flows.store.prune(older_than, **options)
    assert table_counts(store_url) == before


def test_app_prune_takes_only_its_own_runs(flows: accord.App, store_url: str) -> None:
    (one,) = finished(flows)[:1]
    age(store_url, [one.id])
    sql(store_url, "UPDATE runs SET app = 'other' WHERE id = ?", (one.id,))
    assert flows.prune(WEEK)["runs"] == 0
    sql(store_url, "UPDATE runs SET app = 'flows' WHERE id = ?", (one.id,))
    assert flows.prune(WEEK, dry_run=True)["runs"] == 1
    assert flows.prune(WEEK)["runs"] == 1


def test_a_run_whose_rows_another_transaction_holds_is_left(
    flows: accord.App, store_url: str, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite's one writer holds the whole database: nothing to skip")
    (one,) = finished(flows)[:1]
    age(store_url, [one.id])
    with psycopg.connect(store_url) as holder:
        # A submission taking one of its results as an input holds it so.
        holder.execute(
            "SELECT id FROM tasks WHERE run_id = %s ORDER BY id LIMIT 1 FOR SHARE", (one.id,)
        )
        counts = flows.store.prune(WEEK)
        assert counts["runs"] == 0 and counts["kept"] == 1
        holder.rollback()
    assert flows.store.prune(WEEK)["runs"] == 1


def test_an_object_only_a_pruned_run_referenced_becomes_collectable(
    flows: accord.App, store_url: str, accord_env: dict[str, str], tmp_path: Path
) -> None:
    objects = flows.objects
    only_old = objects.put(b"only the old run" * 100)
    only_kept = objects.put(b"only the kept run" * 100)
    both = objects.put(b"both runs" * 100)
    with flows.embedded_node(slots=2):
        old = f.echo.submit([only_old, both])
        kept = f.echo.submit([only_kept, both])
        assert old.result(timeout=60) == [only_old, both]
        assert kept.result(timeout=60) == [only_kept, both]
    mine = {only_old.digest, only_kept.digest, both.digest}
    assert not mine & {row.digest for row in objects.gc(dry_run=True, grace=0).collected}
    age(store_url, [old.info().run_id])
    assert flows.store.prune(WEEK)["runs"] == 1

    done = cli(accord_env, tmp_path, "objects", "gc", "--grace", "0")
    assert done.returncode == 0, done.stderr
    assert f"collected {only_old.digest}" in done.stdout
    assert only_kept.digest not in done.stdout and both.digest not in done.stdout
    with pytest.raises(ObjectNotFound):
        objects.get(only_old)
    assert objects.get(only_kept) == b"only the kept run" * 100
    assert objects.get(both) == b"both runs" * 100
    assert kept.result(timeout=5) == [only_kept, both]


def test_the_command(
    flows: accord.App, store_url: str, accord_env: dict[str, str], tmp_path: Path, backend: str
) -> None:
    one, two, bad = finished(flows)
    age(store_url, [one.id])
    before = table_counts(store_url)

    dry = cli(accord_env, tmp_path, "prune", "--older-than", "7d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would remove 1 run(s) (1 succeeded), 10 task(s)" in dry.stdout
    assert "nothing was changed" in dry.stdout
    assert table_counts(store_url) == before

    done = cli(accord_env, tmp_path, "prune", "--older-than", "2w", "--state", "succeeded")
    assert done.returncode == 0, done.stderr
    assert "removed 1 run(s) (1 succeeded), 10 task(s)" in done.stdout
    assert rows_of(store_url, [one.id])["tasks"] == 0
    assert flows.store.run(two.id).state == "succeeded"

    age(store_url, [two.id, bad.id])
    done = cli(accord_env, tmp_path, "prune", "--older-than", "12h", "--vacuum")
    assert done.returncode == 0, done.stderr
    assert "removed 2 run(s) (1 succeeded, 1 failed)" in done.stdout
    if backend == "sqlite":
        assert "vacuumed: the store file went from" in done.stdout
    else:
        assert "autovacuum" in done.stdout

    for value in ("7x", "0d", "-1d", "7"):
        wrong = cli(accord_env, tmp_path, "prune", "--older-than", value)
        assert wrong.returncode == 2, (value, wrong.stdout, wrong.stderr)
        assert f"--older-than {value!r} is not a duration" in wrong.stderr
        assert "90s, 30m, 12h, 7d, 2w" in wrong.stderr
    wrong = cli(accord_env, tmp_path, "prune", "--older-than", "1d", "--state", "running")
    assert wrong.returncode == 2 and "--state 'running'" in wrong.stderr


@pytest.mark.sqlite_only
def test_the_file_keeps_its_size_until_vacuum(flows: accord.App, store_url: str) -> None:
    with flows.embedded_node(slots=2):
        run = flows.start(f.dag, 400, 20)
        run.wait(timeout=60)
    age(store_url, [run.id])
    store = flows.store
    assert isinstance(store, PruneMixin)
    size, free = store.file_space() or (0, 0)
    assert store.prune(WEEK)["tasks"] == 400 + 20 + 1 + 1
    after_size, after_free = store.file_space() or (0, 0)
    assert after_size == size and after_free > free  # deleted rows leave free pages
    before, shrunk = store.vacuum() or (0, 0)
    assert before == size and shrunk < size
    assert store.file_space() == (shrunk, 0)


def test_a_node_with_retention_prunes_in_the_background(
    flows: accord.App, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (one,) = finished(flows)[:1]
    age(store_url, [one.id])
    monkeypatch.setattr(housekeeping, "RETENTION_DELAY", 0.05)
    monkeypatch.setattr(housekeeping, "RETENTION_EVERY", 0.1)
    with pytest.raises(ConfigError):
        flows.node(retention=0)

    def gone() -> bool:
        try:
            flows.store.run(one.id)
        except NotFoundError:
            return True
        return False

    with flows.embedded_node(slots=1, mode="thread", retention=WEEK):
        wait_for(gone, 30, "the node's prune")
        assert f.square.submit(5).result(timeout=60) == 25  # the recent run stays
