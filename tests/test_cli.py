"""The ``accord`` command, run as ``python -m accord`` in subprocesses."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import accord
from accord.store import open_store
from accord.store.sqlite.store import SCHEMA_VERSION
from apps import flows as f


def cli(
    env: dict[str, str], cwd: Path, *args: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    environment = dict(env)
    environment["COLUMNS"] = "250"  # wide tables: no cell is cut short
    return subprocess.run(
        [sys.executable, "-m", "accord", *args],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _rows(table: str, word: str) -> list[list[str]]:
    """The cells of the table rows that contain ``word``."""
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in table.splitlines()
        if "│" in line and word in line
    ]


def test_run_prints_the_json_value(
    store_url: str, accord_env: dict[str, str], tmp_path: Path
) -> None:
    done = cli(accord_env, tmp_path, "run", "apps.flows:dag", "20", "4", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == sum(i * i for i in range(20))
    assert "run 1 started (dag)" in done.stderr
    with open_store(store_url) as store:
        run = store.run(1)
        assert run.state == "succeeded" and run.counts == {"succeeded": 26}
        nodes = store.nodes(include_stopped=True)
        assert len(nodes) == 1 and nodes[0].state == "stopped"


def test_run_with_progress_and_structured_value(accord_env: dict[str, str], tmp_path: Path) -> None:
    done = cli(accord_env, tmp_path, "run", "apps.flows:plain_value", "5", "--slots", "1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"x": 5, "twice": 50}
    assert "plain_value" in done.stderr  # the progress bar's label


def test_run_parses_json_arguments_else_text(accord_env: dict[str, str], tmp_path: Path) -> None:
    done = cli(accord_env, tmp_path, "run", "apps.flows:echo", '{"a": [1, 2]}', "--no-progress")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"a": [1, 2]}
    done = cli(accord_env, tmp_path, "run", "apps.flows:echo", "plain words", "--no-progress")
    assert json.loads(done.stdout) == "plain words"


def test_run_of_a_failing_workflow_exits_1(accord_env: dict[str, str], tmp_path: Path) -> None:
    done = cli(accord_env, tmp_path, "run", "apps.flows:failing_workflow", "bad", "--no-progress")
    assert done.returncode == 1
    assert "run 1 failed" in done.stderr
    assert "dependency task" in done.stderr
    assert done.stdout == ""


def test_run_timeout_exits_3_at_once_and_says_what_becomes_of_the_run(
    accord_env: dict[str, str], tmp_path: Path, flows: accord.App
) -> None:
    began = time.monotonic()
    done = cli(
        accord_env,
        tmp_path,
        "run",
        "apps.flows:slow_children",
        "1",
        "20.0",
        "--timeout",
        "1",
        "--no-progress",
    )
    took = time.monotonic() - began
    assert done.returncode == 3
    assert "error: run 1 did not finish within 1.0 s" in done.stderr
    # The node of the command stopped with it: nothing serves the app now.
    assert "none is live now" in done.stderr and "accord worker --app" in done.stderr
    assert took < 15, f"the command took {took:.1f} s (the sleeper was handed back, not awaited)"
    (sleeper,) = [t for t in flows.store.tasks(1) if t.name.endswith("sleeper")]
    assert sleeper.state is accord.TaskState.READY


def test_inspection_commands(store_url: str, accord_env: dict[str, str], tmp_path: Path) -> None:
    dag = cli(accord_env, tmp_path, "run", "apps.flows:dag", "8", "2", "--no-progress")
    assert dag.returncode == 0, dag.stderr
    failed = cli(accord_env, tmp_path, "run", "apps.flows:fails_until", "99", "--no-progress")
    assert failed.returncode == 1

    runs = cli(accord_env, tmp_path, "runs")
    assert runs.returncode == 0, runs.stderr
    (dag_row,) = _rows(runs.stdout, "dag")
    assert dag_row[:5] == ["1", "dag", "flows", "succeeded", "12/12"]
    (failed_row,) = _rows(runs.stdout, "fails_until")
    assert failed_row[:5] == ["2", "fails_until", "flows", "failed", "0/1 1 failed"]
    assert "attempt 3 of 3 fails" in failed_row[-1]
    limited = cli(accord_env, tmp_path, "runs", "--limit", "1")
    assert _rows(limited.stdout, "dag") == [] and len(_rows(limited.stdout, "fails_until")) == 1

    tasks = cli(accord_env, tmp_path, "tasks", "1")
    assert tasks.returncode == 0, tasks.stderr
    assert "run 1 (dag): succeeded" in tasks.stdout
    squares = _rows(tasks.stdout, "square")
    assert len(squares) == 8
    with open_store(store_url) as store:
        node_name = store.nodes(include_stopped=True)[0].name
    for row in squares:
        assert row[1:5] == ["square", "succeeded", node_name, "1/1"]
    retried = cli(accord_env, tmp_path, "tasks", "2")
    (row,) = _rows(retried.stdout, "fails_until")
    assert row[1:3] == ["fails_until", "failed"] and row[4] == "3/3"
    assert "attempt 3 of 3 fails" in row[-1]

    events = cli(accord_env, tmp_path, "events", "2")
    assert events.returncode == 0, events.stderr
    kinds = [cells[1] for cells in _rows(events.stdout, "")]
    assert kinds == ["retry", "retry", "failed", "run_failed"]
    everything = cli(accord_env, tmp_path, "events", "--limit", "1000")
    assert "node_started" in everything.stdout and "node_stopped" in everything.stdout

    live = cli(accord_env, tmp_path, "nodes")
    assert live.returncode == 0 and _rows(live.stdout, node_name) == []
    every = cli(accord_env, tmp_path, "nodes", "--all")
    assert every.returncode == 0, every.stderr
    nodes = _rows(every.stdout, "flows")
    assert len(nodes) == 2 and all("stopped" in row for row in nodes)


def test_cancel_a_run(
    store_url: str, accord_env: dict[str, str], tmp_path: Path, flows: accord.App
) -> None:
    run = flows.start(f.dag, 6, 2)  # no node runs: it stays open
    flows.close()
    done = cli(accord_env, tmp_path, "cancel", str(run.id))
    assert done.returncode == 0, done.stderr
    assert f"run {run.id}: 1 task(s) cancelled" in done.stdout
    with open_store(store_url) as store:
        assert store.run(run.id).state == "cancelled"
        (task,) = store.tasks(run.id)
        assert task.error == "cancelled from the command line"
    again = cli(accord_env, tmp_path, "cancel", str(run.id))
    assert again.returncode == 1
    assert f"error: run {run.id} has already ended (cancelled)" in again.stderr


def test_migrate(store_url: str, accord_env: dict[str, str], tmp_path: Path) -> None:
    other = tmp_path / "fresh.db"
    done = cli(accord_env, tmp_path, "migrate", "--store", f"sqlite:///{other}")
    assert done.returncode == 0, done.stderr
    assert f"sqlite:///{other}: created (schema {SCHEMA_VERSION})" in done.stdout
    with open_store(f"sqlite:///{other}") as store:
        assert store.schema_version() == SCHEMA_VERSION
    assert not Path(store_url.removeprefix("sqlite:///")).exists()  # --store won over the env
    again = cli(accord_env, tmp_path, "migrate", "--store", f"sqlite:///{other}")
    assert again.returncode == 0 and "up to date" in again.stdout
    conn = sqlite3.connect(other)
    conn.execute("UPDATE accord_meta SET value = '999' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    newer = cli(accord_env, tmp_path, "migrate", "--store", f"sqlite:///{other}")
    assert newer.returncode == 2
    assert "error:" in newer.stderr and "written by a newer accord" in newer.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tasks", "999"], "run 999 does not exist"),
        (["cancel", "999"], "run 999 does not exist"),
        (["events", "--limit", "0"], "Invalid value"),
        (["runs", "--store", "mysql://localhost/db"], "unknown scheme 'mysql'"),
        (["runs", "--store", "sqlite:///no/such/dir/x.db"], "does not exist"),
        (["run", "nosuchmodule:wf"], "cannot import module 'nosuchmodule'"),
        (["run", "apps.flows:not_there"], "no task or workflow 'not_there' in apps.flows"),
        (["run", "apps.flows:sqare"], "'sqare' in apps.flows; did you mean 'square'?"),
        (["run", "apps.flows:_ctx"], "is a plain function, not a task or workflow"),
        (["run", "apps.flows:square"], "square(i: int) cannot take these arguments: missing"),
        (["run", "apps.flows:square", "1", "2"], "too many positional arguments"),
        (["run", "apps.flows"], "must look like module:workflow"),
        (["worker", "--app", "nosuchmodule:app"], "cannot import module 'nosuchmodule'"),
        (["worker", "--app", "apps.flows:nosuchapp"], "has no accord.App named 'nosuchapp'"),
        (["worker", "--app", "apps.flows:flows", "--slots", "0"], "slots must be a positive"),
        (["worker", "--app", "apps.flows:flows", "--mode", "fork"], "mode must be 'process'"),
    ],
)
def test_user_errors_exit_2(
    accord_env: dict[str, str], tmp_path: Path, args: list[str], message: str
) -> None:
    assert cli(accord_env, tmp_path, "migrate").returncode == 0  # the store exists
    done = cli(accord_env, tmp_path, *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    if message != "Invalid value":  # typer's own usage errors have their own format
        assert "error:" in done.stderr


def test_file_that_is_not_a_store(accord_env: dict[str, str], tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x13\x37" * 3000)
    done = cli(accord_env, tmp_path, "runs", "--store", f"sqlite:///{junk}")
    assert done.returncode == 2
    assert "error:" in done.stderr and "is not an accord database" in done.stderr
    assert "ACCORD_STORE" not in done.stderr  # the URL came from --store
    assert junk.read_bytes() == b"\x13\x37" * 3000


@pytest.fixture
def worker(accord_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = accord_env
    log = open(tmp_path / "worker.log", "wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "accord",
            "worker",
            "--app",
            "apps.flows:flows",
            "--slots",
            "2",
            "--name",
            "cli-worker",
            "--lease",
            "3",
            "--grace",
            "5",
        ],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        log.close()


def _wait_for_node(store_url: str, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (
            not store_url.startswith("sqlite:")
            or Path(store_url.removeprefix("sqlite:///")).exists()
        ):
            with open_store(store_url) as store:
                if any(n.name == name for n in store.nodes()):
                    return
        time.sleep(0.05)
    raise AssertionError(f"node {name} did not register within {timeout} s")


def test_worker_process_runs_tasks_and_stops_on_sigterm(
    store_url: str,
    accord_env: dict[str, str],
    tmp_path: Path,
    flows: accord.App,
    worker: subprocess.Popen[bytes],
) -> None:
    _wait_for_node(store_url, "cli-worker")
    handle = f.square.submit(12)
    assert handle.result(timeout=60) == 144
    assert handle.info().node_name == "cli-worker"
    # `accord run` uses the live worker instead of a node of its own
    done = cli(accord_env, tmp_path, "run", "apps.flows:dag", "10", "2", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == sum(i * i for i in range(10))
    run_id = int(done.stderr.split("run ", 1)[1].split()[0])
    assert {t.node_name for t in flows.get_run(run_id).tasks()} == {"cli-worker"}
    assert [n.name for n in flows.store.nodes(include_stopped=True)] == ["cli-worker"]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    (node,) = flows.store.nodes(include_stopped=True)
    assert node.state == "stopped" and node.completed >= 1 + 1 + 10 + 2 + 1
    log = (tmp_path / "worker.log").read_text()
    assert "serving app flows" in log
