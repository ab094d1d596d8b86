"""The state store's part of the storage interface: keys, transactions,
history, snapshots, leases (:class:`KvStore`), mailboxes and topics
(:class:`MessagingStore`); :class:`StateStore` is both.

Semantics every state backend keeps (etcd's data model):

- One global revision counter. A write transaction that changes at least one
  key takes the next revision; its changes are numbered ``seq`` 0, 1, ... in
  the order they were applied. A transaction that changes nothing (a failed
  compare with no else-branch, a delete of an absent key) takes none.
- A key's ``version`` counts its writes (puts and deletes) and never goes
  back, also across a delete and a re-create: a deleted key keeps a tombstone
  with its version. For comparisons an absent key has version, revisions and
  lease 0 and no value.
- ``compacted`` = C means history before revision C may be gone: reads at a
  revision R >= C and watches from S >= C are exact, older ones raise
  :class:`~accord.errors.CompactedError`. Named snapshots hold C back.
- ``fence`` = (task id, fence) makes a write conditional, in the same
  transaction, on that task being ``running`` with that fence; otherwise
  :class:`~accord.errors.FencedError` and nothing is written.
"""

from __future__ import annotations

import abc

from accord.store.base import Backend
from accord.store.records import (
    ChangesPage,
    Fence,
    KvChange,
    KvCompare,
    KvOp,
    KvRow,
    KvStatus,
    LeaseRow,
    MailboxRow,
    MailboxStats,
    OutMessage,
    SnapshotRow,
    SubscriberRow,
    TopicPage,
    TxnOutcome,
)


class KvStore(Backend):
    """The state store's keys, transactions, history, snapshots and leases.
    Every method is one transaction; writes are durable when they return."""

    # -- keys ---------------------------------------------------------------
    @abc.abstractmethod
    def kv_get(self, key: str, revision: int | None = None) -> tuple[KvRow | None, int]:
        """The key's row (at ``revision`` if given) and the store's revision then."""

    @abc.abstractmethod
    def kv_range(
        self, prefix: str, revision: int | None = None, limit: int | None = None
    ) -> tuple[list[KvRow], int]:
        """Live keys under ``prefix`` in key order, and the store's revision then."""

    @abc.abstractmethod
    def kv_txn(
        self,
        compares: list[KvCompare],
        then: list[KvOp],
        orelse: list[KvOp],
        *,
        fence: Fence = None,
        task_id: int | None = None,
    ) -> TxnOutcome:
        """If every compare holds apply ``then``, else ``orelse``, all or nothing.

        Raises :class:`~accord.errors.LeaseExpiredError` if a put names a lease
        that is gone, :class:`~accord.errors.FencedError` for a stale fence.
        """

    @abc.abstractmethod
    def kv_changes(
        self, key: str, prefix: bool, from_revision: int, limit: int = 1000
    ) -> ChangesPage:
        """Changes of ``key`` (or under it) from ``from_revision`` on, whole revisions only.

        Raises :class:`~accord.errors.CompactedError` if ``from_revision`` is
        below the compaction point.
        """

    @abc.abstractmethod
    def kv_history(
        self,
        key: str,
        prefix: bool,
        from_revision: int = 0,
        to_revision: int | None = None,
        limit: int | None = None,
    ) -> list[KvChange]:
        """The kept history of ``key`` (or under it), oldest first."""

    @abc.abstractmethod
    def kv_status(self) -> KvStatus: ...

    @abc.abstractmethod
    def kv_compact(self, revision: int, *, fence: Fence = None) -> int:
        """Drop history before ``revision`` (held back by snapshots); return the new point."""

    @abc.abstractmethod
    def kv_set_retention(self, retain: int | None) -> None:
        """Keep about the last ``retain`` revisions (None: keep all)."""

    @abc.abstractmethod
    def kv_rollback(
        self,
        key: str,
        prefix: bool,
        *,
        revision: int | None = None,
        snapshot: str | None = None,
        fence: Fence = None,
        task_id: int | None = None,
    ) -> TxnOutcome:
        """Make ``key`` (or the keys under it) what they were at a revision, as
        one new revision (no revision if nothing differs)."""

    @abc.abstractmethod
    def kv_snapshot(self, name: str, *, fence: Fence = None) -> int: ...

    @abc.abstractmethod
    def kv_snapshots(self, prefix: str) -> list[SnapshotRow]: ...

    @abc.abstractmethod
    def kv_delete_snapshot(self, name: str, *, fence: Fence = None) -> bool: ...

    # -- leases -------------------------------------------------------------
    @abc.abstractmethod
    def lease_grant(self, ttl: float, *, fence: Fence = None) -> LeaseRow: ...

    @abc.abstractmethod
    def lease_keepalive(self, lease_id: int, *, fence: Fence = None) -> LeaseRow:
        """Extend a lease by its ttl; :class:`LeaseExpiredError` if it is gone."""

    @abc.abstractmethod
    def lease_revoke(self, lease_id: int, *, fence: Fence = None) -> int:
        """End a lease now, deleting its keys; return how many keys went."""

    @abc.abstractmethod
    def lease_info(self, lease_id: int) -> LeaseRow | None: ...

    @abc.abstractmethod
    def kv_expire_leases(self) -> int:
        """Delete the keys of every expired lease; return how many leases ended."""


