"""Helpers shared by the tests (import them from here, not from conftest)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import accord

TESTS = Path(__file__).parent


def bind(app: accord.App, url: str) -> accord.App:
    """Point a module-level test app at this test's store."""
    if app._store is not None:
        app._store.close()
    app._store = None
    app._url = url
    app._closed = False
    return app


def subprocess_env(store_url: str) -> dict[str, str]:
    """Environment for accord processes started by a test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
    env["ACCORD_STORE"] = store_url
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
