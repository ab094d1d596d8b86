"""Helpers shared by the tests (import them from here, not from conftest)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

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


def table_counts(store_url: str) -> dict[str, int]:
    """Row count of every table of the store file (empty if there is no file)."""
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
