"""The store's claim: policy order, matching, delays and limits (G10, Q12).

These tests drive ``store.exchange`` for registered nodes directly, so every
claim is one transaction whose outcome the test sees exactly. The candidates
of a claim are the oldest eligible tasks of each (requirement class,
priority) level; the policy orders them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence

import pytest

import accord
from accord import TaskState, serde
from accord.scheduling import CostPolicy, FifoPolicy, NodeSpec, Policy, PriorityPolicy
from accord.store.base import Store
from accord.store.records import ClaimedTask, Completion, Outcome
from apps import sched as s
from support.common import bind

QUEUE = "sched"


@pytest.fixture
def app(store_url: str) -> Iterator[accord.App]:
    yield bind(s.app, store_url)
    s.app.close()


def register(
    store: Store,
    name: str = "n",
    capabilities: Iterable[str] = (),
    slots: int = 64,
) -> int:
    return store.register_node(
        name=name,
        host="test",
        pid=1,
        queue=QUEUE,
        slots=slots,
        mode="thread",
        capabilities=sorted(capabilities),
    )


def claim(
    store: Store,
    node_id: int,
    n: int,
    *,
    capabilities: Iterable[str] = (),
    speed: float = 1.0,
    free: dict[str, float] | None = None,
    policy: Policy | None = None,
    done: Sequence[Completion] = (),
    capacity: dict[str, float] | None = None,
) -> list[ClaimedTask]:
    capacity = capacity or {"cpu": 64.0, "gpu": 64.0, "memory": 2.0**20}
    node = NodeSpec(frozenset(capabilities), capacity, speed)
    _, claimed = store.exchange(
        node_id,
        list(done),
        queue=QUEUE,
        claim=n,
        lease_ttl=60.0,
        node=node,
        free=free,
        policy=policy,
    )
    return claimed


def ok(task: ClaimedTask) -> Completion:
    return Completion(task.id, task.fence, Outcome.OK, result=serde.dumps(None))


def running(store: Store, run_ids: Iterable[int]) -> int:
    return sum(store.run(r).counts.get("running", 0) for r in set(run_ids))


# -- policy order ---------------------------------------------------------------
# key: (priority, weight, size, requires, deadline in seconds or None)
MIX: dict[str, tuple[int, float, float, tuple[str, ...], float | None]] = {
    "a": (0, 0.0, 1.0, (), None),
    "b": (2, 3.0, 0.0, ("gpu",), None),  # C = 3
    "c": (2, 0.0, 1.0, (), None),  # C = 1 / v
    "d": (1, 0.0, 0.0, ("big", "gpu"), None),  # C = 0
    "e": (2, 0.0, 8.0, ("big",), None),  # C = 8 / v
    "f": (1, 1.0, 1.0, (), None),  # C = 1 + 1 / v
    "g": (0, 0.0, 0.0, ("gpu",), None),  # C = 0
    "h": (2, 0.0, 2.0, (), 30.0),  # the only deadline, at risk: first of band 2
}


def submit_mix(ids: dict[str, int]) -> list[int]:
    runs = []
    for key, (priority, weight, size, requires, deadline) in MIX.items():
        handle = s.nap.with_options(
            priority=priority, weight=weight, size=size, requires=requires, deadline=deadline
        ).submit(key)
        ids[key] = handle.id
        runs.append(handle.info().run_id)
    return runs


@pytest.mark.parametrize(
    ("capabilities", "speed", "expected"),
    [
        (("gpu", "big"), 1.0, "hcbedfga"),
        (("gpu", "big"), 4.0, "hcebdfga"),  # e costs 8/4 = 2 < 3 at v = 4
        ((), 1.0, "hcfa"),
        (("gpu",), 1.0, "hcbfga"),
    ],
)
@pytest.mark.parametrize("batch", [True, False], ids=["one-claim", "one-by-one"])
def test_claims_come_in_policy_order_across_levels_and_classes(
    app: accord.App, capabilities: tuple[str, ...], speed: float, expected: str, batch: bool
) -> None:
    ids: dict[str, int] = {}
    submit_mix(ids)
    name_of = {v: k for k, v in ids.items()}
    node_id = register(app.store, capabilities=capabilities)
    got: list[ClaimedTask] = []
    if batch:
        got = claim(app.store, node_id, 20, capabilities=capabilities, speed=speed)
    else:
        while more := claim(app.store, node_id, 1, capabilities=capabilities, speed=speed):
            assert len(more) == 1
            got += more
    assert "".join(name_of[t.id] for t in got) == expected
    assert claim(app.store, node_id, 20, capabilities=capabilities, speed=speed) == []
    assert [t.priority for t in got] == sorted((t.priority for t in got), reverse=True)


def test_other_policies_in_the_claim(app: accord.App) -> None:
    ids: dict[str, int] = {}
    submit_mix(ids)  # submitted in the order a..h
    name_of = {v: k for k, v in ids.items()}
    caps = ("gpu", "big")
    node_id = register(app.store, capabilities=caps)
    fifo = claim(app.store, node_id, 3, capabilities=caps, policy=FifoPolicy())
    assert "".join(name_of[t.id] for t in fifo) == "abc"
    prio = claim(app.store, node_id, 20, capabilities=caps, policy=PriorityPolicy())
    # priority first, then submission order (b, e, h of band 2 minus c already taken)
    assert "".join(name_of[t.id] for t in prio) == "ehdfg"


def test_node_speed_decides_between_weight_and_size_in_the_claim(app: accord.App) -> None:
    heavy = s.nap.with_options(weight=10.0, size=0.0).submit("heavy")  # C = 10
    big = s.nap.with_options(weight=0.0, size=20.0).submit("big")  # C = 20 / v
    slow = register(app.store, "slow")
    fast = register(app.store, "fast")
    assert [t.id for t in claim(app.store, slow, 1, speed=1.0)] == [heavy.id]
    app.store.release(slow, [(heavy.id, heavy.info().fence)])
    assert [t.id for t in claim(app.store, fast, 1, speed=4.0)] == [big.id]
    assert [t.id for t in claim(app.store, slow, 1, speed=1.0)] == [heavy.id]


def test_earlier_deadline_first_in_a_band_and_fifo_inside_a_priority(app: accord.App) -> None:
    plain = [s.nap.submit(f"p{i}").id for i in range(3)]
    late = s.nap.with_options(deadline=50.0).submit("late").id
    soon = s.nap.with_options(deadline=20.0).submit("soon").id
    higher = s.nap.with_options(priority=1).submit("higher").id
    node_id = register(app.store)
    got = [t.id for t in claim(app.store, node_id, 10)]
    assert got == [higher, soon, late, *plain]


def test_aging_in_the_claim(app: accord.App) -> None:
    """With aging fast enough, a priority-0 task ready for a while goes before
    a fresh priority-1 one; without aging it does not."""
    old = s.nap.submit("old").id
    time.sleep(0.3)
    fresh = s.nap.with_options(priority=1).submit("fresh").id
    node_id = register(app.store)
    assert [t.id for t in claim(app.store, node_id, 1, policy=CostPolicy(aging=0))] == [fresh]
    app.store.release(node_id, [(fresh, 1)])
    # 10 levels per second: after >= 0.3 s the old task is 3 bands up
    assert [t.id for t in claim(app.store, node_id, 2, policy=CostPolicy(aging=10))] == [
        old,
        fresh,
    ]


# -- capabilities and resources -------------------------------------------------
def test_a_node_without_the_capability_never_gets_the_task(app: accord.App) -> None:
    gpu = [s.on_gpu.with_options(priority=9).submit(i).id for i in range(3)]
    plain = [s.nap.submit(i).id for i in range(2)]
    cpu_node = register(app.store, "cpu")
    gpu_node = register(app.store, "gpu", capabilities=["gpu"])
    assert [t.id for t in claim(app.store, cpu_node, 10)] == plain
    assert claim(app.store, cpu_node, 10) == []
    for task_id in gpu:
        info = app.store.task(task_id)
        assert info.state is TaskState.READY and info.node_id is None
        assert info.requires == ["gpu"]
    got = claim(app.store, gpu_node, 10, capabilities=["gpu"])
    assert [t.id for t in got] == gpu
    assert {app.store.task(i).node_id for i in gpu} == {gpu_node}


def test_a_node_claims_only_what_its_free_resources_hold(app: accord.App) -> None:
    gpu = [s.nap.with_options(priority=5, resources={"gpu": 1}).submit(i).id for i in range(3)]
    mem = s.nap.with_options(priority=3, resources={"memory": 4096}).submit("mem").id
    plain = s.nap.submit("plain").id
    node_id = register(app.store)
    got = claim(app.store, node_id, 10, free={"cpu": 8, "gpu": 0, "memory": 1024})
    assert [t.id for t in got] == [plain]
    assert got[0].needs == {"cpu": 1.0}
    got = claim(app.store, node_id, 10, free={"cpu": 8, "gpu": 1, "memory": 8192})
    assert [t.id for t in got] == [gpu[0], mem]
    assert got[0].needs == {"cpu": 1.0, "gpu": 1}
    assert got[1].needs == {"cpu": 1.0, "memory": 4096}
    # each gpu task also needs one cpu: one cpu free holds one of them
    got = claim(app.store, node_id, 10, free={"cpu": 1, "gpu": 2})
    assert [t.id for t in got] == [gpu[1]]
    assert claim(app.store, node_id, 10, free={"cpu": 0, "gpu": 5}) == []
    assert app.store.task(gpu[2]).state is TaskState.READY


def test_a_task_larger_than_the_node_is_never_claimed_even_with_prefetch(
    app: accord.App,
) -> None:
    """A node claims with its free capacity scaled up for prefetch (short
    tasks queue locally); a task needing more than the node has at all must
    still stay ready (and show as unschedulable), never be held forever."""
    big = s.nap.with_options(resources={"gpu": 2}).submit("big").id
    small = s.nap.with_options(resources={"gpu": 1}).submit("small").id
    node_id = register(app.store)
    capacity = {"cpu": 2.0, "gpu": 1.0}
    scaled = {"cpu": 8.0, "gpu": 4.0}
    got = claim(app.store, node_id, 10, free=scaled, capacity=capacity)
    assert [t.id for t in got] == [small]
    assert app.store.task(big).state is TaskState.READY
    bigger = NodeSpec(frozenset(), {"cpu": 2.0, "gpu": 2.0})
    _, got = app.store.exchange(
        node_id, [], queue=QUEUE, claim=10, lease_ttl=60.0, node=bigger, free={"cpu": 2, "gpu": 2}
    )
    assert [t.id for t in got] == [big]


def test_default_need_is_one_cpu(app: accord.App) -> None:
    ids = [h.id for h in s.nap.map(range(5))]
    node_id = register(app.store)
    assert [t.id for t in claim(app.store, node_id, 10, free={"cpu": 2})] == ids[:2]
    assert [t.id for t in claim(app.store, node_id, 10, free={"cpu": 0.5})] == []
    half = s.nap.with_options(resources={"cpu": 0.5}).submit("half").id
    assert [t.id for t in claim(app.store, node_id, 10, free={"cpu": 0.5})] == [half]


# -- delayed tasks and retries (Q12 / G10) ----------------------------------------
def test_a_delayed_task_is_never_claimed_before_its_time_nor_held_meanwhile(
    app: accord.App,
) -> None:
    delayed = s.nap.with_options(priority=9, delay=1.0).submit("later")
    info = delayed.info()
    assert info.state is TaskState.READY
    assert info.ready_at == pytest.approx(info.created_at + 1.0)
    now_ready = [s.nap.submit(i).id for i in range(2)]
    node_id = register(app.store)
    # the eligible low-priority work goes meanwhile: the delayed task blocks nothing
    assert [t.id for t in claim(app.store, node_id, 10)] == now_ready
    polls = 0
    deadline = time.time() + 15
    while True:
        before = time.time()
        got = claim(app.store, node_id, 10)
        if got:
            break
        polls += 1
        row = delayed.info()
        assert row.state is TaskState.READY
        assert row.node_id is None and row.started_at is None and row.attempts == 0
        assert before < info.ready_at + 0.5, "not claimed although eligible"
        assert time.time() < deadline
        time.sleep(0.05)
    assert [t.id for t in got] == [delayed.id]
    assert polls >= 1
    started = delayed.info().started_at
    assert started is not None and started >= info.ready_at


def test_a_retry_waits_out_its_backoff_in_the_ready_state(app: accord.App) -> None:
    handle = s.nap.with_options(retries=2).submit("flaky")
    node_id = register(app.store)
    (first,) = claim(app.store, node_id, 1)
    failed = Completion(
        first.id, first.fence, Outcome.ERROR, error="boom", error_type="X", retry_delay=0.8
    )
    before = time.time()
    assert claim(app.store, node_id, 1, done=[failed]) == []
    row = handle.info()
    assert row.state is TaskState.READY and row.node_id is None
    assert row.ready_at >= before + 0.8
    polls = 0
    deadline = time.time() + 15
    while not (again := claim(app.store, node_id, 1)):
        polls += 1
        info = handle.info()
        assert info.state is TaskState.READY and info.node_id is None
        assert time.time() < deadline
        time.sleep(0.05)
    assert polls >= 1
    assert [t.id for t in again] == [handle.id]
    assert again[0].attempt == 2 and again[0].fence == first.fence + 1
    assert handle.info().started_at is not None
    assert handle.info().started_at >= row.ready_at  # type: ignore[operator]


def test_best_ready_priority_ignores_tasks_not_yet_eligible(app: accord.App) -> None:
    """A node probes for more urgent work than its local queue; a delayed
    task cannot be claimed yet, so it must not count as urgent."""
    s.nap.with_options(priority=9, delay=60).submit("later")
    assert app.store.best_ready_priority(QUEUE) is None
    s.nap.with_options(priority=2).submit("now")
    s.on_gpu.with_options(priority=4).submit("gpu")
    assert app.store.best_ready_priority(QUEUE) == 4


def test_a_deadline_missed_before_the_start_is_recorded_at_the_claim(app: accord.App) -> None:
    late = s.nap.with_options(deadline=0.2).submit("late")
    on_time = s.nap.with_options(deadline=600.0).submit("on time")
    time.sleep(0.4)
    node_id = register(app.store)
    got = claim(app.store, node_id, 2)
    assert [t.id for t in got] == [late.id, on_time.id]  # earlier deadline first
    missed = [e for e in app.store.events() if e.kind == "deadline_missed"]
    assert [e.task_id for e in missed] == [late.id]
    assert (missed[0].detail or "").startswith(("started ", "still ready "))
    claim(app.store, node_id, 0, done=[ok(t) for t in got])
    # finishing does not record the same miss twice
    missed = [e for e in app.store.events() if e.kind == "deadline_missed"]
    assert [e.task_id for e in missed] == [late.id]


# -- concurrency and rate limits --------------------------------------------------
def test_concurrency_limit_holds_across_two_nodes(app: accord.App) -> None:
    handles = s.nap.with_options(concurrency=3).map(range(10))
    runs = {h.info().run_id for h in handles}
    n1, n2 = register(app.store, "n1"), register(app.store, "n2")
    held: dict[int, list[ClaimedTask]] = {n1: claim(app.store, n1, 10), n2: []}
    assert len(held[n1]) == 3
    assert claim(app.store, n2, 10) == []
    assert running(app.store, runs) == 3
    # finish one on n1 and claim on n2: the freed place goes to n2, no more
    done = held[n1].pop()
    assert claim(app.store, n1, 0, done=[ok(done)]) == []
    held[n2] = claim(app.store, n2, 10)
    assert len(held[n2]) == 1
    assert claim(app.store, n1, 10) == []
    # then alternate until all are done: never more than 3 running
    finished = 1
    turn = 0
    while finished < 10:
        node_id = (n1, n2)[turn % 2]
        turn += 1
        report = [ok(t) for t in held[node_id][:1]]
        held[node_id] = held[node_id][1:] + claim(app.store, node_id, 10, done=report)
        finished += len(report)
        assert running(app.store, runs) <= 3
        assert turn < 100
    assert all(h.status() is TaskState.SUCCEEDED for h in handles)


def test_a_limit_key_is_shared_by_different_tasks(app: accord.App) -> None:
    a = s.nap.with_options(limit_key="endpoint", concurrency=2).map(range(3))
    b = s.count.with_options(limit_key="endpoint", concurrency=2).map([([1],), ([2],)])
    other = s.nap.with_options(limit_key="other", concurrency=2).map(range(3))
    node_id = register(app.store)
    got = {t.id for t in claim(app.store, node_id, 20)}
    assert len(got & {h.id for h in [*a, *b]}) == 2
    assert len(got & {h.id for h in other}) == 2
    assert len(got) == 4


def test_without_a_limit_key_each_task_type_has_its_own_limit(app: accord.App) -> None:
    naps = s.nap.with_options(concurrency=1).map(range(3))
    counts = s.count.with_options(concurrency=1).map([([1],), ([2],)])
    node_id = register(app.store)
    got = {t.id for t in claim(app.store, node_id, 20)}
    assert got == {naps[0].id, counts[0].id}


def test_rate_limit_spends_a_burst_then_refills_at_the_rate(app: accord.App) -> None:
    handles = s.nap.with_options(rate=5.0).map(range(30))
    n1, n2 = register(app.store, "n1"), register(app.store, "n2")
    t0 = time.time()
    first = claim(app.store, n1, 30)
    assert len(first) == 5  # the burst: max(1, rate) tokens
    times = [t0] * 5
    second = claim(app.store, n2, 30)  # the other node shares the bucket
    assert len(second) <= 1 + 5 * (time.time() - t0)
    times += [time.time()] * len(second)
    time.sleep(0.6)
    third = claim(app.store, n2, 30)
    elapsed = time.time() - t0
    assert 1 <= len(third) <= 5
    times += [time.time()] * len(third)
    # never more than the burst plus rate * elapsed
    assert len(first) + len(second) + len(third) <= 5 + 5 * elapsed + 1e-6
    time.sleep(1.5)  # the bucket holds at most the burst, however long it waited
    assert len(claim(app.store, n1, 30)) == 5
    assert all(h.status() in (TaskState.READY, TaskState.RUNNING) for h in handles)


def test_a_rate_below_one_per_second_still_allows_one_start(app: accord.App) -> None:
    s.nap.with_options(rate=0.5).map(range(3))
    node_id = register(app.store)
    assert len(claim(app.store, node_id, 3)) == 1
    assert claim(app.store, node_id, 3) == []


def test_concurrency_and_rate_together(app: accord.App) -> None:
    handles = s.nap.with_options(concurrency=2, rate=100.0).map(range(5))
    node_id = register(app.store)
    got = claim(app.store, node_id, 10)
    assert len(got) == 2
    got = got[1:] + claim(app.store, node_id, 10, done=[ok(got[0])])
    assert len(got) == 2
    assert sum(h.status() is TaskState.RUNNING for h in handles) == 2


# -- a long queue ---------------------------------------------------------------
def test_first_claims_of_a_20000_task_queue_are_the_highest_priority_oldest_first(
    app: accord.App,
) -> None:
    """19,980 tasks of priorities 0 and 1 interleaved in chunks, then 20 of
    priority 2 submitted last: the first 20 claims are those, in submission
    order, then the oldest of priority 1."""
    low: list[int] = []
    mid: list[int] = []
    for chunk in range(18):
        priority = chunk % 2
        handles = s.nap.with_options(priority=priority).map(range(1110))
        (mid if priority else low).extend(h.id for h in handles)
    high = [h.id for h in s.nap.with_options(priority=2).map(range(20))]
    assert len(low) + len(mid) + len(high) == 20_000
    node_id = register(app.store)
    t0 = time.monotonic()
    got = [t.id for t in claim(app.store, node_id, 25)]
    took = time.monotonic() - t0
    assert got == high + mid[:5]
    one = [t.id for t in claim(app.store, node_id, 1)]
    assert one == [mid[5]]
    # bounded work per claim: far below a scan of the queue, even on a busy machine
    assert took < 5.0
    assert app.store.best_ready_priority(QUEUE) == 1


# -- deadlines are seen wherever the task sits, and misses are recorded -----------
def test_a_deadline_task_behind_a_long_level_goes_first(app: accord.App) -> None:
    s.nap.map(range(40))
    urgent = s.nap.with_options(deadline=30.0).submit("urgent").id
    node_id = register(app.store)
    assert [t.id for t in claim(app.store, node_id, 1)] == [urgent]


def test_a_deadline_missed_while_waiting_is_recorded(app: accord.App) -> None:
    stuck = s.nap.with_options(requires=["tpu"], deadline=0.2).submit("stuck")
    s.nap.submit("other")
    time.sleep(0.4)
    node_id = register(app.store)
    claim(app.store, node_id, 5)
    assert stuck.info().state is TaskState.READY
    missed = [e.task_id for e in app.store.events() if e.kind == "deadline_missed"]
    assert missed == [stuck.id]


# -- the candidates: the cheapest of a level, not only its oldest -----------------
def test_a_cheap_task_behind_a_long_run_of_dear_ones_is_claimed_first(app: accord.App) -> None:
    """100 tasks of weight 10, then one of weight 0, all of one priority: the
    cost rule takes the weight-0 task first although 100 older ones sit ahead
    of it in its level (more than a claim reads by age)."""
    s.nap.with_options(weight=10.0).map([(i,) for i in range(100)])
    cheap = s.nap.with_options(weight=0.0).submit("cheap").id
    node_id = register(app.store)
    assert [t.id for t in claim(app.store, node_id, 1)] == [cheap]


def test_the_claim_takes_what_the_simulator_would(app: accord.App) -> None:
    """The store's claims and the simulator's choices agree, one task at a
    time, on a queue of several levels longer than the candidate bound: both
    rank accord.scheduling.policy.bounded_candidates of the same tasks."""
    import random

    from accord.scheduling import Candidate
    from accord.scheduling.policy import bounded_candidates

    rng = random.Random(5)
    for priority in (0, 0, 1):
        s.nap.with_options(priority=priority).map([(i,) for i in range(5)])
        for _ in range(40):
            s.nap.with_options(
                priority=priority,
                weight=round(rng.uniform(0, 10), 3),
                size=round(rng.uniform(0, 10), 3),
            ).submit("x")
    infos = {}
    for run in app.store.runs(limit=1000):
        for info in app.store.tasks(run.id):
            infos[info.id] = info
    weights = {}
    for info in infos.values():
        row = app.store._read("SELECT weight, size FROM tasks WHERE id = ?", (info.id,))[0]  # type: ignore[attr-defined]
        weights[info.id] = (float(row[0]), float(row[1]))
    policy = CostPolicy()
    node_id = register(app.store)
    ready = {
        i: (Candidate(i, info.priority, *weights[i], info.ready_at, None), "")
        for i, info in infos.items()
    }
    for _ in range(30):
        got = claim(app.store, node_id, 1, speed=1.0)
        now = app.store.now()
        bounded = bounded_candidates(ready.values(), 17)
        expected = min(bounded, key=lambda r: policy.key(r[0], now, 1.0))[0].id
        assert [t.id for t in got] == [expected]
        del ready[expected]
