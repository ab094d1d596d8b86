"""The shared store for many machines: one PostgreSQL database.

:mod:`.store` (:class:`PgStore`), :mod:`.connections` (the URL, the pool,
retries), :mod:`.listen` (LISTEN/NOTIFY), :mod:`.dialect` (what PostgreSQL
spells its own way), :mod:`.fast` (its one-statement paths) and
:mod:`.errors` (the driver's errors as accord's). Needs psycopg
(``pip install 'accord[postgres]'``).
"""

from __future__ import annotations

from accord.store.postgres.connections import redact
from accord.store.postgres.store import SCHEMA_VERSION, PgStore

__all__ = ["SCHEMA_VERSION", "PgStore", "redact"]