class MessagingStore(Backend):
    """Mailboxes and topics. Every method is one transaction; writes are
    durable when they return."""

    # -- mailboxes ----------------------------------------------------------
    @abc.abstractmethod
    def mailbox_send(
        self, mailbox: str, messages: list[OutMessage], *, fence: Fence = None
    ) -> list[tuple[int, bool]]:
        """Store messages; return ``(seq, duplicate)`` for each.

        A message whose id is already stored (and not yet past the
        de-duplication window) is not stored again; with another checksum it
        raises :class:`~accord.errors.ConflictError` and nothing is written.
        """

    @abc.abstractmethod
    def mailbox_receive(
        self, mailbox: str, limit: int, visibility: float, *, fence: Fence = None
    ) -> tuple[list[MailboxRow], float | None]:
        """Take up to ``limit`` visible messages, hidden for ``visibility`` seconds.

        Also returns when the next hidden message becomes visible (``None``
        if none is in flight).
        """

    @abc.abstractmethod
    def mailbox_settle(
        self,
        mailbox: str,
        deliveries: list[tuple[int, int]],
        *,
        ack: bool,
        delay: float = 0.0,
        fence: Fence = None,
    ) -> list[bool]:
        """Acknowledge (``ack``) or make visible again after ``delay`` the
        ``(seq, delivery)`` pairs; False where that delivery is no longer current."""

    @abc.abstractmethod
    def mailbox_stats(self, mailbox: str) -> MailboxStats: ...

    @abc.abstractmethod
    def mailbox_purge(self, acked_before: float, *, fence: Fence = None) -> int:
        """Forget acknowledged messages acknowledged before ``acked_before``."""

    # -- topics -------------------------------------------------------------
    @abc.abstractmethod
    def topic_publish(
        self, topic: str, messages: list[OutMessage], *, fence: Fence = None
    ) -> list[tuple[int, bool]]:
        """Append messages; return ``(offset, duplicate)`` for each."""

    @abc.abstractmethod
    def topic_read(self, topic: str, from_offset: int, limit: int) -> TopicPage:
        """Messages from ``from_offset`` on; :class:`CompactedError` if trimmed."""

    @abc.abstractmethod
    def topic_subscribe(
        self, topic: str, subscriber: str, from_offset: int | None, *, fence: Fence = None
    ) -> int:
        """Register ``subscriber`` (at ``from_offset``, else where it stopped, else
        at the end); return its next offset."""

    @abc.abstractmethod
    def topic_commit(
        self, topic: str, subscriber: str, next_offset: int, *, fence: Fence = None
    ) -> None: ...

    @abc.abstractmethod
    def topic_unsubscribe(self, topic: str, subscriber: str, *, fence: Fence = None) -> bool: ...

    @abc.abstractmethod
    def topic_subscribers(self, topic: str) -> list[SubscriberRow]: ...

    @abc.abstractmethod
    def topic_trim(
        self, topic: str, before: int | None, *, force: bool = False, fence: Fence = None
    ) -> int:
        """Drop messages before ``before`` (default: the slowest subscriber's
        offset; never past it unless ``force``); return the new first offset."""

    @abc.abstractmethod
    def topic_offsets(self, topic: str) -> tuple[int, int]:
        """``(first_offset, next_offset)`` of a topic."""


class StateStore(KvStore, MessagingStore):
    """Storage of the state store and of messaging. Every method is one
    transaction; writes are durable when they return.

    A backend implements it next to :class:`Store`: both SQL stores mix in
    :class:`~accord.store.sql.state.SqlStateMixin` (the SQLite store through
    :class:`~accord.store.sqlite.state.SqliteStateMixin`, which adds its group
    commit). Above it, :mod:`accord.state` and :mod:`accord.messaging` validate
    input and deal in user values.
    """
