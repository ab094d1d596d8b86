"""The simulator: exact schedules of tiny workloads, and the policies compared
on the mixed workload (urgent work served fast, nothing starved)."""

from __future__ import annotations

import statistics

import pytest

from accord.scheduling import CostPolicy, FifoPolicy, Policy, PriorityPolicy
from accord.scheduling.sim import (
    Report,
    SimNode,
    SimTask,
    mixed_workload,
    percentile,
    simulate,
    starvation_bound,
)


def schedule(report: Report) -> list[tuple[int, str, float, float]]:
    return [(o.task.id, o.node, o.start, o.finish) for o in report.outcomes]


# Two nodes, speeds 1 and 2; four tasks, one arriving at t = 3.
#   id: priority, weight, size, arrival
TINY = [
    SimTask(0, "bulk", 0, 0.0, 4.0, 0.0),
    SimTask(1, "mid", 1, 1.0, 2.0, 0.0),
    SimTask(2, "bulk", 0, 0.0, 2.0, 0.0),
    SimTask(3, "urgent", 5, 0.0, 1.0, 3.0),
]
NODES = [SimNode("A", 1.0), SimNode("B", 2.0)]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # A (v=1) takes the priority-1 task: 1 + 2/1 = 3 s. B (v=2) takes the
        # cheaper bulk task (2/2 = 1 s) before the bigger one (4/2 = 2 s).
        # At t=3 both are free; A comes first and takes the urgent task.
        (
            CostPolicy(aging=0),
            [(1, "A", 0.0, 3.0), (2, "B", 0.0, 1.0), (0, "B", 1.0, 3.0), (3, "A", 3.0, 4.0)],
        ),
        # FIFO: arrival then id, whatever the priority or the cost.
        (
            FifoPolicy(),
            [(0, "A", 0.0, 4.0), (1, "B", 0.0, 2.0), (2, "B", 2.0, 3.0), (3, "B", 3.0, 3.5)],
        ),
        # Pure priority: the mid task first, then bulk by arrival (id 0 before 2).
        (
            PriorityPolicy(),
            [(1, "A", 0.0, 3.0), (0, "B", 0.0, 2.0), (2, "B", 2.0, 3.0), (3, "A", 3.0, 4.0)],
        ),
    ],
    ids=["cost", "fifo", "priority"],
)
def test_tiny_workload_exact_schedule(policy: Policy, expected: list[object]) -> None:
    report = simulate(TINY, NODES, policy)
    assert schedule(report) == expected
    assert report.policy == policy.name
    assert report.makespan == 4.0


def test_tiny_workload_figures() -> None:
    report = simulate(TINY, NODES, CostPolicy(aging=0))
    # (1+p) * (finish - arrival): 1*3 + 2*3 + 1*1 + 6*1 = 16 over weights 10
    assert report.weighted_completion == pytest.approx(1.6)
    assert report.longest_wait == 1.0
    assert report.deadline_misses == 0
    assert {label: len(o) for label, o in report.by_label().items()} == {
        "mid": 1,
        "bulk": 2,
        "urgent": 1,
    }
    assert [o.wait for o in report.outcomes] == [0.0, 0.0, 1.0, 0.0]


def stream() -> list[SimTask]:
    """A low task at t=0 and one priority-1 task per second for 6 s, each
    taking the one node exactly 1 s."""
    return [SimTask(0, "low", 0, 0.0, 1.0, 0.0)] + [
        SimTask(k + 1, "high", 1, 0.0, 1.0, float(k)) for k in range(6)
    ]


def test_aging_lets_a_low_task_through_a_stream_of_higher_work() -> None:
    """0.5 levels per second: the low task reaches band 1 at t=2 and, older
    at equal cost, goes before the task arriving then."""
    node = [SimNode("only", 1.0)]
    aged = simulate(stream(), node, CostPolicy(aging=0.5))
    assert [(o.task.id, o.start) for o in aged.outcomes] == [
        (1, 0.0),
        (2, 1.0),
        (0, 2.0),
        (3, 3.0),
        (4, 4.0),
        (5, 5.0),
        (6, 6.0),
    ]
    strict = simulate(stream(), node, PriorityPolicy())
    assert [(o.task.id, o.start) for o in strict.outcomes][-1] == (0, 6.0)
    assert aged.longest_wait == 2.0 and strict.longest_wait == 6.0


