from __future__ import annotations

import os
from collections.abc import Iterator
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
