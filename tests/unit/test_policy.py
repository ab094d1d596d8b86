"""The policies' ordering, as exact orders over hand-made candidates (G10).

A policy maps a candidate to a key; the smallest key is claimed first. The
same key orders candidates in the store's claim and in the simulator, so
these orders are the ones nodes follow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

import accord
from accord.scheduling import (
    Candidate,
    CostPolicy,
    FifoPolicy,
    Policy,
    PriorityPolicy,
    policy_named,
)
from accord.scheduling.policy import NodeSpec, fits, needs_of, req_key


def order(policy: Policy, tasks: Sequence[Candidate], now: float, speed: float = 1.0) -> list[int]:
    """Candidate ids in the order the policy claims them."""
    return [t.id for t in sorted(tasks, key=lambda t: policy.key(t, now, speed))]


def cand(
    id: int,
    priority: int = 0,
    weight: float = 0.0,
    size: float = 1.0,
    ready_at: float = 0.0,
    deadline_at: float | None = None,
) -> Candidate:
    return Candidate(id, priority, weight, size, ready_at, deadline_at)


# -- the cost policy: bands ---------------------------------------------------
def test_higher_priority_band_first_whatever_the_cost() -> None:
    tasks = [
        cand(1, priority=0, weight=0.0, size=0.0),  # the cheapest of all
        cand(2, priority=5, weight=9.0, size=90.0),  # the most expensive of all
        cand(3, priority=2, weight=1.0),
        cand(4, priority=5, weight=1.0),
        cand(5, priority=-3, weight=0.0, size=0.0),
    ]
    assert order(CostPolicy(), tasks, now=0.0) == [4, 2, 3, 1, 5]
    assert order(CostPolicy(aging=0), tasks, now=1000.0) == [4, 2, 3, 1, 5]


# -- the cost policy: C = w + d / v inside a band -----------------------------
def test_least_cost_first_inside_a_band() -> None:
    tasks = [
        cand(1, weight=3.0, size=0.0),  # C = 3
        cand(2, weight=0.5, size=1.0),  # C = 1.5
        cand(3, weight=0.0, size=2.5),  # C = 2.5
        cand(4, weight=1.0, size=1.0),  # C = 2
    ]
    assert order(CostPolicy(), tasks, now=0.0, speed=1.0) == [2, 4, 3, 1]
    policy = CostPolicy()
    assert policy.key(tasks[0], 0.0, 1.0)[3] == 3.0
    assert policy.key(tasks[1], 0.0, 2.0)[2] == 0.5 + 1.0 / 2.0


def test_node_speed_changes_the_order_when_weight_and_size_trade_off() -> None:
    """A task heavy in fixed weight against one heavy in size: a slow node
    takes the big one last, a fast node first (C = w + d / v)."""
    heavy = cand(1, weight=10.0, size=0.0)  # C = 10 at any speed
    big = cand(2, weight=0.0, size=20.0)  # C = 20 / v
    policy = CostPolicy()
    assert order(policy, [heavy, big], now=0.0, speed=1.0) == [1, 2]  # 10 < 20
    assert order(policy, [heavy, big], now=0.0, speed=4.0) == [2, 1]  # 5 < 10
    # At v = 2 the costs tie (10 = 20 / 2): the one ready first goes first.
    assert order(policy, [cand(1, weight=10.0, size=0.0, ready_at=1.0), big], 5.0, 2.0) == [2, 1]
    assert order(policy, [heavy, cand(2, weight=0.0, size=20.0, ready_at=1.0)], 5.0, 2.0) == [
        1,
        2,
    ]
    # Speed never reorders bands: the big task of a higher band stays first.
    assert order(policy, [heavy, cand(3, priority=1, size=20.0)], 0.0, 0.01) == [3, 1]


def test_equal_cost_falls_back_to_ready_time_then_id() -> None:
    tasks = [cand(7, ready_at=2.0), cand(3, ready_at=1.0), cand(5, ready_at=1.0)]
    assert order(CostPolicy(), tasks, now=3.0) == [3, 5, 7]


# -- the cost policy: aging ---------------------------------------------------
def test_aging_an_old_low_task_overtakes_a_new_higher_one_at_the_right_time() -> None:
    """Aging 0.25 levels per second: a priority-0 task reaches band 3 after
    12 s and band 4 after 16 s. A fresh priority-3 task is in band 3. In the
    same band the old task is the costlier, so it overtakes only once it is
    in a higher band: at 16 s, not before."""
    policy = CostPolicy(aging=0.25)
    old = cand(1, priority=0, weight=5.0, ready_at=0.0)

    def at(now: float) -> list[int]:
        fresh = cand(2, priority=3, weight=1.0, ready_at=now)
        return order(policy, [old, fresh], now=now)

    assert at(0.0) == [2, 1]
    assert at(11.99) == [2, 1]
    assert at(12.0) == [2, 1]  # same band (3), the fresh task costs less
    assert at(15.99) == [2, 1]
    assert at(16.0) == [1, 2]  # band 4 > band 3
    assert at(100.0) == [1, 2]
    assert policy.effective_priority(old, 16.0) == 4.0
    assert policy.effective_priority(old, -5.0) == 0.0  # no negative waiting
    # A task not yet eligible (delayed) does not age.
    assert policy.effective_priority(cand(3, priority=1, ready_at=50.0), 40.0) == 1.0


def test_aging_with_equal_cost_overtakes_on_reaching_the_same_band() -> None:
    """With equal costs the older task wins a tie of bands: after 12 s at
    0.25 levels per second, a priority-0 task passes a fresh priority-3 one."""
    policy = CostPolicy(aging=0.25)
    old = cand(1, priority=0, ready_at=0.0)
    assert order(policy, [old, cand(2, priority=3, ready_at=11.9)], now=11.9) == [2, 1]
    assert order(policy, [old, cand(2, priority=3, ready_at=12.0)], now=12.0) == [1, 2]


def test_aging_at_one_level_every_two_minutes() -> None:
    policy = CostPolicy(aging=1 / 120)
    old = cand(1, priority=0, weight=5.0, ready_at=0.0)
    fresh_at = lambda now: cand(2, priority=5, weight=0.0, ready_at=now)  # noqa: E731
    # Five levels down: overtakes after 6 levels = 720 s, not at 719 s.
    assert order(policy, [old, fresh_at(719.0)], now=719.0) == [2, 1]
    assert order(policy, [old, fresh_at(720.5)], now=720.5) == [1, 2]


def test_by_default_no_aging_but_a_hard_starvation_bound() -> None:
    """Without aging a low task never overtakes by priority; once it has
    waited ``starve_after`` seconds (default 20 minutes) it is overdue and
    goes before every task that is not."""
    policy = CostPolicy()
    assert policy.aging == 0.0 and policy.starve_after == 1200.0
    old = cand(1, priority=0, ready_at=0.0)
    assert order(policy, [old, cand(2, priority=9, ready_at=1199.0)], now=1199.9) == [2, 1]
    assert order(policy, [old, cand(2, priority=9, ready_at=1199.0)], now=1200.0) == [1, 2]
    # Overdue tasks among themselves: the oldest first, whatever the priority.
    older = cand(3, priority=0, ready_at=-5.0)
    top = cand(4, priority=9, ready_at=-1.0)
    assert order(policy, [top, old, older], now=1300.0) == [3, 4, 1]


def test_without_aging_or_bound_a_low_task_never_overtakes() -> None:
    old = cand(1, priority=0, ready_at=0.0)
    fresh = cand(2, priority=1, ready_at=10**6)
    assert order(CostPolicy(aging=0, starve_after=1e9), [old, fresh], now=10**6) == [2, 1]
    assert order(PriorityPolicy(), [old, fresh], now=10**6) == [2, 1]


# -- the cost policy: deadlines -----------------------------------------------
def test_earlier_deadline_first_inside_a_band_and_no_deadline_last() -> None:
    tasks = [
        cand(1, weight=0.0, size=0.0),  # cheapest, no deadline
        cand(2, weight=9.0, deadline_at=100.0),
        cand(3, weight=5.0, deadline_at=50.0),
        cand(4, weight=1.0),  # no deadline
        cand(5, weight=0.0, deadline_at=100.0),  # same deadline as 2, cheaper
    ]
    # Every deadline at risk (a slack larger than any of them): EDF first.
    assert order(CostPolicy(deadline_slack=1000), tasks, now=0.0) == [3, 5, 2, 1, 4]
    # The default slack (60 s): only task 3 (50 - 5 < 60) is at risk; the
    # others go by cost.
    assert order(CostPolicy(), tasks, now=0.0) == [3, 1, 5, 4, 2]


def test_a_deadline_does_not_cross_priority_bands() -> None:
    tasks = [
        cand(1, priority=0, deadline_at=1.0),
        cand(2, priority=1),
        cand(3, priority=1, deadline_at=500.0),
    ]
    assert order(CostPolicy(deadline_slack=1000), tasks, now=0.0) == [3, 2, 1]


def test_a_missed_deadline_still_ranks_first_in_its_band() -> None:
    tasks = [cand(1, weight=0.0), cand(2, weight=3.0, deadline_at=5.0)]
    assert order(CostPolicy(), tasks, now=60.0) == [2, 1]


# -- FIFO and pure priority ---------------------------------------------------
MIXED = [
    cand(1, priority=0, weight=9.0, ready_at=1.0),
    cand(2, priority=5, weight=0.0, ready_at=4.0, deadline_at=4.5),
    cand(3, priority=2, weight=0.0, size=50.0, ready_at=2.0),
    cand(4, priority=5, weight=3.0, ready_at=3.0),
    cand(5, priority=0, weight=0.0, ready_at=0.5),
    cand(6, priority=2, weight=0.0, ready_at=2.0),
]


def test_fifo_ignores_priority_cost_and_deadlines() -> None:
    assert order(FifoPolicy(), MIXED, now=10.0) == [5, 1, 3, 6, 4, 2]
    assert order(FifoPolicy(), MIXED, now=10.0, speed=100.0) == [5, 1, 3, 6, 4, 2]


def test_pure_priority_is_first_come_first_served_inside_a_priority() -> None:
    assert order(PriorityPolicy(), MIXED, now=10.0) == [4, 2, 3, 6, 5, 1]
    assert order(PriorityPolicy(), MIXED, now=10.0**6, speed=0.01) == [4, 2, 3, 6, 5, 1]


def test_cost_policy_on_the_same_mix() -> None:
    # bands 5, 2, 0; deadline first in band 5; cost in bands 2 and 0
    assert order(CostPolicy(), MIXED, now=10.0) == [2, 4, 6, 3, 5, 1]
    # a fast node makes the big task of band 2 cheap: 50 / 100 = 0.5 > 0 still
    assert order(CostPolicy(), MIXED, now=10.0, speed=100.0) == [2, 4, 6, 3, 5, 1]


def test_policies_by_name() -> None:
    assert isinstance(policy_named("cost"), CostPolicy)
    assert isinstance(policy_named("priority"), PriorityPolicy)
    assert isinstance(policy_named("fifo"), FifoPolicy)
    with pytest.raises(accord.ConfigError, match="unknown scheduling policy 'lifo'"):
        policy_named("lifo")
    for name in ("cost", "priority", "fifo"):
        policy = policy_named(name)
        assert isinstance(policy, Policy)
        assert policy.name == name


# -- matching helpers ---------------------------------------------------------
def test_requirement_keys_capabilities_and_resources() -> None:
    assert req_key(["gpu", "avx", "gpu"]) == "avx,gpu"
    assert req_key(None) == "" and req_key([]) == ""
    node = NodeSpec(frozenset({"gpu", "avx"}), {"cpu": 2.0, "gpu": 1.0})
    assert node.can_meet("") and node.can_meet("gpu") and node.can_meet("avx,gpu")
    assert not node.can_meet("tpu") and not node.can_meet("gpu,tpu")
    assert not NodeSpec().can_meet("gpu")
    assert needs_of(None) == {"cpu": 1.0}
    assert needs_of({"gpu": 1}) == {"cpu": 1.0, "gpu": 1}
    assert needs_of({"cpu": 0.5, "memory": 512}) == {"cpu": 0.5, "memory": 512}
    assert fits({"cpu": 1.0, "gpu": 1.0}, {"cpu": 2.0, "gpu": 1.0})
    assert not fits({"cpu": 1.0, "gpu": 1.0}, {"cpu": 2.0})
    assert not fits({"memory": 1024.0}, {"memory": 1023.0})
    assert node.can_hold({"cpu": 2.0, "gpu": 1.0}) and not node.can_hold({"cpu": 3.0})


def test_a_key_with_nan_or_inf_parts_is_still_a_total_order() -> None:
    """No deadline is +inf: such keys still compare (never NaN)."""
    key = PriorityPolicy().key(cand(1, ready_at=math.inf), 0.0, 1.0)
    assert key[1] == math.inf
    key = CostPolicy().key(cand(1, size=math.inf), 0.0, 1.0)
    assert key[3] == math.inf
    assert all(not math.isnan(part) for part in key)
