"""The SQL that SQLite and PostgreSQL share: the task store and the state store.

:class:`~accord.store.sql.store.SqlStore` is the task store's logic, composed
of one mixin per concern (:mod:`.submit`, :mod:`.claim`, :mod:`.complete`,
:mod:`.settle`, :mod:`.nodes`, :mod:`.limits`, :mod:`.reads`) over the small
core of :mod:`.core` (connections, transactions, migrations).
:class:`~accord.store.sql.state.SqlStateMixin` is the state store and
messaging (:mod:`.kv`, :mod:`.txn`, :mod:`.history`, :mod:`.leases`,
:mod:`.mailboxes`, :mod:`.topics` over :mod:`.state_core`). A backend
subclasses both and supplies connections and its dialect.
"""

from __future__ import annotations

from accord.store.sql.state import SqlStateMixin
from accord.store.sql.store import SqlStore

__all__ = ["SqlStateMixin", "SqlStore"]
