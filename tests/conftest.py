from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import accord

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ACCORD_* setting of the caller's leaks into a test."""
    for key in list(os.environ):
        if key.startswith("ACCORD_"):
            monkeypatch.delenv(key)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A fresh SQLite store file for this test."""
    return f"sqlite:///{tmp_path / 'accord.db'}"


def bind(app: accord.App, url: str) -> accord.App:
    """Point a module-level test app at this test's store."""
    if app._store is not None:
        app._store.close()
    app._store = None
    app._url = url
    app._closed = False
    return app


@pytest.fixture
def basic(store_url: str) -> Iterator[accord.App]:
    """tests/apps/basic.py's app on a fresh store."""
    from apps.basic import app

    yield bind(app, store_url)
    app.close()


def subprocess_env(store_url: str) -> dict[str, str]:
    """Environment for accord processes started by a test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
    env["ACCORD_STORE"] = store_url
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture
def flows(store_url: str) -> Iterator[accord.App]:
    """tests/apps/flows.py's app on a fresh store."""
    from apps.flows import app

    yield bind(app, store_url)
    app.close()


def table_counts(store_url: str) -> dict[str, int]:
    """Row count of every table of the store file (empty if there is no file)."""
    import sqlite3

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


@pytest.fixture
def row_counts(store_url: str) -> Callable[[], dict[str, int]]:
    """Call it before and after a bad call: the store's row counts must not change."""
    return lambda: table_counts(store_url)


@pytest.fixture
def bind_app(store_url: str) -> Iterator[Callable[[accord.App], accord.App]]:
    """``bind_app(app)`` points a module-level app at this test's store and
    closes it after the test (test modules cannot import conftest by name:
    tests/*/conftest.py share that name)."""
    bound: list[accord.App] = []

    def bind_one(app: accord.App) -> accord.App:
        bound.append(app)
        return bind(app, store_url)

    yield bind_one
    for app in bound:
        app.close()


@pytest.fixture
def accord_env(store_url: str) -> dict[str, str]:
    """Environment for ``python -m accord`` subprocesses on this test's store."""
    return subprocess_env(store_url)
