"""Scheduling policies: which ready task a node with free slots takes next.

Claiming is pull-based: a node asks the store for work, the store gathers a
bounded set of candidates (the oldest ready tasks of each priority level and
requirement class, read off an index) and the policy orders them. The cost
of a claim therefore depends on the number of priority levels and on the
batch size, never on the length of the queue.

The default, :class:`CostPolicy`, is the source document's rule: among the
ready tasks of the highest effective priority the node can run, take the
one of least cost C(t) = w + d / v, where w is the task's weight, d its size
and v the claiming node's measured speed. Effective priority grows with the
time a task has waited (aging), so a stream of urgent work cannot starve the
rest; inside a priority band, tasks with a deadline go first, earliest first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from accord.errors import ConfigError

RESOURCE_KINDS = ("cpu", "gpu", "memory")
DEFAULT_NEEDS: Mapping[str, float] = {"cpu": 1.0}


@dataclass(slots=True, frozen=True)
class Candidate:
    """A ready task as a policy sees it."""

    id: int
    priority: int
    weight: float
    size: float
    ready_at: float
    deadline_at: float | None = None


@runtime_checkable
class Policy(Protocol):
    """Orders candidates: the smallest key is claimed first.

    A policy may also set ``priority_first = False`` (default ``True``) when
    its order does not put higher priorities first: then a claim that finds a
    picked task held by another transaction (on PostgreSQL) goes on with the
    lower priorities instead of leaving them for a moment.
    """

    name: str

    def key(self, task: Candidate, now: float, speed: float) -> tuple[float, ...]: ...


class CostPolicy:
    """Priority bands with aging, then earliest deadline, then least cost w + d / v.

    ``aging`` is how many priority levels a ready task gains per second of
    waiting (default: one level every two minutes, so a task 5 levels down
    outranks fresh work after 10 minutes at most).
    """

    name = "cost"

    def __init__(self, aging: float = 1 / 120) -> None:
        self.aging = _finite("aging", aging)

    def effective_priority(self, task: Candidate, now: float) -> float:
        return task.priority + self.aging * max(0.0, now - task.ready_at)

    def key(self, task: Candidate, now: float, speed: float) -> tuple[float, ...]:
        band = math.floor(self.effective_priority(task, now))
        deadline = task.deadline_at if task.deadline_at is not None else math.inf
        cost = task.weight + task.size / speed
        return (-band, deadline, cost, task.ready_at, task.id)

    def __repr__(self) -> str:
        return f"CostPolicy(aging={self.aging})"


class PriorityPolicy:
    """Strict priority, first come first served inside a priority; no aging."""

    name = "priority"

    def key(self, task: Candidate, now: float, speed: float) -> tuple[float, ...]:
        return (-task.priority, task.ready_at, task.id)


class FifoPolicy:
    """First ready, first served; priorities ignored."""

    name = "fifo"
    priority_first = False

    def key(self, task: Candidate, now: float, speed: float) -> tuple[float, ...]:
        return (task.ready_at, task.id)


POLICIES = {"cost": CostPolicy, "priority": PriorityPolicy, "fifo": FifoPolicy}


def policy_named(name: str) -> Policy:
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown scheduling policy {name!r}; choose one of {', '.join(POLICIES)}"
        ) from None
    policy: Policy = factory()
    return policy


@dataclass(slots=True)
class NodeSpec:
    """What a claiming node offers: capabilities, resource capacity, speed."""

    capabilities: frozenset[str] = frozenset()
    capacity: dict[str, float] = field(default_factory=lambda: {"cpu": 1.0})
    speed: float = 1.0

    def can_meet(self, req_key: str) -> bool:
        return not req_key or set(req_key.split(",")) <= self.capabilities

    def can_hold(self, needs: Mapping[str, float]) -> bool:
        return fits(needs, self.capacity)


def req_key(requires: Iterable[str] | None) -> str:
    """The canonical form of a capability requirement (sorted, comma-joined)."""
    return ",".join(sorted(set(requires or ())))


def needs_of(resources: Mapping[str, float] | None) -> dict[str, float]:
    """A task's resource needs: one cpu unless it says otherwise."""
    needs = dict(DEFAULT_NEEDS)
    if resources:
        needs.update(resources)
    return needs


def fits(needs: Mapping[str, float], free: Mapping[str, float]) -> bool:
    return all(amount <= free.get(kind, 0.0) + 1e-9 for kind, amount in needs.items())


def _finite(label: str, value: float, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{label} must be a finite number, not {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(
            f"{label} must be {'positive' if positive else 'at least 0'}, not {value!r}"
        )
    return float(value)


def check_capacity(capacity: Mapping[str, float]) -> dict[str, float]:
    """Validate a node's resource capacity (cpu, gpu, memory)."""
    out = {}
    for kind, amount in capacity.items():
        if kind not in RESOURCE_KINDS:
            raise ConfigError(
                f"unknown resource {kind!r}; resources are {', '.join(RESOURCE_KINDS)}"
            )
        out[kind] = _finite(f"resource {kind}", amount)
    return out


def check_speed(speed: float) -> float:
    return _finite("speed", speed, positive=True)
