"""The embedded store: one SQLite file shared by any number of processes.

:mod:`.store` (:class:`SqliteStore`: connections, transactions, schema),
:mod:`.state` (the state store's SQLite ways: group commit, read
transactions), :mod:`.group`, :mod:`.slots` and :mod:`.wire` (group commit
across processes), :mod:`.wakeups` (wake-ups across processes), :mod:`.url`
(the ``sqlite://`` URL, the file's directory) and :mod:`.errors` (the
driver's errors as accord's).
"""

from __future__ import annotations

from accord.store.sqlite.errors import translate
from accord.store.sqlite.store import SCHEMA_VERSION, SqliteStore
from accord.store.sqlite.url import DEFAULT_FILE_MODE, make_store_dir, parse_url

__all__ = [
    "DEFAULT_FILE_MODE",
    "SCHEMA_VERSION",
    "SqliteStore",
    "make_store_dir",
    "parse_url",
    "translate",
]
