"""The command line as people type it: a store that does not exist, which
store is in use, what a finished or missing run answers, help, version."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pytest

import accord
from apps import flows as f
from support.common import table_counts
from test_cli import cli

READERS = [
    ["runs"],
    ["tasks", "1"],
    ["status"],
    ["events"],
    ["nodes"],
    ["info"],
    ["cancel", "1"],
    ["state", "get", "k", "--app", "a"],
    ["state", "delete", "k", "--app", "a"],
    ["objects", "gc"],
    ["objects", "ls"],
]


@pytest.mark.sqlite_only
@pytest.mark.parametrize("args", READERS, ids=lambda a: " ".join(a[:2]))
def test_commands_never_create_a_store(
    accord_env: dict[str, str], tmp_path: Path, args: list[str]
) -> None:
    """A mistyped path is an error, not a new empty store."""
    typo = tmp_path / "stroe.db"
    done = cli(accord_env, tmp_path, *args, "--store", f"sqlite:///{typo}")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"error: no accord store at sqlite:///{typo}" in done.stderr
    assert "accord migrate creates a store" in done.stderr
    assert not typo.exists()
    # The default store is not made either (nor its .accord directory).
    env = {k: v for k, v in accord_env.items() if k != "ACCORD_STORE"}
    done = cli(env, tmp_path, *args)
    assert done.returncode == 2 and "no accord store at sqlite:///.accord/accord.db" in done.stderr
    assert not (tmp_path / ".accord").exists()


@pytest.mark.sqlite_only
def test_migrate_says_what_it_did(accord_env: dict[str, str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    created = cli(accord_env, tmp_path, "migrate", "--store", url)
    assert created.returncode == 0, created.stderr
    assert f"{url}: created (schema " in created.stdout
    again = cli(accord_env, tmp_path, "migrate", "--store", url)
    assert "up to date" in again.stdout and "created" not in again.stdout
    assert cli(accord_env, tmp_path, "runs", "--store", url).returncode == 0


def test_info_names_the_store_in_use(
    store_url: str, accord_env: dict[str, str], tmp_path: Path, flows: accord.App
) -> None:
    f.square.submit(3)  # the store exists, with one run
    done = cli(accord_env, tmp_path, "info", "--json")
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["store"] == flows.store.url
    assert facts["backend"] == ("sqlite" if store_url.startswith("sqlite:") else "postgresql")
    assert facts["schema"] == flows.store.schema_version()
    assert facts["last_run"] == 1 and facts["live_nodes"] == 0
    assert facts["accord"] == version("accord")
    text = cli(accord_env, tmp_path, "info")
    assert f"store:      {flows.store.url}" in text.stdout
    status = cli(accord_env, tmp_path, "status")
    assert status.stdout.startswith(f"store: {flows.store.url}")


def test_what_a_missing_or_ended_run_answers(
    accord_env: dict[str, str], tmp_path: Path, flows: accord.App
) -> None:
    handle = f.square.submit(4)
    with flows.embedded_node(slots=1):
        assert handle.result(timeout=30) == 16
    run_id = handle.info().run_id
    missing = cli(accord_env, tmp_path, "events", "9999")
    assert missing.returncode == 2 and "error: run 9999 does not exist" in missing.stderr
    ended = cli(accord_env, tmp_path, "cancel", str(run_id))
    assert ended.returncode == 1
    assert f"error: run {run_id} has already ended (succeeded); nothing to cancel" in ended.stderr
    absent = cli(accord_env, tmp_path, "state", "get", "nothing", "--app", "flows")
    assert absent.returncode == 1 and "error: key 'nothing' is absent" in absent.stderr


def test_help_and_version(accord_env: dict[str, str], tmp_path: Path) -> None:
    version = cli(accord_env, tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.startswith("accord ")
    helped = cli(accord_env, tmp_path, "worker", "--help")
    for text in ("tasks run at once", "handed back", "HOST:PID"):
        assert text in helped.stdout, helped.stdout


def test_node_speed_has_a_unit(
    accord_env: dict[str, str], tmp_path: Path, flows: accord.App
) -> None:
    with flows.embedded_node(slots=1, speed=3430.0):
        table = cli(accord_env, tmp_path, "nodes").stdout
        (listed,) = [
            json.loads(line)
            for line in cli(accord_env, tmp_path, "nodes", "--json").stdout.splitlines()
        ]
    assert "3,430 size/s" in table, table
    assert listed["speed"] == 3430.0 and listed["queue"] == "flows" and listed["slots"] == 1


def test_commands_never_create_a_postgresql_store(
    pg_url: str, accord_env: dict[str, str], tmp_path: Path
) -> None:
    """On PostgreSQL a database without accord's tables is no store: reading
    commands say so and create none; ``migrate`` creates them."""
    for args in (["runs"], ["status"], ["state", "get", "k", "--app", "a"], ["objects", "ls"]):
        done = cli(accord_env, tmp_path, *args, "--store", pg_url)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "no accord store at" in done.stderr and "has no accord tables" in done.stderr
    assert table_counts(pg_url) == {}
    created = cli(accord_env, tmp_path, "migrate", "--store", pg_url)
    assert created.returncode == 0 and ": created (schema " in created.stdout, created.stderr
    assert cli(accord_env, tmp_path, "runs", "--store", pg_url).returncode == 0


def test_a_run_that_succeeded_with_failures_says_so(
    accord_env: dict[str, str], tmp_path: Path, basic: accord.App
) -> None:
    """The failures a workflow caught are still failures: the run succeeds,
    and the command, the progress bar and ``accord runs`` count them."""
    done = cli(accord_env, tmp_path, "run", "apps.basic:tolerant", "3", "--slots", "2")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == 0 + 2 + 4
    assert "run 1 succeeded, though 1 failed, 1 cancelled of its 6 tasks" in done.stderr
    assert "1 failed, 1 cancelled" in done.stderr.split("run 1 succeeded")[0]  # the bar
    runs = cli(accord_env, tmp_path, "runs")
    (row,) = [line for line in runs.stdout.splitlines() if "tolerant" in line]
    assert "succeeded" in row and "4/6 1 failed, 1 cancelled" in row, row


def test_run_detached_then_watched(
    accord_env: dict[str, str], tmp_path: Path, flows: accord.App
) -> None:
    detached = cli(accord_env, tmp_path, "run", "apps.flows:dag", "6", "2", "--detach")
    assert detached.returncode == 0, detached.stderr
    run_id = int(detached.stdout)
    assert "none is live now" in detached.stderr and f"accord watch {run_id}" in detached.stderr
    assert flows.store.run(run_id).state == "running"  # nothing ran it here
    with flows.embedded_node(slots=2):
        watched = cli(accord_env, tmp_path, "watch", str(run_id))
    assert watched.returncode == 0, watched.stderr
    assert json.loads(watched.stdout) == sum(i * i for i in range(6))
    assert f"run {run_id} (dag)" in watched.stderr  # the progress bar's label


def test_wait_with_a_progress_bar_from_python(
    flows: accord.App, capsys: pytest.CaptureFixture[str]
) -> None:
    run = flows.start(f.dag, 6, 2)
    with pytest.raises(TimeoutError, match=f"run {run.id} did not finish within 0.3 s"):
        run.wait(0.3, progress=True)  # no node yet
    with flows.embedded_node(slots=2):
        assert run.wait(60, progress=True) == sum(i * i for i in range(6))
    shown = capsys.readouterr().err
    assert f"run {run.id}" in shown and "10/10" in shown  # 1 + 6 leaves + 2 groups + 1
