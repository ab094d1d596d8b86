"""What SQLite spells its own way for the shared SQL: nothing to lock.

The shared SQL (:mod:`accord.store.sql`) leaves row locks and a few
functions to the dialect. On SQLite the one writer holds the whole database
from ``BEGIN IMMEDIATE``, so every lock suffix is empty and a single claimer
reads one batch of candidates. PostgreSQL's are in
:mod:`accord.store.postgres.dialect`.
"""

from __future__ import annotations


class SqliteDialect:
    """SQLite's row locks and functions for the shared SQL (see
    :class:`~accord.store.sql.core.SqlBase`)."""

    lock = ""
    blob_contains = "instr({col}, ?) > 0"
    lock_t = ""
    share = ""
    skip_locked = ""
    skip_locked_t = ""
    share_skip_locked = ""
    greatest = "max"
    claimers = 1
