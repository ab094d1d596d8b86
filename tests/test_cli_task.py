"""Diagnosing and running again from the shell: ``accord task``, filters and
``--json`` on the reading commands, ``tasks --tree``, ``watch``, ``retry``
and ``rerun``, on both backends, through the real command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import accord
from accord import TaskState
from test_cli import cli


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _failed_run(env: dict[str, str], cwd: Path, target: str, path: Path) -> int:
    done = cli(env, cwd, "run", target, str(path), "--no-progress", "--slots", "2")
    assert done.returncode == 1, (done.stdout, done.stderr)
    return int(done.stderr.split("run ", 1)[1].split()[0])


def test_a_failed_run_diagnosed(
    accord_env: dict[str, str], tmp_path: Path, basic: accord.App
) -> None:
    flag = tmp_path / "flag"
    run_id = _failed_run(accord_env, tmp_path, "apps.basic:through_file", flag)
    tasks = {t.name.rsplit(".", 1)[-1]: t for t in basic.store.tasks(run_id)}
    failed, total = tasks["needs_file"], tasks["total"]

    shown = cli(accord_env, tmp_path, "task", str(failed.id))
    assert shown.returncode == 0, shown.stderr
    assert f"task {failed.id} (" in shown.stdout and "state:      failed" in shown.stdout
    assert f"arguments:  ('{flag}')" in shown.stdout, shown.stdout
    assert "FileNotFoundError" in shown.stdout and "Traceback" in shown.stdout
    # A task cancelled through it names it as the root cause.
    cause = cli(accord_env, tmp_path, "task", str(total.id))
    assert f"root cause: task {failed.id} (" in cause.stdout
    assert "FileNotFoundError" in cause.stdout
    assert f"<result of task {failed.id}>" in cause.stdout  # its argument, not yet a value
    document = json.loads(cli(accord_env, tmp_path, "task", str(total.id), "--json").stdout)
    assert document["task"]["state"] == "cancelled"
    assert document["root_cause"]["id"] == failed.id
    assert {i["id"] for i in document["inputs"]} == {failed.id, tasks["add"].id}

    only_failed = _lines(
        cli(accord_env, tmp_path, "tasks", str(run_id), "--state", "failed", "--json").stdout
    )
    assert [t["id"] for t in only_failed] == [failed.id]
    assert only_failed[0]["error_type"] == "FileNotFoundError"
    table = cli(accord_env, tmp_path, "tasks", str(run_id)).stdout
    assert f"through task {failed.id} (" in table  # the title names the root cause
    tree = cli(accord_env, tmp_path, "tasks", str(run_id), "--tree").stdout
    assert f"run {run_id} (through_file): failed" in tree
    assert f"{total.id} " in tree and f"<- {failed.id}, {tasks['add'].id}" in tree

    runs = _lines(cli(accord_env, tmp_path, "runs", "--state", "failed", "--json").stdout)
    assert [r["id"] for r in runs] == [run_id] and runs[0]["name"] == "through_file"
    assert cli(accord_env, tmp_path, "runs", "--state", "succeeded", "--json").stdout == ""
    bad = cli(accord_env, tmp_path, "runs", "--state", "done")
    assert bad.returncode == 2 and "is not a state; use one of running" in bad.stderr
    events = _lines(
        cli(accord_env, tmp_path, "events", str(run_id), "--kind", "failed", "--json").stdout
    )
    assert [e["task_id"] for e in events] == [failed.id]
    assert cli(accord_env, tmp_path, "events", "--since", "1h", "--json").stdout
    late = cli(accord_env, tmp_path, "events", "--since", "soon")
    assert late.returncode == 2 and "is not a duration" in late.stderr

    watched = cli(accord_env, tmp_path, "watch", str(run_id))
    assert watched.returncode == 1 and f"run {run_id} failed" in watched.stderr


def test_retry_runs_the_failure_and_what_it_cancelled(
    accord_env: dict[str, str], tmp_path: Path, basic: accord.App
) -> None:
    flag = tmp_path / "flag"
    run_id = _failed_run(accord_env, tmp_path, "apps.basic:through_file", flag)
    tasks = {t.name.rsplit(".", 1)[-1]: t for t in basic.store.tasks(run_id)}
    failed = tasks["needs_file"]
    # Not a task that succeeded, nor one waiting on the failure.
    fine = cli(accord_env, tmp_path, "run", "apps.basic:fan", "2", "--no-progress")
    assert fine.returncode == 0, fine.stderr
    (done,) = basic.store.runs(1)
    succeeded = basic.store.tasks(done.id)[0].id
    done_already = cli(accord_env, tmp_path, "retry", str(succeeded))
    assert done_already.returncode == 2 and "only a failed or cancelled task" in done_already.stderr
    waiting = cli(accord_env, tmp_path, "retry", str(tasks["total"].id))
    assert (
        waiting.returncode == 2 and f"retry that one (accord retry {failed.id})" in waiting.stderr
    )

    flag.write_text("fixed")
    again = cli(accord_env, tmp_path, "retry", str(failed.id))
    assert again.returncode == 0, again.stderr
    assert f"task {failed.id} (needs_file) runs again; with it: task {tasks['total'].id}" in (
        again.stdout
    )
    assert basic.store.run(run_id).state == "running"
    info = basic.store.task(failed.id)
    assert info.state is TaskState.READY and info.attempts == 0 and info.error is None
    with basic.embedded_node(slots=2):
        assert basic.get_run(run_id).wait(timeout=60) == 12
    assert basic.store.task(failed.id).fence == failed.fence + 1  # fenced above the old attempt
    watched = cli(accord_env, tmp_path, "watch", str(run_id))
    assert watched.returncode == 0 and json.loads(watched.stdout) == 12


def test_retry_of_a_task_its_workflow_raised_runs_the_workflow_again(
    accord_env: dict[str, str], tmp_path: Path, basic: accord.App
) -> None:
    flag = tmp_path / "flag"
    run_id = _failed_run(accord_env, tmp_path, "apps.basic:awaits_file", flag)
    (failed,) = [t for t in basic.store.tasks(run_id) if t.name.endswith("needs_file")]
    flag.write_text("fixed")
    again = cli(accord_env, tmp_path, "retry", str(failed.id))
    assert again.returncode == 0, again.stderr
    with basic.embedded_node(slots=2):
        assert basic.get_run(run_id).wait(timeout=60) == 11
    # The workflow found the child it had made: no second child.
    names = [t.name for t in basic.store.tasks(run_id)]
    assert sum(n.endswith("needs_file") for n in names) == 1


def test_rerun_starts_a_new_run_with_the_same_arguments(
    accord_env: dict[str, str], tmp_path: Path, basic: accord.App
) -> None:
    flag = tmp_path / "flag"
    run_id = _failed_run(accord_env, tmp_path, "apps.basic:through_file", flag)
    flag.write_text("fixed")
    again = cli(accord_env, tmp_path, "rerun", str(run_id))
    assert again.returncode == 0, again.stderr
    new_id = int(again.stdout.split("run ", 1)[1].split()[0])
    assert new_id != run_id and f"a rerun of run {run_id}" in again.stdout
    with basic.embedded_node(slots=2):
        assert basic.get_run(new_id).wait(timeout=60) == 12
    assert basic.store.run(run_id).state == "failed"  # the old one stays as it was
    missing = cli(accord_env, tmp_path, "rerun", "999")
    assert missing.returncode == 2 and "run 999 does not exist" in missing.stderr
