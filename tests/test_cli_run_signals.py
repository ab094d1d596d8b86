"""``accord run`` interrupted (Ctrl-C, SIGTERM) or its run cancelled: the run
is not the waiting process's to destroy. Its node hands the running attempts
back, the command says the run goes on and how to follow it, and exits 130;
a cancelled run is reported as cancelled at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import accord
from accord import TaskState

SECONDS = 4.0  # each sleeper's length


def _start(env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "accord", "run", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group, as a shell's foreground job
    )


def _until(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.05)


def _sleepers_running(app: accord.App, n: int) -> bool:
    runs = app.store.runs(1)
    if not runs:
        return False
    tasks = app.store.tasks(runs[0].id)
    return sum(1 for t in tasks if t.name.endswith("sleeper") and t.state is TaskState.RUNNING) == n


def _two_sleepers_then(
    app: accord.App,
    env: dict[str, str],
    cwd: Path,
    seconds: float,
    act: Callable[[subprocess.Popen[str]], None],
) -> tuple[int, str, float]:
    """``accord run`` two sleepers on its own node; once both run, ``act``;
    the command's exit status, its stderr, and how long it took to exit."""
    process = _start(
        env, cwd, "apps.flows:slow_children", "2", str(seconds), "--slots", "2", "--no-progress"
    )
    try:
        _until(lambda: _sleepers_running(app, 2), "two sleepers running")
        # A node claims as soon as it is up, while its slot processes may
        # still be starting; a Ctrl-C then reaches a slot before it ignores
        # SIGINT (a harmless traceback). Let them finish starting.
        time.sleep(1.0)
        sent = time.monotonic()
        act(process)
        _, stderr = process.communicate(timeout=30)
        return process.returncode, stderr, time.monotonic() - sent
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("signum", "to_group"),
    [(signal.SIGINT, True), (signal.SIGINT, False), (signal.SIGTERM, False)],
    ids=["ctrl-c", "sigint-to-pid", "sigterm"],
)
def test_an_interrupted_run_command_hands_its_attempts_back(
    flows: accord.App,
    accord_env: dict[str, str],
    tmp_path: Path,
    signum: signal.Signals,
    to_group: bool,
) -> None:
    def interrupt(process: subprocess.Popen[str]) -> None:
        if to_group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)

    returncode, stderr, took = _two_sleepers_then(flows, accord_env, tmp_path, SECONDS, interrupt)
    assert returncode == 130, stderr
    assert took < 10, f"exiting took {took:.1f} s"
    assert "goes on" in stderr and "accord worker --app" in stderr, stderr
    assert "Traceback" not in stderr
    (run,) = flows.store.runs(1)
    assert run.state == "running"
    tasks = flows.store.tasks(run.id)
    sleepers = [t for t in tasks if t.name.endswith("sleeper")]
    # Handed back: ready again, the attempt not counted, nothing failed.
    assert [t.state for t in sleepers] == [TaskState.READY, TaskState.READY]
    assert all(t.attempts == 0 and t.error_type is None for t in sleepers), sleepers
    assert not any(t.state in (TaskState.FAILED, TaskState.CANCELLED) for t in tasks)
    (node,) = flows.store.nodes(include_stopped=True)
    assert node.state == "stopped"
    # Any node takes the run over and finishes it.
    with flows.embedded_node(slots=2):
        assert flows.get_run(run.id).wait(timeout=60) == 2 * SECONDS
    assert [t.attempts for t in flows.store.tasks(run.id) if t.name.endswith("sleeper")] == [1, 1]


@pytest.mark.timeout(120)
def test_a_cancelled_run_is_reported_cancelled_at_once(
    flows: accord.App, accord_env: dict[str, str], tmp_path: Path
) -> None:
    def cancel(process: subprocess.Popen[str]) -> None:
        flows.store.cancel_run(flows.store.runs(1)[0].id, "cancelled by the test")

    returncode, stderr, took = _two_sleepers_then(flows, accord_env, tmp_path, 30, cancel)
    (run,) = flows.store.runs(1)
    assert returncode == 4, stderr
    assert f"run {run.id} was cancelled" in stderr, stderr
    assert "failed" not in stderr and "heartbeat" not in stderr, stderr
    assert took < 5, f"the command took {took:.1f} s to notice"
    assert flows.store.run(run.id).state == "cancelled"
