"""Tasks of bench/bench_children.py (importable by node processes)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

import accord

app = accord.App("bench_children")

# A child that has not appeared after this long is reported as not seen.
GIVE_UP = 2.0


@app.task
def child(i: int) -> int:
    return i


def _counter(url: str) -> tuple[Callable[[int], int], Callable[[], None]]:
    """``count(parent_id)`` of child rows, read on a connection of its own
    (what another node would see), and a function that closes it."""
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)

        def count(parent: int) -> int:
            row = conn.execute("SELECT count(*) FROM tasks WHERE parent_id = ?", (parent,))
            return int(row.fetchone()[0])

        return count, conn.close
    import psycopg

    pg = psycopg.connect(url, autocommit=True)

    def count_pg(parent: int) -> int:
        row = pg.execute("SELECT count(*) FROM tasks WHERE parent_id = %s", (parent,)).fetchone()
        return int(row[0]) if row is not None else 0

    return count_pg, pg.close


@app.task
def announce(rounds: int, compute: float) -> list[float | None]:
    """Submit one child per round, then compute for ``compute`` seconds while
    another connection looks for the child's row: the seconds from the
    ``submit()`` call to the row being visible there (None: not within
    ``GIVE_UP`` seconds of computing)."""
    ctx = accord.current()
    assert ctx is not None
    count, close = _counter(ctx.app.store_url)
    seen: list[float | None] = []
    try:
        for r in range(rounds):
            began = time.perf_counter()
            child.submit(r)
            found: float | None = None
            while True:
                rows = count(ctx.task_id)
                now = time.perf_counter()  # after the read: an upper bound
                if rows > r:
                    found = now - began
                    break
                if now - began > max(compute, GIVE_UP):
                    break
                time.sleep(0.0002)
            seen.append(found)
            # The rest of the computation, before the next round.
            rest = compute - (time.perf_counter() - began)
            if rest > 0:
                time.sleep(rest)
    finally:
        close()
    return seen


@app.task
def fan_out(width: int) -> dict[str, Any]:
    """Submit ``width`` children in a loop and return: how long the loop took."""
    began = time.perf_counter()
    for i in range(width):
        child.submit(i)
    return {"loop": time.perf_counter() - began}


@app.task
def announce_busy(rounds: int, compute: float) -> list[float]:
    """Submit one child per round, then compute in pure Python (holding the
    GIL) for ``compute`` seconds; return when (``time.time()``) each submit
    was called, for an observer in another process."""
    called = []
    for r in range(rounds):
        called.append(time.time())
        child.submit(r)
        began = time.perf_counter()
        spin = 0
        while time.perf_counter() - began < compute:
            spin += 1
    return called
