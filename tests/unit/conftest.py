"""The unit tier: ``pytest tests/unit`` runs in seconds and opens no database.

Its tests use no store fixture (``store_url``, ``backend``, ``pg_server``, ...:
those of tests/conftest.py start nothing unless a test asks for them), and
this guard fails any of them that opens an SQLite file or a PostgreSQL
connection anyway: such a test belongs in the store suites, not here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest


def _refuse(*args: Any, **kwargs: Any) -> Any:
    what = args[0] if args else kwargs
    raise AssertionError(f"a unit test opened a database ({what!r}); move it out of tests/unit")


@pytest.fixture(autouse=True, scope="module")
def _no_database() -> Iterator[None]:
    """Module-wide, so that module-scoped fixtures are guarded too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sqlite3, "connect", _refuse)
        mp.setattr(psycopg, "connect", _refuse)
        mp.setattr(psycopg.Connection, "connect", _refuse)
        yield
