from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import accord
from support import pgserver
from support.common import bind, subprocess_env, table_counts

BACKENDS = ["sqlite", "postgresql"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``sqlite_only`` run on the SQLite backend alone."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        if backend == "postgresql" and item.get_closest_marker("sqlite_only"):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


PG_MISSING = "PostgreSQL server binaries not found (apt-get install postgresql)"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say at the end how many PostgreSQL variants did not run, so that a
    local run without the binaries is not mistaken for a full one."""
    skipped = terminalreporter.stats.get("skipped", [])
    missing = sum(PG_MISSING in str(getattr(report, "longrepr", "")) for report in skipped)
    if missing:
        terminalreporter.write_sep(
            "=",
            f"{missing} PostgreSQL variant(s) skipped: no server binaries "
            "(apt-get install postgresql, or set PG_BIN_DIR); CI fails instead",
            yellow=True,
        )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pgserver.PgServer]:
    """One throwaway PostgreSQL server for the whole session, started from the
    system's binaries (as the ``postgres`` user when the tests run as root)."""
    if pgserver.find_bin_dir() is None:
        reason = PG_MISSING
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = pgserver.PgServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend of this test: every store test runs on both."""
    return str(request.param)


@pytest.fixture
def pg_url(pg_server: pgserver.PgServer) -> str:
    """A fresh, empty PostgreSQL store for this test."""
    return pg_server.fresh_url()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No ACCORD_* setting of the caller's leaks into a test, and the cache of
    remote objects is the session's own (not the user's ~/.cache)."""
    for key in list(os.environ):
        if key.startswith("ACCORD_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("ACCORD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "object-cache"))


@pytest.fixture
def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh store for this test: an SQLite file, or a PostgreSQL schema."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'accord.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite store file, for tests of what only SQLite has."""
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
