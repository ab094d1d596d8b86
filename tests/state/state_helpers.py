"""Helpers of the state and messaging tests: worker processes as direct children,
and SQL run on a test store behind the API's back."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
WORKERS = HERE / "state_workers.py"


def spawn(*args: object, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``state_workers.py`` with ``args`` as a direct child of the test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
    command = [sys.executable, str(WORKERS), *map(str, args)]
    if log is None:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    with open(log, "ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> int:
    """Wait for a worker; kill it (and fail) if it overruns."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def sql(store_url: str, statement: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the store's database directly (``?`` placeholders),
    commit, and return its rows (none for a statement that returns none)."""
    if store_url.startswith("sqlite:"):
        conn = sqlite3.connect(store_url.removeprefix("sqlite:///"))
        try:
            with conn:
                return conn.execute(statement, params).fetchall()
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(store_url, autocommit=True) as pg:
        cur = pg.execute(statement.replace("%", "%%").replace("?", "%s"), params)
        return cur.fetchall() if cur.description is not None else []
