"""What tasks print and log, kept per attempt and shown by ``accord logs``."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import accord
from accord.store.sql.logs import KEEP_ATTEMPTS, MAX_ATTEMPT_BYTES
from test_cli import cli


def _lines(out: str) -> list[tuple[str, str]]:
    """(stream, text) of the ``HH:MM:SS stream text`` lines of ``accord logs``."""
    found = []
    for line in out.splitlines():
        if line.startswith("--"):
            continue
        _, stream, text = line.split(" ", 2)
        found.append((stream, text))
    return found


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_a_task_s_prints_and_logs_are_shown_with_their_streams(
    basic: accord.App,
    accord_env: dict[str, str],
    tmp_path: Path,
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from apps.basic import chatty

    # Thread slots capture at the root logger's level (the host's choice;
    # accord worker sets INFO): a slot process sets INFO itself.
    caplog.set_level(logging.INFO)

    handle = chatty.submit("a", 2)
    with basic.embedded_node(mode=mode, slots=1):
        assert handle.result(timeout=60) == "a"
    done = cli(accord_env, tmp_path, "logs", str(handle.id))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "-- attempt 1 --"
    assert _lines(done.stdout) == [
        ("stdout", "out a 0"),
        ("stderr", "err a 0"),
        ("INFO:basic.chatty", "log a 0"),
        ("stdout", "out a 1"),
        ("stderr", "err a 1"),
        ("INFO:basic.chatty", "log a 1"),
    ]
    shown = cli(accord_env, tmp_path, "logs", str(handle.id), "--json")
    rows = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [(r["attempt"], r["stream"], r["text"]) for r in rows][:2] == [
        (1, "stdout", "out a 0"),
        (1, "stderr", "err a 0"),
    ]
    assert all(r["task_id"] == handle.id and r["at"] > 0 for r in rows)


def test_tasks_at_once_in_thread_slots_keep_their_own_lines(
    basic: accord.App, caplog: pytest.LogCaptureFixture
) -> None:
    from apps.basic import chatty

    caplog.set_level(logging.INFO)

    handles = [chatty.submit(tag, 5, 0.02) for tag in ("p", "q", "r")]
    with basic.embedded_node(mode="thread", slots=3):
        for h in handles:
            h.result(timeout=60)
    for h, tag in zip(handles, ("p", "q", "r"), strict=True):
        lines, dropped = basic.store.task_logs(h.id)
        assert dropped == {1: 0}
        texts = [line.text for line in lines]
        assert len(texts) == 15
        assert all(text.split(" ")[1] == tag for text in texts), texts


def test_a_retried_task_keeps_its_last_attempts_apart(
    basic: accord.App, accord_env: dict[str, str], tmp_path: Path
) -> None:
    from apps.basic import chatty_fails

    handle = chatty_fails.submit()
    with basic.embedded_node(mode="thread", slots=1), pytest.raises(accord.TaskFailed):
        handle.result(timeout=60)
    assert basic.store.task(handle.id).attempts == 7
    kept = list(range(7 - KEEP_ATTEMPTS + 1, 8))  # the last five: 3 to 7
    lines, _ = basic.store.task_logs(handle.id)
    assert [(line.attempt, line.text) for line in lines] == [
        (n, f"this is attempt {n}") for n in kept
    ]
    one = cli(accord_env, tmp_path, "logs", str(handle.id), "--attempt", "4")
    assert one.returncode == 0, one.stderr
    assert _lines(one.stdout) == [("stdout", "this is attempt 4")]
    assert "-- attempt 4 --" in one.stdout
    every = cli(accord_env, tmp_path, "logs", str(handle.id))
    headers = [line for line in every.stdout.splitlines() if line.startswith("--")]
    assert headers == [f"-- attempt {n} --" for n in kept]


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_the_bound_of_an_attempt_drops_its_oldest_lines_and_says_so(
    basic: accord.App, accord_env: dict[str, str], tmp_path: Path, mode: str
) -> None:
    from apps.basic import flood

    count = 2 * MAX_ATTEMPT_BYTES // 100  # 100 bytes a line: twice the bound
    handle = flood.submit(count)
    with basic.embedded_node(mode=mode, slots=1):
        assert handle.result(timeout=60) == count
    lines, dropped = basic.store.task_logs(handle.id)
    kept = sum(len(line.text.encode()) for line in lines)
    assert kept <= MAX_ATTEMPT_BYTES
    assert kept + dropped[1] == count * 99
    assert lines[-1].text.startswith(f"{count - 1:08d}")  # the newest lines are kept
    first = int(lines[0].text[:8])
    assert first > 0 and [int(line.text[:8]) for line in lines] == list(range(first, count))
    done = cli(accord_env, tmp_path, "logs", str(handle.id))
    assert f"-- {dropped[1]} bytes of older lines dropped" in done.stdout.splitlines()[1]


@pytest.mark.xfail(
    strict=False,
    reason="known bug: under full-suite load the lines of an attempt's first flush are sometimes "
    "missing from the store (seen twice, both backends); open in issue 14",
)
def test_follow_shows_a_running_task_s_lines_and_returns_when_it_ends(
    basic: accord.App, accord_env: dict[str, str], tmp_path: Path
) -> None:
    from apps.basic import chatty

    handle = chatty.submit("f", 12, 0.5)  # about 6 s, lines flushed every 2 s
    with basic.embedded_node(mode="process", slots=1):
        deadline = time.monotonic() + 30
        while basic.store.task(handle.id).state != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        env = dict(accord_env, COLUMNS="250")
        follower = subprocess.Popen(
            [sys.executable, "-m", "accord", "logs", str(handle.id), "--follow"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert follower.stdout is not None
        first = follower.stdout.readline()  # arrives while the task runs
        assert first == "-- attempt 1 --\n"
        assert basic.store.task(handle.id).state == "running"
        out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    assert handle.result(timeout=5) == "f"
    texts = [text for stream, text in _lines(out) if stream == "stdout"]
    assert texts == [f"out f {i}" for i in range(12)]


def test_a_task_with_no_logs_says_so_and_a_missing_task_is_an_error(
    basic: accord.App, accord_env: dict[str, str], tmp_path: Path
) -> None:
    from apps.basic import add

    handle = add.submit(1, 2)
    with basic.embedded_node(mode="thread", slots=1):
        assert handle.result(timeout=60) == 3
    quiet = cli(accord_env, tmp_path, "logs", str(handle.id))
    assert quiet.returncode == 0
    assert quiet.stdout == ""
    assert f"task {handle.id} has no logs" in quiet.stderr
    missing = cli(accord_env, tmp_path, "logs", "987654321")
    assert missing.returncode == 2
    assert "987654321" in missing.stderr


def test_a_stale_fence_writes_no_logs(basic: accord.App) -> None:
    from apps.basic import chatty

    handle = chatty.submit("s")
    assert basic.store.append_logs(handle.id, 7, [(time.time(), "stdout", "late")]) is False
    assert basic.store.task_logs(handle.id) == ([], {})


@pytest.mark.parametrize("level", ["info", "warning"])
def test_a_worker_logs_its_life_at_its_level_and_captures_info_records(
    basic: accord.App, accord_env: dict[str, str], tmp_path: Path, level: str
) -> None:
    from apps.basic import chatty

    handle = chatty.submit("w")
    out = tmp_path / "worker.log"
    with out.open("w") as log:
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "accord", "worker", "--app", "apps.basic:app"),
                *("--mode", "thread", "--slots", "1", "--name", "logs-worker"),
                *("--log-level", level),
            ],
            env=accord_env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            assert handle.result(timeout=60) == "w"
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=30)
    text = out.read_text()
    # The task's INFO record is captured in a thread slot whatever the node's level.
    lines, _ = basic.store.task_logs(handle.id)
    assert ("INFO:basic.chatty", "log w 0") in [(line.stream, line.text) for line in lines]
    if level == "info":
        assert "serving app basic with 1 thread slots, store " in text
        assert "node logs-worker" in text and "stopped after 1 attempt(s)" in text
        assert "INFO basic.chatty log w 0" in text  # the console shows it too
    else:
        assert "serving app" not in text and "stopped after" not in text
        assert "log w 0" not in text


def test_a_worker_refuses_an_unknown_log_level(
    basic: accord.App, accord_env: dict[str, str], tmp_path: Path
) -> None:
    done = cli(accord_env, tmp_path, "worker", "--app", "apps.basic:app", "--log-level", "loud")
    assert done.returncode == 2
    assert "--log-level must be one of debug, info, warning, error" in done.stderr


def test_a_node_logs_the_nodes_it_marks_lost(
    basic: accord.App, caplog: pytest.LogCaptureFixture
) -> None:
    from apps.basic import add

    gone = basic.store.register_node(
        name="gone-node",
        host="elsewhere",
        pid=1,
        queue=basic.name,
        slots=1,
        mode="thread",
        capabilities=[],
        lease_ttl=0.1,
    )
    time.sleep(0.3)
    caplog.set_level(logging.INFO, logger="accord.node")
    node = basic.node(mode="thread", slots=1)  # not embedded: that one sees gone-node alive
    node.start()
    try:
        deadline = time.monotonic() + 30
        while "marked lost" not in caplog.text and time.monotonic() < deadline:
            add.submit(1, 1).result(timeout=30)
            time.sleep(0.2)
    finally:
        node.stop()
        node.join()
    assert f"node gone-node ({gone}) marked lost" in caplog.text
    assert "serving app basic with 1 thread slots, store " in caplog.text
    assert "stopped after" in caplog.text
