"""The task store's logic, written once in the SQL that SQLite and PostgreSQL share.

A backend subclass supplies connections and transactions (``_write``,
``_read``) and a few dialect strings; the rules for submitting, claiming,
completing, retrying, cancelling and finishing runs live here, so both
backends keep the same semantics.

Concurrency: on SQLite every write transaction holds the one database lock,
so reads inside it are already stable. On PostgreSQL transactions run side by
side at READ COMMITTED, so a read that a write depends on takes a row lock
(the dialect's ``lock``/``share`` strings, empty on SQLite), claims skip rows
that another claimer holds (``skip_locked``), and a run's row is locked before
deciding whether it has ended. Transactions that lose a deadlock or a race on
a unique key are run again by ``_write``.
"""

from __future__ import annotations

from accord.store.sql.again import AgainMixin
from accord.store.sql.claim import ClaimMixin
from accord.store.sql.logs import LogsMixin
from accord.store.sql.prune import PruneMixin
from accord.store.sql.reads import ReadsMixin
from accord.store.sql.schedules import SchedulesMixin
from accord.store.sql.submit import SubmitMixin


class SqlStore(
    SchedulesMixin, SubmitMixin, ClaimMixin, ReadsMixin, AgainMixin, PruneMixin, LogsMixin
):
    """The task store over a SQL backend; subclasses give it connections.

    Composed of one mixin per concern: submission
    (:class:`~accord.store.sql.submit.SubmitMixin`), the node's side
    (:class:`~accord.store.sql.claim.ClaimMixin`, over completions, node
    leases, limits and settling) and reads
    (:class:`~accord.store.sql.reads.ReadsMixin`) and running again what
    ended (:class:`~accord.store.sql.again.AgainMixin`), and housekeeping
    (:class:`~accord.store.sql.prune.PruneMixin`), all on
    :class:`~accord.store.sql.core.SqlBase`.
    """
