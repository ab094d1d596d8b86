from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import accord
from support import bind, subprocess_env, table_counts


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


@pytest.fixture
def basic(store_url: str) -> Iterator[accord.App]:
    """tests/apps/basic.py's app on a fresh store."""
    from apps.basic import app

    yield bind(app, store_url)
    app.close()


@pytest.fixture
def flows(store_url: str) -> Iterator[accord.App]:
    """tests/apps/flows.py's app on a fresh store."""
    from apps.flows import app

    yield bind(app, store_url)
    app.close()


@pytest.fixture
def row_counts(store_url: str) -> Callable[[], dict[str, int]]:
    """Call it before and after a bad call: the store's row counts must not change."""
    return lambda: table_counts(store_url)


@pytest.fixture
def bind_app(store_url: str) -> Iterator[Callable[[accord.App], accord.App]]:
    """``bind_app(app)`` points a module-level app at this test's store and
    closes it after the test."""
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
