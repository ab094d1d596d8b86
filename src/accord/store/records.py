"""The records that cross the storage interface, for tasks and for state.

Above :mod:`accord.store.base` the code deals in these plain values; below it
the backends turn them into rows. Task records come first (what is submitted,
claimed, completed and read back), then those of the state store and of
messaging, whose keys are full physical keys (namespace included) and whose
values are serialised bytes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal

TERMINAL = ("succeeded", "failed", "cancelled")
OPEN = ("pending", "ready", "running")
# Leases a task may lose (its nodes died or hung while holding it) before it
# fails, unless it says otherwise; lost leases do not use up its retries.
LEASE_LOSSES = 3


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
    max_losses: int = LEASE_LOSSES
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
    max_losses: int = LEASE_LOSSES  # ... before it fails


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


# -- the state store and messaging ------------------------------------------

Fence = tuple[int, int] | None
"""(task id, fence) of the attempt a write is made for, or ``None``."""

Target = Literal["value", "version", "revision", "create_revision", "lease"]
Op = Literal["==", "!=", "<", "<=", ">", ">="]
TARGETS: tuple[str, ...] = ("value", "version", "revision", "create_revision", "lease")
OPS: tuple[str, ...] = ("==", "!=", "<", "<=", ">", ">=")


class ChangeKind(enum.StrEnum):
    PUT = "put"
    DELETE = "delete"


@dataclass(slots=True, frozen=True)
class KvRow:
    """A live key as stored (``value`` serialised)."""

    key: str
    value: bytes
    revision: int
    version: int
    create_revision: int
    lease_id: int | None


@dataclass(slots=True, frozen=True)
class KvChange:
    """One change of one key, as kept in the history."""

    revision: int
    seq: int
    key: str
    kind: ChangeKind
    value: bytes | None
    version: int
    create_revision: int
    lease_id: int | None
    at: float


@dataclass(slots=True, frozen=True)
class KvCompare:
    """``<target of key> <op> operand``; a value operand is serialised bytes."""

    key: str
    target: Target
    op: Op
    operand: Any


@dataclass(slots=True, frozen=True)
class KvPut:
    key: str
    value: bytes
    lease_id: int | None = None


@dataclass(slots=True, frozen=True)
class KvDelete:
    """Delete ``key``, or with ``prefix`` every key that starts with it."""

    key: str
    prefix: bool = False


KvOp = KvPut | KvDelete


@dataclass(slots=True, frozen=True)
class TxnOutcome:
    """Which branch ran, the revision it wrote (or the current one if it
    wrote nothing), and what the compares saw when they failed."""

    succeeded: bool
    revision: int
    changed: int
    failed: tuple[tuple[KvCompare, Any], ...] = ()


@dataclass(slots=True, frozen=True)
class ChangesPage:
    """Changes of whole revisions, and the revision to read from next."""

    changes: list[KvChange]
    next_revision: int
    current_revision: int


@dataclass(slots=True, frozen=True)
class KvStatus:
    revision: int
    compacted: int
    retain: int | None
    next_lease_expiry: float | None


@dataclass(slots=True, frozen=True)
class SnapshotRow:
    name: str
    revision: int
    created_at: float


@dataclass(slots=True, frozen=True)
class LeaseRow:
    id: int
    ttl: float
    expires_at: float
    granted_at: float
    keys: int


@dataclass(slots=True, frozen=True)
class OutMessage:
    """A message to store: its sender-given id, payload and checksum."""

    msg_id: str
    payload: bytes
    checksum: bytes


@dataclass(slots=True, frozen=True)
class MailboxRow:
    seq: int
    msg_id: str
    payload: bytes
    checksum: bytes
    sent_at: float
    deliveries: int


@dataclass(slots=True, frozen=True)
class MailboxStats:
    ready: int
    in_flight: int
    acked: int
    next_visible_at: float | None


@dataclass(slots=True, frozen=True)
class TopicRow:
    offset: int
    msg_id: str
    payload: bytes
    checksum: bytes
    published_at: float


@dataclass(slots=True, frozen=True)
class TopicPage:
    rows: list[TopicRow]
    first_offset: int
    next_offset: int


@dataclass(slots=True, frozen=True)
class SubscriberRow:
    subscriber: str
    next_offset: int
    updated_at: float


@dataclass(slots=True, frozen=True)
class ObjectRow:
    """One object of the object store, as its catalogue records it."""

    digest: str  # sha256 of the stored bytes, hex
    size: int
    kind: str  # "bytes", "ndarray" or "value"
    location: str  # what holds the bytes: "database", a directory or a URL
    created_at: float
    touched_at: float  # the last put of it
    pinned: bool
