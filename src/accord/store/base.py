"""The storage interface and the records that cross it.

Everything durable in accord is a row written through a :class:`Store`. The
store is the one coordinator: nodes never talk to each other, they claim,
heartbeat and complete through it. Above this interface the code deals in
these records; below it the backends differ only where their databases do.
"""

from __future__ import annotations

import abc
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accord.scheduling.policy import NodeSpec, Policy

TERMINAL = ("succeeded", "failed", "cancelled")
OPEN = ("pending", "ready", "running")


class TaskState(enum.StrEnum):
    PENDING = "pending"
    READY = "ready"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self.value in TERMINAL


@dataclass(slots=True)
class NewTask:
    """A task to insert. ``deps`` holds task ids, or ``-(i + 1)`` for the
    i-th task of the same batch (a task submitted but not yet written)."""

    name: str
    queue: str
    args: bytes
    deps: list[int] = field(default_factory=list)
    priority: int = 0
    weight: float = 0.0
    size: float = 1.0
    max_attempts: int = 1
    backoff: float = 1.0
    max_backoff: float = 60.0
    timeout: float | None = None
    requires: list[str] | None = None
    resources: dict[str, float] | None = None
    ready_at: float = 0.0  # eligible from (0: at once)
    deadline_at: float | None = None
    # Relative times, counted by the store's clock from the commit (on
    # PostgreSQL the server's clock, so a node's wrong clock does not shift them).
    delay: float = 0.0
    deadline_in: float | None = None
    limit_key: str | None = None
    concurrency: int | None = None
    rate: float | None = None
    seq: int | None = None
    idempotency_key: str | None = None


@dataclass(slots=True, frozen=True)
class NewRun:
    """A run to create. A rooted run's first task is its root: the run ends
    with the root's state and value, and a failed root cancels the rest."""

    app: str
    name: str
    rooted: bool = True


@dataclass(slots=True)
class ClaimedTask:
    """A task a node now holds, with everything needed to run it."""

    id: int
    run_id: int
    name: str
    args: bytes
    dep_results: list[bytes | None]
    fence: int
    attempt: int
    max_attempts: int
    timeout: float | None
    size: float
    priority: int = 0
    needs: dict[str, float] = field(default_factory=dict)


class Outcome(enum.StrEnum):
    OK = "ok"
    ERROR = "error"
    FORWARD = "forward"


@dataclass(slots=True)
class Completion:
    """What an attempt produced. ``retryable`` errors go back to ready while
    attempts remain; ``forward_to`` makes the task take another task's result."""

    task_id: int
    fence: int
    outcome: Outcome
    result: bytes | None = None
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    retryable: bool = True
    retry_delay: float | None = None
    forward_to: int | None = None
    duration: float = 0.0  # seconds the attempt ran, as its slot measured


@dataclass(slots=True, frozen=True)
class TaskInfo:
    id: int
    run_id: int
    parent_id: int | None
    name: str
    queue: str
    state: TaskState
    priority: int
    attempts: int
    max_attempts: int
    fence: int
    node_id: int | None
    node_name: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    ready_at: float
    deadline_at: float | None
    requires: list[str]
    resources: dict[str, float] | None
    error: str | None
    error_type: str | None
    traceback: str | None
    forward_to: int | None
    losses: int = 0  # leases lost because its node died or hung


@dataclass(slots=True, frozen=True)
class TaskResult:
    """The state of a task as a waiter needs it."""

    id: int
    state: TaskState
    result: bytes | None
    error: str | None
    error_type: str | None
    traceback: str | None


@dataclass(slots=True, frozen=True)
class RunInfo:
    id: int
    app: str
    name: str
    state: str
    root_task_id: int | None
    created_at: float
    finished_at: float | None
    error: str | None
    counts: dict[str, int]


@dataclass(slots=True, frozen=True)
class NodeInfo:
    id: int
    name: str
    host: str
    pid: int
    queue: str
    slots: int
    mode: str
    capabilities: list[str]
    resources: dict[str, float]
    speed: float
    state: str
    started_at: float
    heartbeat_at: float
    stopped_at: float | None
    running: int
    completed: int


@dataclass(slots=True, frozen=True)
class Event:
    id: int
    at: float
    run_id: int | None
    task_id: int | None
    node_id: int | None
    kind: str
    detail: str | None


class Store(abc.ABC):
    """A durable coordination store. Every method is one transaction.

    Implementations are safe to share between threads of one process; each
    process opens its own (a store is re-opened after ``fork``).
    """

    url: str

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

    # -- the node's side ------------------------------------------------
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

    # -- control ----------------------------------------------------------
    @abc.abstractmethod
    def cancel_tasks(self, task_ids: list[int], reason: str) -> int:
        """Cancel open tasks and, transitively, their dependents."""

    @abc.abstractmethod
    def cancel_run(self, run_id: int, reason: str) -> int: ...

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
    def runs(self, limit: int = 20) -> list[RunInfo]: ...

    @abc.abstractmethod
    def nodes(self, include_stopped: bool = False) -> list[NodeInfo]: ...

    @abc.abstractmethod
    def events(self, run_id: int | None = None, limit: int = 100) -> list[Event]: ...

    # -- notification ---------------------------------------------------
    @abc.abstractmethod
    def changed(self) -> bool:
        """True if another connection committed since the last call (cheap)."""

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

    def wait_changed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for :meth:`changed` to turn true.
        This default sleeps once; a backend that is told of commits wakes at once."""
        if self.changed():
            return True
        time.sleep(timeout)
        return self.changed()

    def now(self) -> float:
        """The store's time (Unix seconds), which leases, expiries and
        visibility are judged by: this host's clock, or the database
        server's where hosts share one."""
        return time.time()

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