def test_deadlines_in_the_simulator() -> None:
    """One node of speed 1; in one band the deadline task goes first even
    though it costs more, and a late finish counts as a miss."""
    tasks = [
        SimTask(0, "cheap", 0, 0.0, 1.0, 0.0),
        SimTask(1, "due", 0, 0.0, 3.0, 0.0, deadline=3.5),
        SimTask(2, "tight", 0, 0.0, 1.0, 0.0, deadline=2.0),
    ]
    report = simulate(tasks, [SimNode("only", 1.0)], CostPolicy(aging=0))
    assert schedule(report) == [
        (2, "only", 0.0, 1.0),
        (1, "only", 1.0, 4.0),
        (0, "only", 4.0, 5.0),
    ]
    assert report.deadline_misses == 1  # "due" ends at 4 > 3.5


def test_capabilities_in_the_simulator() -> None:
    tasks = [
        SimTask(0, "gpu", 0, 0.0, 2.0, 0.0, requires=frozenset({"gpu"})),
        SimTask(1, "gpu", 0, 0.0, 2.0, 0.0, requires=frozenset({"gpu"})),
        SimTask(2, "any", 0, 0.0, 1.0, 1.0),
    ]
    nodes = [SimNode("cpu", 10.0), SimNode("gpu", 1.0, frozenset({"gpu"}))]
    report = simulate(tasks, nodes, CostPolicy())
    # the fast cpu node idles until work it can run arrives
    assert schedule(report) == [
        (0, "gpu", 0.0, 2.0),
        (2, "cpu", 1.0, 1.1),
        (1, "gpu", 2.0, 4.0),
    ]
    with pytest.raises(ValueError, match="requires"):
        simulate(tasks, [SimNode("cpu", 1.0)], CostPolicy())


def test_percentile() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 3.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.0) == 1.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 1.0) == 4.0
    assert percentile([], 0.5) != percentile([], 0.5)  # NaN


# -- the mixed workload ---------------------------------------------------------
@pytest.fixture(scope="module")
def mixed() -> dict[str, Report]:
    tasks, nodes = mixed_workload()
    return {
        policy.name: simulate(tasks, nodes, policy)
        for policy in (CostPolicy(), FifoPolicy(), PriorityPolicy())
    }


def waits(report: Report, label: str) -> list[float]:
    return [o.wait for o in report.by_label()[label]]


def test_mixed_workload_runs_every_task_once_where_it_can(mixed: dict[str, Report]) -> None:
    tasks, _ = mixed_workload()
    for report in mixed.values():
        assert sorted(o.task.id for o in report.outcomes) == [t.id for t in tasks]
        assert {o.node for o in report.by_label()["gpu"]} == {"fast"}
        assert all(o.start >= o.task.arrival for o in report.outcomes)


def test_cost_policy_serves_urgent_work_far_faster_than_fifo(mixed: dict[str, Report]) -> None:
    cost = statistics.mean(waits(mixed["cost"], "urgent"))
    fifo = statistics.mean(waits(mixed["fifo"], "urgent"))
    assert cost < fifo / 3
    assert mixed["cost"].deadline_misses < mixed["fifo"].deadline_misses


def test_the_longest_wait_stays_within_the_stated_bound(mixed: dict[str, Report]) -> None:
    tasks, nodes = mixed_workload()
    assert mixed["cost"].longest_wait <= starvation_bound(tasks, nodes, CostPolicy())
    assert starvation_bound(tasks, nodes, PriorityPolicy()) == float("inf")


def test_mixed_workload_is_deterministic_per_seed() -> None:
    first, _ = mixed_workload(seed=3)
    again, _ = mixed_workload(seed=3)
    other, _ = mixed_workload(seed=4)
    assert first == again
    assert first != other
