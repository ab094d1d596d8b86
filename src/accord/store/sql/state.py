"""The state store and messaging, written once in the SQL that SQLite and PostgreSQL share.

Mixed into a :class:`~accord.store.sql.store.SqlStore` subclass, whose plumbing it
uses: ``_write`` (one write transaction, durable on commit; run again on
PostgreSQL after a deadlock or a unique-key race, so a body has no effect
outside the database), ``_read`` (one statement), ``_snap`` (several reads
that see one state) and the dialect's row-lock suffixes ``lock``, ``share``
and ``skip_locked`` (empty on SQLite).

Concurrency. On SQLite a writer holds the database's one write lock for the
whole transaction, so every read inside it is stable and the suffixes are
empty. On PostgreSQL transactions run side by side at READ COMMITTED (each
statement sees what was committed when it started), so every read that a
write depends on locks what it read:

- **Keys.** Every transaction that writes keys, ends leases or moves the
  compaction point locks the one ``kv_meta`` row ``FOR UPDATE`` before it
  reads anything it depends on (:meth:`SqlStateMixin._begin_kv`). That
  orders the writers of keys: the next one reads the last revision only
  after the previous one committed, so revisions are taken and made visible
  in order. A watcher reading ``revision >= N`` therefore never skips a
  revision that commits later, and compares read inside the lock are current
  (single-key operations are linearizable). What depends on the lock is read
  by statements after the one that took it: a statement that waited for a
  row lock re-reads that row but not its subqueries.
- **Fences** lock the task row ``FOR SHARE``: the task cannot be re-leased
  (its fence bumped) before the fenced write commits.
- **Leases.** Ending a lease (expiry, revoke) happens under the ``kv_meta``
  lock, and expiry locks the due lease rows, so a keep-alive that commits
  first is seen and the lease is kept. A keep-alive extends only a lease that
  has not expired yet, in one conditional ``UPDATE``.
- **Snapshots** lock ``kv_meta`` ``FOR SHARE`` (compaction holds it ``FOR
  UPDATE``): a snapshot is never created below a compaction point that a
  concurrent compaction did not know it had to respect.
- **Mailboxes.** A receive takes its messages ``FOR UPDATE SKIP LOCKED``:
  receivers do not wait for each other, and a message another receiver took
  in the meantime is re-checked and left alone, so no two receivers hold one
  message within its visibility timeout. Acks and nacks are single
  conditional ``UPDATE`` s on the delivery count.
- **Topics.** A publish locks its topic's row: offsets are taken and made
  visible in order, and the de-duplication check sees every earlier publish.
  A subscribe locks it ``FOR SHARE`` and a trim ``FOR UPDATE`` (with the
  subscribers' rows), so a trim never passes a subscriber registering at the
  same time.

Locks are taken in one order: the task row of a fence first (while holding
nothing else), then ``kv_meta``, then lease rows; a task-store transaction
never waits for a row of these tables. So no cycle of waits can form (were
one to form, PostgreSQL would break it and ``_write`` would run the loser
again).

Two shortcuts spare the lock where nothing is written. A transaction whose
compares fail and that has no else-branch is decided by one read
(:meth:`SqlStateMixin._lost_without_writing`): under contention, losing a
compare-and-set costs a read, not a turn at the lock. And a write
transaction that changed nothing is rolled back rather than committed
(:meth:`SqlStateMixin._write_if`).

Reads that must agree with each other (a page of history and the revision it
ends at, a value at an old revision and the compaction point) run in one
``_snap``.
"""

from __future__ import annotations

from accord.store.sql.history import HistoryMixin
from accord.store.sql.kv import KvMixin
from accord.store.sql.mailboxes import MailboxMixin
from accord.store.sql.objects import ObjectsMixin
from accord.store.sql.topics import TopicMixin
from accord.store.sql.txn import TxnMixin


class SqlStateMixin(TxnMixin, HistoryMixin, KvMixin, MailboxMixin, TopicMixin, ObjectsMixin):
    """The state store and messaging over a :class:`~accord.store.sql.store.SqlStore`.

    Composed of one mixin per concern: reads of keys
    (:class:`~accord.store.sql.kv.KvMixin`), transactions
    (:class:`~accord.store.sql.txn.TxnMixin`), history, compaction and
    snapshots (:class:`~accord.store.sql.history.HistoryMixin`), the object
    catalogue (:class:`~accord.store.sql.objects.ObjectsMixin`), leases
    (:class:`~accord.store.sql.leases.LeasesMixin`), mailboxes and topics, all
    on :class:`~accord.store.sql.state_core.StateBase`.
    """
