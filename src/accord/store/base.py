"""The storage interface: what the code above a store asks of it.

Everything durable in accord is a row written through a store. The store is
the one coordinator: nodes never talk to each other, they claim, heartbeat
and complete through it. Above this interface the code deals in the records
of :mod:`accord.store.records`; below it the backends differ only where their
databases do.

The contract comes in the parts that callers use:

- :class:`TaskStore`: submitting tasks, cancelling them, reading tasks, runs,
  nodes and events back (clients, the CLI).
- :class:`ClaimStore`: the node's side: claiming, completing, heartbeats,
  handing tasks back, registering nodes (:mod:`accord.worker`).
- :class:`KvStore`: the state store's keys, transactions, history, watches
  and leases (:mod:`accord.state`).
- :class:`MessagingStore`: mailboxes and topics (:mod:`accord.messaging`).

:class:`Store` is the task store (tasks and claims), :class:`StateStore` the
state store and messaging; both SQL backends implement both.

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
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from accord.hooks import Hooks
from accord.store.records import (
    ChangesPage,
    ClaimedTask,
    Completion,
    Event,
    Fence,
    KvChange,
    KvCompare,
    KvOp,
    KvRow,
    KvStatus,
    LeaseRow,
    MailboxRow,
    MailboxStats,
    NewRun,
    NewTask,
    NodeInfo,
    OutMessage,
    RunInfo,
    SnapshotRow,
    SubscriberRow,
    TaskInfo,
    TaskResult,
    TopicPage,
    TxnOutcome,
)

if TYPE_CHECKING:
    from accord.scheduling.policy import NodeSpec, Policy


class Backend(abc.ABC):
    """What every part of the contract shares: the store's URL, its clock,
    and a cheap test for other connections' commits."""

    url: str
    hooks: Hooks  # plugins told of what this store records (accord.hooks)
    # The schema version found when the store was opened (0: created then;
    # None: not known), so ``accord migrate`` and ``accord info`` can say it.
    found_version: int | None = None

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The version of the store's schema (its last migration applied)."""

    @abc.abstractmethod
    def changed(self) -> bool:
        """True if another connection committed since the last call (cheap)."""

    def now(self) -> float:
        """The store's time (Unix seconds), which leases, expiries and
        visibility are judged by: this host's clock, or the database
        server's where hosts share one."""
        return time.time()


