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

import heapq
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
    """Overdue work first; then the highest priority; inside a priority, a
    task whose deadline is at risk first (earliest deadline first), then the
    least cost C(t) = w + d / v.

    - ``starve_after`` (seconds, default 1200) bounds starvation: a task that
      has waited that long is *overdue* and goes before every task that is
      not, overdue tasks in the order they became ready. No task that became
      ready after an overdue one starts before it on a node that can run it
      (docs/scheduling.md, "Starvation bound"). Set it below the length of
      the overloads an app sees and urgent work pays for it: overdue bulk
      work then takes the nodes in the middle of an urgent surge.
    - ``deadline_slack`` (seconds, default 60): a task with a deadline is at
      risk once ``deadline - now - C(t) < deadline_slack``. Deadlines far
      away do not reorder the level, so cheap work still goes first.
    - ``aging`` (priority levels per second of waiting, default 0: none)
      raises a waiting task's priority gradually, for apps that want that on
      top of the hard bound.
    """

    name = "cost"

    def __init__(
        self, aging: float = 0.0, starve_after: float = 1200.0, deadline_slack: float = 60.0
    ) -> None:
        self.aging = _finite("aging", aging)
        self.starve_after = _finite("starve_after", starve_after, positive=True)
        self.deadline_slack = _finite("deadline_slack", deadline_slack)

    def effective_priority(self, task: Candidate, now: float) -> float:
        return task.priority + self.aging * max(0.0, now - task.ready_at)

    def overdue(self, task: Candidate, now: float) -> bool:
        return now - task.ready_at >= self.starve_after

    def key(self, task: Candidate, now: float, speed: float) -> tuple[float, ...]:
        if self.overdue(task, now):
            return (0.0, task.ready_at, 0.0, 0.0, 0.0, 0.0, task.id)
        band = math.floor(self.effective_priority(task, now))
        cost = task.weight + task.size / speed
        deadline = task.deadline_at
        if deadline is not None and deadline - now - cost < self.deadline_slack:
            return (1.0, -band, 0.0, deadline, cost, task.ready_at, task.id)
        return (1.0, -band, 1.0, cost, 0.0, task.ready_at, task.id)

    def __repr__(self) -> str:
        return (
            f"CostPolicy(aging={self.aging}, starve_after={self.starve_after}, "
            f"deadline_slack={self.deadline_slack})"
        )


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


class SmithPolicy:
    """Weighted shortest processing time first (Smith's rule): least
    (w + d / v) / (1 + priority); optimal for weighted completion on one
    machine, with no bound on the wait of large, unimportant tasks. A
    baseline for the simulator."""

    name = "smith"
    priority_first = False

    def key(self, task: Candidate, now: float, speed: float) -> tuple[float, ...]:
        cost = task.weight + task.size / speed
        return (cost / (1 + max(task.priority, 0)), task.ready_at, task.id)


class EdfPolicy:
    """Earliest deadline first, tasks without one after, first come first
    served among equals; priorities ignored. A baseline for the simulator."""

    name = "edf"
    priority_first = False

    def key(self, task: Candidate, now: float, speed: float) -> tuple[float, ...]:
        deadline = task.deadline_at if task.deadline_at is not None else math.inf
        return (deadline, task.ready_at, task.id)


POLICIES: dict[str, type[Policy]] = {
    "cost": CostPolicy,
    "priority": PriorityPolicy,
    "fifo": FifoPolicy,
    "smith": SmithPolicy,
    "edf": EdfPolicy,
}


def policy_named(name: str) -> Policy:
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown scheduling policy {name!r}; choose one of {', '.join(POLICIES)}"
        ) from None
    policy: Policy = factory()
    return policy


def bounded_candidates(
    ready: Iterable[tuple[Candidate, str]], per_level: int
) -> list[tuple[Candidate, str]]:
    """The candidates a claim reads, as ``(candidate, req_key)`` pairs: for each
    (requirement class, priority) level its ``per_level`` oldest tasks and its
    ``per_level`` cheapest at speed 1 (least ``weight + size``), and the
    ``per_level`` earliest deadlines of the whole queue.

    The store reads exactly these rows off its indexes (accord.store.sql.claim);
    the simulator applies the same function, so both rank the same set.
    """
    levels: dict[tuple[str, int], list[tuple[Candidate, str]]] = {}
    dated: list[tuple[Candidate, str]] = []
    for row in ready:
        levels.setdefault((row[1], row[0].priority), []).append(row)
        if row[0].deadline_at is not None:
            dated.append(row)
    chosen: dict[int, tuple[Candidate, str]] = {}
    for rows in levels.values():
        if len(rows) <= per_level:
            chosen.update((r[0].id, r) for r in rows)
            continue
        for r in heapq.nsmallest(per_level, rows, key=lambda r: (r[0].ready_at, r[0].id)):
            chosen[r[0].id] = r
        for r in heapq.nsmallest(per_level, rows, key=_cheapest):
            chosen[r[0].id] = r
    for r in heapq.nsmallest(per_level, dated, key=lambda r: (r[0].deadline_at, r[0].id)):
        chosen[r[0].id] = r
    return list(chosen.values())


def _cheapest(row: tuple[Candidate, str]) -> tuple[float, float, int]:
    task = row[0]
    return (task.weight + task.size, task.ready_at, task.id)


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
