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
- ``KvStore``: the state store's keys, transactions, history, watches and
  leases (:mod:`accord.state`), and ``MessagingStore``: mailboxes and topics
  (:mod:`accord.messaging`), in :mod:`accord.store.state_base`.

:class:`Store` is the task store (tasks and claims), :class:`StateStore` the
state store and messaging; both SQL backends implement both.

The state store's part (:class:`KvStore`, :class:`MessagingStore`, and
:class:`StateStore` of both) is in :mod:`accord.store.state_base`.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from accord.hooks import Hooks
from accord.store.records import (
    ClaimedTask,
    Completion,
    Event,
    NewRun,
    NewTask,
    NodeInfo,
    RunInfo,
    TaskInfo,
    TaskResult,
)

if TYPE_CHECKING:
    from accord.scheduling.periodic import Fired, ScheduleDef, ScheduleInfo
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


class LogLine(NamedTuple):
    """One line a task attempt printed or logged (:meth:`TaskStore.task_logs`):
    ``stream`` is ``stdout``, ``stderr`` or ``LEVEL:logger``; ``at`` the node's clock."""

    attempt: int
    seq: int
    at: float
    stream: str
    text: str


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

    # -- periodic tasks (accord.store.sql.schedules) -----------------------
    @abc.abstractmethod
    def schedules(self, app: str | None = None) -> list[ScheduleInfo]:
        """The schedules the store holds (of ``app`` if given), by app and name."""

    @abc.abstractmethod
    def set_schedule_enabled(self, app: str, name: str, enabled: bool) -> bool:
        """Pause or resume a schedule (resumed, it fires from its next slot
        after now); False if there is none of that name."""

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
        with their tasks, deps, logs, events and run-scoped state keys,
        ``batch`` runs per transaction; with ``dry_run`` only count them.
        Returns the counts (runs, succeeded, failed, cancelled, tasks, deps,
        events, log_lines, state_keys, and kept: old runs left, as an open
        task still needs them). The rules are in :mod:`accord.store.sql.prune`."""

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

    # -- logs of attempts (accord.store.sql.logs) ---------------------
    @abc.abstractmethod
    def append_logs(
        self,
        task_id: int,
        fence: int,
        lines: Sequence[tuple[float, str, str]],
        dropped: int = 0,
    ) -> bool:
        """Add ``(at, stream, text)`` lines to the running attempt that holds
        ``fence`` (and count ``dropped`` bytes the node dropped before sending);
        False, and nothing written, if the fence is stale. The attempt keeps
        its newest lines within its bound, the task its last attempts."""

    @abc.abstractmethod
    def task_logs(
        self, task_id: int, attempt: int | None = None, after: tuple[int, int] | None = None
    ) -> tuple[list[LogLine], dict[int, int]]:
        """The kept lines of a task's attempts (of one ``attempt``; only those
        after ``(attempt, seq)``) in order, and the bytes dropped per attempt."""

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

    @abc.abstractmethod
    def define_schedules(self, app: str, schedules: list[ScheduleDef]) -> None:
        """Write the app's schedule definitions (a node of it starts): a new
        or changed one fires from its next slot after now, an unchanged one
        keeps its next slot (missed slots are caught up by its policy), and
        one the app no longer defines is kept but orphaned (not fired)."""

    @abc.abstractmethod
    def fire_schedules(self, app: str, templates: dict[str, NewTask]) -> list[Fired]:
        """Fire the app's due schedules among ``templates`` (schedule name ->
        the task to submit, its arguments and key filled in here) in one
        transaction, each slot once across all nodes, and advance them."""

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