class TaskStore(Backend):
    """Submitting, cancelling and reading tasks and runs. Every method is one
    transaction."""

    # -- submission -----------------------------------------------------
    @abc.abstractmethod
    def submit(
        self,
        tasks: list[NewTask],
        *,
        run: NewRun | None = None,
        run_id: int | None = None,
        parent: tuple[int, int] | None = None,
    ) -> tuple[int, list[int]]:
        """Insert ``tasks`` in one transaction and return ``(run_id, ids)``.

        With ``run``, a new run is created whose root is the first task. With
        ``parent`` (task id, fence), the tasks are that attempt's children:
        the write is refused with :class:`FencedError` if the attempt lost its
        lease, and a child whose ``seq`` exists already is not made twice.

        A task whose ``idempotency_key`` was used (by any task, or by an
        earlier task of this batch) is not made again: its id is the existing
        task's; with another name, other arguments or other dependencies the
        whole batch is refused with :class:`ConflictError`. When every task
        exists already nothing is written, and no run is made: the run given
        back is the first task's.
        """

    # -- control ----------------------------------------------------------
    @abc.abstractmethod
    def cancel_tasks(self, task_ids: list[int], reason: str) -> int:
        """Cancel open tasks and, transitively, their dependents."""

    @abc.abstractmethod
    def cancel_run(self, run_id: int, reason: str) -> int: ...

    # -- housekeeping -----------------------------------------------------
    @abc.abstractmethod
    def prune(
        self,
        older_than: float,
        *,
        dry_run: bool = False,
        batch: int = 500,
        states: Iterable[str] | None = None,
        app: str | None = None,
    ) -> dict[str, int]:
        """Remove the runs that ended (``states``, default all three ended
        states; of ``app`` if given) more than ``older_than`` seconds ago,
        with their tasks, deps, events and run-scoped state keys, ``batch``
        runs per transaction; with ``dry_run`` only count them. Returns the
        counts (runs, succeeded, failed, cancelled, tasks, deps, events,
        state_keys, and kept: old runs an open task still needs). The rules
        are in :mod:`accord.store.sql.prune`."""

    # -- reads ----------------------------------------------------------
    @abc.abstractmethod
    def results(self, task_ids: list[int]) -> list[TaskResult]: ...

    @abc.abstractmethod
    def task(self, task_id: int) -> TaskInfo: ...

    @abc.abstractmethod
    def tasks(self, run_id: int) -> list[TaskInfo]: ...

    @abc.abstractmethod
    def run(self, run_id: int) -> RunInfo: ...

    def run_state(self, run_id: int) -> str:
        """The run's state alone: cheaper than :meth:`run` for a waiter."""
        return self.run(run_id).state

    @abc.abstractmethod
    def runs(
        self,
        limit: int = 20,
        *,
        state: str | None = None,
        name: str | None = None,
        since: float | None = None,
    ) -> list[RunInfo]:
        """The latest runs first; only those in ``state``, named ``name``,
        created at or after ``since`` (store time) where given."""

    @abc.abstractmethod
    def nodes(self, include_stopped: bool = False) -> list[NodeInfo]: ...

    @abc.abstractmethod
    def events(
        self,
        run_id: int | None = None,
        limit: int = 100,
        *,
        task_id: int | None = None,
        kind: str | None = None,
        since: float | None = None,
    ) -> list[Event]:
        """The last ``limit`` events, oldest first, filtered where given."""

    @abc.abstractmethod
    def retry_task(self, task_id: int) -> list[int]:
        """Run a failed or cancelled task again with what its end cancelled;
        the ids made open again, the task first."""

    @abc.abstractmethod
    def rerun(self, run_id: int) -> int:
        """A new run with the same root (or top-level tasks) and arguments."""

    @abc.abstractmethod
    def task_args(self, task_id: int) -> bytes:
        """A task's serialised arguments."""

    @abc.abstractmethod
    def dependencies(self, run_id: int) -> list[tuple[int, int, int]]:
        """``(task, position, dependency)`` for every task of the run that
        waits on another: position -1 is a forwarded result (the task's
        value is the dependency's)."""

    def wait_changed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for :meth:`changed` to turn true.
        This default sleeps once; a backend that is told of commits wakes at once."""
        if self.changed():
            return True
        time.sleep(timeout)
        return self.changed()


class ClaimStore(Backend):
    """The node's side: claims, completions, heartbeats and node records.
    Every method is one transaction."""

    @abc.abstractmethod
    def exchange(
        self,
        node_id: int,
        completions: list[Completion],
        *,
        queue: str,
        claim: int,
        lease_ttl: float,
        node: NodeSpec | None = None,
        free: dict[str, float] | None = None,
        policy: Policy | None = None,
        only_if_work: bool = False,
    ) -> tuple[list[bool], list[ClaimedTask]]:
        """Record ``completions`` and claim up to ``claim`` tasks, in one commit.

        Claimed tasks are those ``node`` can run (capabilities), that fit in
        ``free`` resources and pass their concurrency and rate limits, in
        ``policy`` order (default :class:`~accord.scheduling.CostPolicy`).
        With ``only_if_work`` (the node saw no sign of new work), the claim is
        left out unless this commit makes tasks ready or the node's last claim
        left tasks it could not take then (resources, limits, rows held).
        Returns, for each completion, whether it was accepted (``False``: the
        attempt was fenced off), and the newly claimed tasks in policy order.
        """

    @abc.abstractmethod
    def heartbeat(
        self, node_id: int, lease_ttl: float, running: int, speed: float | None = None
    ) -> dict[int, int]:
        """Extend the leases this node holds; return ``{task_id: fence}`` still held."""

    @abc.abstractmethod
    def has_ready(self, queue: str) -> bool:
        """Whether the queue has a task that could be claimed now (its
        ``ready_at`` passed): one read, cheaper than a claim."""

    @abc.abstractmethod
    def best_ready_priority(self, queue: str) -> int | None:
        """The highest priority among the queue's ready tasks that are eligible
        now (``ready_at`` passed), a cheap read."""

    @abc.abstractmethod
    def ready_classes(self, queue: str | None = None) -> list[tuple[str, str, str | None, int]]:
        """``(queue, req_key, resources_json, count)`` for each kind of ready task."""

    @abc.abstractmethod
    def release(self, node_id: int, held: list[tuple[int, int]]) -> int:
        """Hand tasks back to the queue at once without counting the attempt."""

    @abc.abstractmethod
    def register_node(
        self,
        *,
        name: str,
        host: str,
        pid: int,
        queue: str,
        slots: int,
        mode: str,
        capabilities: list[str],
        resources: dict[str, float] | None = None,
        speed: float = 1.0,
        lease_ttl: float = 30.0,
    ) -> int:
        """Record a node; a node that does not heartbeat for ``lease_ttl``
        seconds is marked lost."""

    @abc.abstractmethod
    def stop_node(self, node_id: int) -> None: ...

    def work_changed(self) -> bool:
        """True if tasks may have become ready since the last call: what a
        node waits for. This default answers as :meth:`changed` does (and
        shares its state); a backend that tells kinds of commits apart
        answers only for new work, so idle nodes sleep through others'
        results."""
        return self.changed()

    def on_work(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Have ``wake()`` called, from another thread, when another thread
        commits new work; returns a function that stops it. A backend that is
        not told of commits never calls it (its nodes poll)."""
        return lambda: None


class Store(TaskStore, ClaimStore):
    """A durable coordination store: tasks and claims. Every method is one
    transaction.

    Implementations are safe to share between threads of one process; each
    process opens its own (a store is re-opened after ``fork``).
    """

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


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
