"""A small app for tests: its store comes from the test (see conftest.bind)."""

from __future__ import annotations

import os
import time

import accord

app = accord.App("basic")


@app.task
def add(a: int, b: int) -> int:
    return a + b


@app.task
def total(values: list[int]) -> int:
    return sum(values)


@app.task
def noop() -> None:
    return None


@app.task
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task
def boom(message: str) -> None:
    raise ValueError(message)


@app.task
def pid() -> int:
    return os.getpid()


@app.workflow
def fan(n: int) -> accord.Handle[int]:
    parts = [add.submit(i, i) for i in range(n)]
    return total.submit(parts)


@app.workflow
def tolerant(n: int) -> int:
    """Succeeds though one child fails and the task it would have fed is
    cancelled: the workflow catches the failure."""
    parts = [add.submit(i, i) for i in range(n)]
    bad = boom.submit("tolerated")
    total.submit([bad])  # cancelled: its dependency failed
    try:
        bad.result(timeout=60)
    except accord.TaskFailed:
        pass
    return sum(p.result(timeout=60) for p in parts)


@app.task
def needs_file(path: str) -> int:
    """Fails until ``path`` exists (a fault someone fixes, then retries)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is not there yet")
    return 10


@app.workflow
def through_file(path: str) -> accord.Handle[int]:
    """Ends through needs_file's failure: its total is cancelled."""
    return total.submit([needs_file.submit(path), add.submit(1, 1)])


@app.workflow
def awaits_file(path: str) -> int:
    """Raises needs_file's failure itself (it waits on the result)."""
    return needs_file.submit(path).result(timeout=60) + 1


# -- for tests/test_logs.py: tasks that print and log ---------------------------


@app.task
def chatty(tag: str, lines: int = 1, pause: float = 0.0) -> str:
    """Prints, writes to stderr and logs ``lines`` times, tagged."""
    import logging
    import sys

    for i in range(lines):
        print(f"out {tag} {i}")
        sys.stderr.write(f"err {tag} {i}\n")
        logging.getLogger("basic.chatty").info("log %s %d", tag, i)
        if pause:
            time.sleep(pause)
    return tag


@app.task(retries=6, backoff=0.01, max_backoff=0.01)
def chatty_fails() -> None:
    """Says its attempt, then fails (seven attempts)."""
    from accord.tasks import context

    ctx = context.current()
    print(f"this is attempt {ctx.attempt if ctx else '?'}")
    raise ValueError("fails every time")


@app.task
def flood(lines: int, width: int = 99) -> int:
    """Prints ``lines`` numbered lines of ``width`` characters."""
    for i in range(lines):
        print(f"{i:08d}".ljust(width, "x"))
    return lines
