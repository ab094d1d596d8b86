"""A discrete-event simulator of pull-based scheduling through the real policies.

Nodes of given speeds take tasks the moment they are free, exactly as real
nodes claim: among the ready tasks they can run, the one the policy ranks
first. A task occupies its node for ``weight + size / speed`` seconds. The
same :class:`~accord.scheduling.Policy` objects order candidates here and in
the store's claim, so what the simulator shows is what the runtime does.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from accord.scheduling.policy import Candidate, CostPolicy, Policy, bounded_candidates


@dataclass(slots=True)
class SimTask:
    id: int
    label: str
    priority: int
    weight: float
    size: float
    arrival: float
    requires: frozenset[str] = frozenset()
    deadline: float | None = None  # absolute, in simulated seconds


@dataclass(slots=True, frozen=True)
class SimNode:
    name: str
    speed: float
    capabilities: frozenset[str] = frozenset()


@dataclass(slots=True)
class Outcome:
    task: SimTask
    node: str
    start: float
    finish: float

    @property
    def wait(self) -> float:
        return self.start - self.task.arrival


@dataclass
class Report:
    policy: str
    outcomes: list[Outcome] = field(default_factory=list)

    def by_label(self) -> dict[str, list[Outcome]]:
        groups: dict[str, list[Outcome]] = {}
        for outcome in self.outcomes:
            groups.setdefault(outcome.task.label, []).append(outcome)
        return groups

    @property
    def makespan(self) -> float:
        first = min(o.task.arrival for o in self.outcomes)
        return max(o.finish for o in self.outcomes) - first

    @property
    def weighted_completion(self) -> float:
        """Mean time from arrival to finish, each task weighted by 1 + priority."""
        total = sum((1 + o.task.priority) * (o.finish - o.task.arrival) for o in self.outcomes)
        return total / sum(1 + o.task.priority for o in self.outcomes)

    @property
    def deadline_misses(self) -> int:
        return sum(
            1 for o in self.outcomes if o.task.deadline is not None and o.finish > o.task.deadline
        )

    @property
    def longest_wait(self) -> float:
        return max(o.wait for o in self.outcomes)


# The claim path's bound for one node claiming one task on SQLite
# (``limit * claimers + 16``, accord.store.sql.claim).
CLAIM_PER_LEVEL = 17


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def simulate(
    tasks: Iterable[SimTask],
    nodes: Sequence[SimNode],
    policy: Policy,
    *,
    per_level: int | None = CLAIM_PER_LEVEL,
) -> Report:
    """Run ``tasks`` on ``nodes`` under ``policy``; every task must be runnable somewhere.

    ``per_level`` is the claim path's candidate bound (the default: that of
    one node claiming one task on SQLite); with ``None`` the policy ranks
    every ready task, which is what the bound is measured against.
    """
    pending = sorted(tasks, key=lambda t: (t.arrival, t.id))
    for task in pending:
        if not any(task.requires <= node.capabilities for node in nodes):
            raise ValueError(f"task {task.id} requires {set(task.requires)}: no node has it")
    report = Report(policy=getattr(policy, "name", type(policy).__name__))
    ready: dict[int, SimTask] = {}
    free_at = [(0.0, i) for i in range(len(nodes))]  # (time the node is free, node index)
    heapq.heapify(free_at)
    idle: list[int] = []  # nodes free with nothing they can run, waiting for an arrival
    next_arrival = 0
    now = 0.0
    while next_arrival < len(pending) or ready:
        # Advance to the next moment something can happen.
        candidates_time = free_at[0][0] if free_at else math.inf
        arrival_time = pending[next_arrival].arrival if next_arrival < len(pending) else math.inf
        if arrival_time <= candidates_time or not free_at:
            now = arrival_time
            while next_arrival < len(pending) and pending[next_arrival].arrival <= now:
                ready[pending[next_arrival].id] = pending[next_arrival]
                next_arrival += 1
            for index in idle:
                heapq.heappush(free_at, (now, index))
            idle.clear()
            continue
        now, index = heapq.heappop(free_at)
        node = nodes[index]
        rows = [_candidate(t) for t in ready.values()]
        if per_level is not None:
            rows = bounded_candidates(rows, per_level)
        runnable = [(c, r) for c, r in rows if not r or set(r.split(",")) <= node.capabilities]
        if not runnable:
            idle.append(index)
            continue
        chosen, _ = min(runnable, key=lambda cr: policy.key(cr[0], now, node.speed))
        best = ready.pop(chosen.id)
        finish = now + best.weight + best.size / node.speed
        report.outcomes.append(Outcome(best, node.name, now, finish))
        heapq.heappush(free_at, (finish, index))
    return report


def _candidate(t: SimTask) -> tuple[Candidate, str]:
    return (
        Candidate(t.id, t.priority, t.weight, t.size, t.arrival, t.deadline),
        ",".join(sorted(t.requires)),
    )


def starvation_bound(tasks: Iterable[SimTask], nodes: Sequence[SimNode], policy: Policy) -> float:
    """The wait no task exceeds under :class:`CostPolicy` when overdue tasks do
    not queue behind each other: ``starve_after`` plus the longest that a
    node able to run the task can stay busy with one task (the longest run of
    any task on the slowest node). ``inf`` for a policy without the bound."""
    starve_after = getattr(policy, "starve_after", None)
    if not isinstance(policy, CostPolicy) or starve_after is None:
        return math.inf
    slowest = min(node.speed for node in nodes)
    longest_run = max((t.weight + t.size / slowest for t in tasks), default=0.0)
    return float(starve_after) + longest_run


def mixed_workload(seed: int = 7) -> tuple[list[SimTask], list[SimNode]]:
    """Urgent and bulk work on nodes of speeds 1, 2 and 4 (capacity 7 size/s).

    A backlog of bulk tasks (priority 0, large) is there from the start and
    keeps arriving. Urgent tasks (priority 5, small, 2-minute deadlines)
    arrive all along, with a 20-minute surge that takes nearly the whole
    capacity. Forty priority-2 tasks need the GPU of the fastest node.
    """
    rng = random.Random(seed)
    nodes = [
        SimNode("slow", 1.0),
        SimNode("medium", 2.0),
        SimNode("fast", 4.0, frozenset({"gpu"})),
    ]
    tasks: list[SimTask] = []

    def add(
        label: str,
        priority: int,
        size: float,
        arrival: float,
        requires: frozenset[str] = frozenset(),
        deadline: float | None = None,
    ) -> None:
        weight = rng.uniform(0.0, 0.5)
        tasks.append(
            SimTask(len(tasks), label, priority, weight, size, arrival, requires, deadline)
        )

    for _ in range(200):
        add("bulk", 0, rng.uniform(5, 30), 0.0)
    t = 0.0
    while t < 3000:
        t += rng.expovariate(1 / 12)
        add("bulk", 0, rng.uniform(5, 30), t)
    t = 0.0
    while t < 3000:
        surge = 900 <= t < 2100
        t += rng.expovariate(2.0 if surge else 1 / 4)
        add("urgent", 5, rng.uniform(1, 4), t, deadline=t + 120)
    for _ in range(40):
        add("gpu", 2, rng.uniform(10, 40), rng.uniform(0, 2400), requires=frozenset({"gpu"}))
    return tasks, nodes


def heavy_tailed_workload(seed: int = 11) -> tuple[list[SimTask], list[SimNode]]:
    """The mixed workload's shape with Pareto-distributed sizes (shape 1.5,
    so a few tasks are a hundred times the median): bulk work of priority 0
    and urgent work of priority 5, arriving at about 80% of the capacity,
    with a backlog at the start."""
    rng = random.Random(seed)
    nodes = [SimNode("slow", 1.0), SimNode("medium", 2.0), SimNode("fast", 4.0)]
    tasks: list[SimTask] = []

    def add(label: str, priority: int, scale: float, arrival: float) -> None:
        size = min(scale * rng.paretovariate(1.5), 200 * scale)
        tasks.append(SimTask(len(tasks), label, priority, rng.uniform(0.0, 0.5), size, arrival))

    for _ in range(100):
        add("bulk", 0, 4.0, 0.0)
    t = 0.0
    while t < 3000:
        t += rng.expovariate(1 / 3)
        add("bulk", 0, 4.0, t)
    t = 0.0
    while t < 3000:
        t += rng.expovariate(1 / 2)
        add("urgent", 5, 1.0, t)
    return tasks, nodes


def deadline_burst_workload(seed: int = 13) -> tuple[list[SimTask], list[SimNode]]:
    """Steady bulk (priority 0) and normal (priority 2) work with bursts of
    deadline tasks: every five minutes, 60 urgent tasks (priority 5) arrive
    within ten seconds, each due 20 to 120 seconds later, more than the
    nodes can finish in time if they take them in arrival order."""
    rng = random.Random(seed)
    nodes = [SimNode("slow", 1.0), SimNode("medium", 2.0), SimNode("fast", 4.0)]
    tasks: list[SimTask] = []

    def add(
        label: str, priority: int, size: float, arrival: float, deadline: float | None = None
    ) -> None:
        tasks.append(
            SimTask(
                len(tasks),
                label,
                priority,
                rng.uniform(0.0, 0.5),
                size,
                arrival,
                frozenset(),
                deadline,
            )
        )

    for _ in range(150):
        add("bulk", 0, rng.uniform(5, 30), 0.0)
    t = 0.0
    while t < 3000:
        t += rng.expovariate(1 / 8)
        add("bulk", 0, rng.uniform(5, 30), t)
    t = 0.0
    while t < 3000:
        t += rng.expovariate(1 / 3)
        add("normal", 2, rng.uniform(1, 6), t)
    for start in range(150, 3000, 300):
        for _ in range(60):
            at = start + rng.uniform(0, 10)
            add("urgent", 5, rng.uniform(1, 5), at, deadline=at + rng.uniform(20, 120))
    return tasks, nodes


WORKLOADS = {
    "mixed": mixed_workload,
    "heavy-tailed": heavy_tailed_workload,
    "deadline-bursts": deadline_burst_workload,
}
