"""``accord state|mailbox|topic ...`` as a user runs them: subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import accord


def _accord(store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
    env["ACCORD_STORE"] = store_url
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "accord", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_state_commands(store_url: str) -> None:
    with accord.App("cli", store=store_url) as app:
        app.state.put("cfg/lr", 0.1)
        run = app.state.run(3)
        run.put("step", 1)
    put = _accord(store_url, "state", "put", "--app", "cli", "cfg/name", '{"a": [1, 2]}')
    assert put.returncode == 0, put.stderr
    assert put.stdout.strip() == "3"
    got = _accord(store_url, "state", "get", "cli/cfg/name")
    assert json.loads(got.stdout) == {
        "key": "cli/cfg/name",
        "value": {"a": [1, 2]},
        "revision": 3,
        "version": 1,
        "lease": None,
    }
    listed = _accord(store_url, "state", "list", "cfg/", "--app", "cli", "--json")
    assert [json.loads(line)["key"] for line in listed.stdout.splitlines()] == [
        "cfg/lr",
        "cfg/name",
    ]
    snap = _accord(store_url, "state", "snapshot", "--app", "cli", "s1")
    assert snap.stdout.strip() == "3"
    stale = _accord(
        store_url, "state", "put", "--app", "cli", "cfg/lr", "9", "--expect-version", "7"
    )
    assert stale.returncode == 2 and "not the expected 7" in stale.stderr
    assert _accord(store_url, "state", "put", "--app", "cli", "cfg/lr", "0.5").returncode == 0
    back = _accord(store_url, "state", "rollback", "--app", "cli", "cfg/", "--to", "s1")
    assert back.returncode == 0 and back.stdout.strip() == "5"
    history = _accord(store_url, "state", "history", "--app", "cli", "cfg/lr")
    assert [json.loads(line)["value"] for line in history.stdout.splitlines()] == [0.1, 0.5, 0.1]
    watched = _accord(store_url, "state", "watch", "--from-revision", "1", "--count", "2")
    assert [json.loads(line)["revision"] for line in watched.stdout.splitlines()] == [1, 2]
    in_run = _accord(store_url, "state", "get", "--app", "cli", "--run", "3", "step")
    assert json.loads(in_run.stdout)["value"] == 1
    missing = _accord(store_url, "state", "get", "nope")
    assert missing.returncode == 1 and "absent" in missing.stderr
    bad = _accord(store_url, "state", "get", "")
    assert bad.returncode == 2 and "empty" in bad.stderr
    future = _accord(store_url, "state", "watch", "--from-revision", "99", "--timeout", "0.1")
    assert future.returncode == 2 and "future" in future.stderr


def test_mailbox_and_topic_commands(store_url: str) -> None:
    sent = _accord(store_url, "mailbox", "send", "inbox", '{"x": 1}', "--id", "m1")
    assert sent.returncode == 0 and sent.stdout.strip() == "m1"
    stats = _accord(store_url, "mailbox", "stats", "inbox")
    assert json.loads(stats.stdout)["ready"] == 1
    assert _accord(store_url, "topic", "publish", "news", "hello").stdout.strip() == "0"
    tail = _accord(store_url, "topic", "tail", "news")
    assert json.loads(tail.stdout)["payload"] == "hello"
    with accord.App("cli", store=store_url) as app:
        message = app.mailbox("inbox").receive(timeout=1)
        assert message is not None and message.payload == {"x": 1}
