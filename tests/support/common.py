"""Helpers shared by the tests (import them from here, not from conftest)."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import accord

TESTS = Path(__file__).parent.parent  # tests/, on the path of every test process


def bind(app: accord.App, url: str) -> accord.App:
    """Point a module-level test app at this test's store."""
    app.runtime.reopen(url)
    return app


def subprocess_env(store_url: str) -> dict[str, str]:
    """Environment for accord processes started by a test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
    env["ACCORD_STORE"] = store_url
    if "ACCORD_CACHE_DIR" in os.environ:  # the session's cache, not the user's
        env["ACCORD_CACHE_DIR"] = os.environ["ACCORD_CACHE_DIR"]
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


def sql(store_url: str, statement: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement (``?`` placeholders) directly on the store's
    database, behind accord's back, on either backend; commit it."""
    if not store_url.startswith("sqlite:"):
        import psycopg

        with psycopg.connect(store_url, autocommit=True) as pg:
            cur = pg.execute(statement.replace("%", "%%").replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []
    conn = sqlite3.connect(store_url.removeprefix("sqlite:///"))
    try:
        with conn:
            return conn.execute(statement, params).fetchall()
    finally:
        conn.close()


def table_counts(store_url: str) -> dict[str, int]:
    """Row count of every table of the store (empty if it does not exist yet)."""
    if not store_url.startswith("sqlite:"):
        import psycopg

        with psycopg.connect(store_url, autocommit=True) as pg:
            tables = [
                row[0]
                for row in pg.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                )
            ]
            return {
                t: int(pg.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0])  # type: ignore[index]
                for t in tables
            }
    path = store_url.removeprefix("sqlite:///")
    if not os.path.exists(path):
        return {}
    conn = sqlite3.connect(path)
    try:
        tables = [
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        conn.close()


def wait_for(check: Callable[[], Any], timeout: float, what: str, pause: float = 0.02) -> Any:
    """Call ``check`` until it returns something truthy; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(pause)
