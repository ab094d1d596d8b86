"""Scheduling with real nodes: capabilities, resources, unschedulable tasks,
limits, measured speed, deadlines, and Q12 (priorities and delayed tasks
while a node is SIGKILLed and restarted).

Most nodes here are embedded (``app.node(mode="thread").start()``), each its
own node id claiming through the store; Q12 runs ``python -m accord worker``
processes. Times compare only with generous slack.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

import accord
from accord import TaskState
from accord.scheduling import FifoPolicy
from accord.store.records import TaskInfo
from apps import sched as s
from support.common import TESTS, bind, subprocess_env

QUEUE = "sched"


@pytest.fixture
def app(store_url: str) -> Iterator[accord.App]:
    yield bind(s.app, store_url)
    s.app.close()


@contextmanager
def serving(*nodes: accord.Node) -> Iterator[None]:
    """Start the nodes; stop and join them after, also on failure."""
    started: list[accord.Node] = []
    try:
        for node in nodes:
            node.start()
            started.append(node)
        yield
    finally:
        for node in started:
            node.stop()
        for node in started:
            node.join(30)


def cli(store_url: str, *args: str) -> str:
    """Run an ``accord`` command; its stdout, with a wide table layout."""
    proc = subprocess.run(
        [sys.executable, "-m", "accord", *args],
        env={**subprocess_env(store_url), "COLUMNS": "300"},
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- capabilities and resources -------------------------------------------------
def test_tasks_requiring_a_capability_run_only_on_the_capable_node(
    app: accord.App, tmp_path: Path
) -> None:
    plain = app.node(mode="thread", slots=2, name="plain")
    gpu = app.node(mode="thread", slots=3, name="gpu", capabilities=["gpu"], resources={"gpu": 1})
    folder = str(tmp_path)
    on_gpu = [s.on_gpu.submit(i, 0.02) for i in range(6)]
    # each needs the node's one gpu: never two at once, although it has 3 slots
    exclusive = [
        s.on_gpu.with_options(resources={"gpu": 1}).submit(f"x{i}", 0.1, folder) for i in range(4)
    ]
    anywhere = [s.nap.submit(i, 0.02) for i in range(6)]
    with serving(plain, gpu):
        for h in [*on_gpu, *exclusive, *anywhere]:
            h.result(timeout=60)
    assert gpu.node_id is not None and plain.node_id is not None
    for h in [*on_gpu, *exclusive]:
        info = h.info()
        assert info.node_id == gpu.node_id and info.node_name == "gpu"
        assert h.result(timeout=1)["node_id"] == gpu.node_id
    assert {h.info().state for h in anywhere} == {TaskState.SUCCEEDED}
    assert s.max_overlap(s.intervals(folder)) == 1
    assert len(s.intervals(folder)) == 4


def test_a_task_no_live_node_can_run_is_shown_unschedulable(
    app: accord.App, store_url: str
) -> None:
    fine = s.nap.submit("fine")
    out = cli(store_url, "status")
    assert "unschedulable" in out
    assert "no live node serves app 'sched'" in out

    tpu = s.nap.with_options(requires=["tpu"]).submit("tpu")
    big = s.nap.with_options(resources={"gpu": 2}).submit("big")
    node = app.node(mode="thread", slots=2, name="small", resources={"gpu": 1})
    with serving(node):
        assert fine.result(timeout=30)["key"] == "fine"
        time.sleep(1.2)  # the node looked again (idle interval 0.5 s) and left them
        for h in (tpu, big):
            info = h.info()
            assert info.state is TaskState.READY
            assert info.attempts == 0 and info.node_id is None
        out = cli(store_url, "status")
        assert "unschedulable" in out
        assert "requires tpu; no live node has it (live nodes offer: none)" in out
        assert "needs gpu=2; the largest capable live node has gpu=1" in out
        out = cli(store_url, "tasks", str(tpu.info().run_id))
        assert "unschedulable: requires tpu; no live node has it" in out
        out = cli(store_url, "tasks", str(big.info().run_id))
        assert "unschedulable: needs gpu=2; the largest capable live node has gpu=1" in out
        out = cli(store_url, "tasks", str(fine.info().run_id))
        assert "unschedulable" not in out and "succeeded" in out

        # a node that can run them arrives: they run there, nothing is left over
        able = app.node(
            mode="thread", slots=2, name="able", capabilities=["tpu"], resources={"gpu": 2}
        )
        with serving(able):
            assert tpu.result(timeout=30)["key"] == "tpu"
            assert big.result(timeout=30)["key"] == "big"
            out = cli(store_url, "status")
        assert tpu.info().node_name == "able" and big.info().node_name == "able"
    assert "every ready task can run on a live node" in out
    assert "unschedulable" not in out


# -- limits -------------------------------------------------------------------
def test_concurrency_limit_across_two_nodes(app: accord.App, tmp_path: Path) -> None:
    folder = str(tmp_path)
    limited = s.nap.with_options(concurrency=2)
    handles = limited.map([(i, 0.25, folder) for i in range(10)])
    nodes = [app.node(mode="thread", slots=3, name=f"n{i}") for i in range(2)]
    with serving(*nodes):
        for h in handles:
            h.result(timeout=60)
    spans = s.intervals(folder)
    assert len(spans) == 10
    assert s.max_overlap(spans) == 2  # the limit, and used: 6 slots, only 2 at once
    # the store's own view agrees: claims and finishes never had 3 open at once
    infos = [h.info() for h in handles]
    store_spans = [(i.started_at or 0.0, i.finished_at or 0.0) for i in infos]
    assert s.max_overlap(store_spans) <= 2


def test_rate_limit_spreads_starts(app: accord.App) -> None:
    """rate=5: a burst of 5, then 5 per second, whatever the free slots.
    Any window of one second holds at most burst + rate = 10 claims."""
    handles = s.nap.with_options(rate=5.0).map(range(16))
    nodes = [app.node(mode="thread", slots=4, name=f"n{i}") for i in range(2)]
    with serving(*nodes):
        for h in handles:
            h.result(timeout=60)
    starts = sorted(h.info().started_at or 0.0 for h in handles)
    assert all(starts)
    in_a_second = max(sum(1 for t in starts if a <= t <= a + 1.0) for a in starts)
    assert in_a_second <= 10
    # 16 starts with a burst of 5 need at least (16 - 5) / 5 = 2.2 s
    assert starts[-1] - starts[0] >= 2.2 - 0.05


# -- measured speed -----------------------------------------------------------
def test_node_speed_is_measured_and_shown(app: accord.App, store_url: str) -> None:
    """The configured speed only seeds the estimate: tasks of size 10 taking
    about 0.1 s move it towards 100 (size per second)."""
    node = app.node(mode="thread", slots=1, name="measured", speed=1.0, lease_ttl=1.5)
    with serving(node):
        assert node.node_id is not None
        (info,) = [n for n in app.store.nodes() if n.id == node.node_id]
        assert info.speed == 1.0
        handles = s.nap.with_options(size=10.0).map([(i, 0.1) for i in range(5)])
        for h in handles:
            h.result(timeout=30)

        def reported() -> float:
            return next(n.speed for n in app.store.nodes() if n.id == node.node_id)

        # the heartbeat (every 0.5 s) carries the estimate to the store
        wait_for(lambda: reported() == node.spec.speed, 10, "the speed in the store")
        speed = reported()
        assert 5.0 < speed < 101.0
        out = cli(store_url, "nodes")
    row = next(line for line in out.splitlines() if "measured" in line)
    assert f"{speed:.3g}" in row.split()


# -- deadlines -----------------------------------------------------------------
def test_a_missed_deadline_is_recorded_as_an_event(app: accord.App) -> None:
    late = s.nap.with_options(deadline=0.3).submit("late", 0.8)
    on_time = s.nap.with_options(deadline=60.0).submit("on time", 0.01)
    with serving(app.node(mode="thread", slots=2)):
        late.result(timeout=30)
        on_time.result(timeout=30)
    missed = [e for e in app.store.events(limit=1000) if e.kind == "deadline_missed"]
    assert [e.task_id for e in missed] == [late.id]
    assert missed[0].run_id == late.info().run_id
    # "finished 0.5s after its deadline", or "started ..." on a machine so busy
    # that the node claimed it late: recorded once either way
    detail = missed[0].detail or ""
    assert detail.startswith(("finished ", "started ", "still ")) and "after its deadline" in detail
    info = late.info()
    assert info.deadline_at is not None and info.finished_at is not None
    assert info.finished_at > info.deadline_at


# -- Q12: priorities and delayed tasks under a node kill --------------------------
def priority_violations(tasks: Sequence[TaskInfo], slack: float) -> list[tuple[int, int, float]]:
    """Claims of a task while a task of higher priority had been eligible for
    more than ``slack`` seconds and was still waiting.

    Works on the store's claim times (``started_at``, the last attempt's), so
    tasks a node prefetched count at their claim, not at their start. A task
    claimed more than once (its lease expired when its node died) was also
    eligible again later, at a time the row does not show: it is not used as
    the waiting one. Returns ``(claimed, waiting, how long it had waited)``.
    """
    found = []
    for x in tasks:
        if x.started_at is None:
            continue
        for y in tasks:
            if y.priority <= x.priority or y.attempts != 1 or y.started_at is None:
                continue
            waited = x.started_at - y.ready_at
            if waited > slack and y.started_at > x.started_at:
                found.append((x.id, y.id, waited))
    return found


def _info(
    id: int, priority: int, ready_at: float, started_at: float, attempts: int = 1
) -> TaskInfo:
    return TaskInfo(
        id=id, run_id=1, parent_id=None, name="t", queue=QUEUE, state=TaskState.SUCCEEDED,
        priority=priority, attempts=attempts, max_attempts=5, fence=attempts, node_id=1,
        node_name="n", created_at=0.0, started_at=started_at, finished_at=started_at + 1,
        ready_at=ready_at, deadline_at=None, requires=[], resources=None, error=None,
        error_type=None, traceback=None, forward_to=None,
    )  # fmt: skip


def test_the_priority_checker_bites() -> None:
    """A negative control: histories the checker must flag, and must pass."""
    ok = [_info(1, 2, 0.0, 1.0), _info(2, 0, 0.0, 1.5), _info(3, 1, 1.2, 1.3)]
    assert priority_violations(ok, slack=0.1) == []
    # task 2 (priority 0) claimed at 1.5 while task 3 (priority 1) waited since 1.2
    bad = [_info(1, 2, 0.0, 1.0), _info(2, 0, 0.0, 1.5), _info(3, 1, 1.2, 2.0)]
    assert priority_violations(bad, slack=0.1) == [(2, 3, pytest.approx(0.3))]
    assert priority_violations(bad, slack=0.5) == []  # within the slack
    # a waiting task that was claimed twice is not trusted as the waiting one
    twice = [_info(2, 0, 0.0, 1.5), dataclasses.replace(_info(3, 1, 1.2, 2.0), attempts=2)]
    assert priority_violations(twice, slack=0.1) == []


def test_the_priority_checker_flags_fifo_on_real_nodes(
    app: accord.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A negative control on real nodes: under FIFO the priority-1 tasks
    wait behind older priority-0 ones, and the checker says so."""
    monkeypatch.setattr(app, "policy", FifoPolicy())
    handles = s.nap.with_options(priority=0).map([(i, 0.08) for i in range(30)])
    handles += s.nap.with_options(priority=1).map([(i, 0.08) for i in range(8)])
    with serving(*(app.node(mode="thread", slots=2) for _ in range(2))):
        for h in handles:
            h.result(timeout=60)
    found = priority_violations([h.info() for h in handles], slack=0.25)
    assert found
    assert {app.store.task(claimed).priority for claimed, _, _ in found} == {0}


@pytest.mark.chaos
@pytest.mark.timeout(120)
def test_q12_priorities_and_delays_hold_while_a_node_is_killed(
    app: accord.App, tmp_path: Path, store_url: str
) -> None:
    """Q12: mixed priorities and delayed tasks on two worker processes; one
    is SIGKILLed (with its slots) while it runs tasks, and restarted.

    - no task is claimed while a task of higher priority had been eligible
      (and unclaimed) for more than a small slack;
    - a delayed task is never claimed before its time, and never held
      running while it waits (sampled throughout);
    - every task completes.
    """
    from support.cluster import Cluster

    store = app.store
    slack = 0.25
    with Cluster(tmp_path, store_url, app="apps.sched:app", n=2, slots=2, lease=1.0) as cluster:
        cluster.start()
        cluster.wait_ready(store, timeout=60)
        retrying = s.nap.with_options(retries=5, backoff=0.05, max_backoff=0.1)
        handles = []
        # low work first, so that a FIFO order would break the checker
        for priority in (0, 1):
            handles += retrying.with_options(priority=priority).map(
                [(f"p{priority}-{i}", 0.1) for i in range(30)]
            )
        delayed = [
            retrying.with_options(priority=3, delay=0.5 + 0.3 * i).submit(f"d{i}", 0.1)
            for i in range(8)
        ]
        handles += delayed
        runs = {h.info().run_id for h in handles}
        held_early: list[tuple[int, float, float]] = []

        def sample() -> None:
            for run_id in runs:
                tasks = store.tasks(run_id)
                # Read the clock after the query: the task was seen running at
                # some moment before this, so a ready_at later than it is early.
                # (A time taken before the query is not a bound: a task claimed
                # on time while the query ran would look early.)
                now = time.time()
                for t in tasks:
                    if t.state is TaskState.RUNNING and t.ready_at > now:
                        held_early.append((t.id, t.ready_at, now))

        # kill worker 0 with its slots while it runs something
        victim = cluster.pid(0)

        def victim_busy() -> bool:
            sample()
            node_ids = {n.id for n in store.nodes() if n.pid == victim}
            return any(
                t.state is TaskState.RUNNING and t.node_id in node_ids
                for run_id in runs
                for t in store.tasks(run_id)
            )

        wait_for(victim_busy, 30, "worker 0 to run a task")
        cluster.kill(0, group=True)
        time.sleep(0.3)
        cluster.restart(0)
        later = retrying.with_options(priority=2).map([(f"p2-{i}", 0.1) for i in range(20)])
        handles += later
        runs.add(later[0].info().run_id)
        deadline = time.monotonic() + 90
        while not all(h.done() for h in handles):
            sample()
            assert time.monotonic() < deadline, cluster.logs()[-4000:]
            time.sleep(0.05)
        results = [h.result(timeout=5) for h in handles]

    assert [r["key"] for r in results] == [
        *(f"p0-{i}" for i in range(30)),
        *(f"p1-{i}" for i in range(30)),
        *(f"d{i}" for i in range(8)),
        *(f"p2-{i}" for i in range(20)),
    ]
    infos = [t for run_id in runs for t in store.tasks(run_id)]
    assert len(infos) == 88
    assert {t.state for t in infos} == {TaskState.SUCCEEDED}
    # the kill hit work in flight: its leases expired and were reclaimed
    expired = [e for e in store.events(limit=10_000) if e.kind == "lease_expired"]
    assert expired, "the kill hit nothing"
    assert held_early == []
    for h in delayed:
        info = h.info()
        assert info.started_at is not None and info.started_at >= info.ready_at
        assert info.started_at - info.ready_at < 10.0  # max claim delay, generous
    assert priority_violations(infos, slack) == []


def test_process_nodes_show_their_capabilities_and_resources(
    app: accord.App, store_url: str, tmp_path: Path
) -> None:
    """``accord worker --capability gpu --resource gpu=1 --speed 2`` advertises
    them; ``accord nodes`` shows them; the gpu task runs there."""
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [
                sys.executable, "-m", "accord", "worker", "--app", "apps.sched:app",
                "--slots", "1", "--mode", "thread", "--name", "gpu-box",
                "--capability", "gpu", "--resource", "gpu=1", "--speed", "2",
            ],
            env=subprocess_env(store_url),
            cwd=TESTS,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        handle = s.on_gpu.with_options(resources={"gpu": 1}).submit("g", 0.0)
        assert handle.result(timeout=60)["key"] == "g"
        (node,) = [n for n in app.store.nodes() if n.name == "gpu-box"]
        assert node.capabilities == ["gpu"]
        assert node.resources["gpu"] == 1.0 and node.resources["cpu"] == 1.0
        assert node.pid == worker.pid
        assert handle.info().node_name == "gpu-box"
        out = cli(store_url, "nodes")
        row = next(line for line in out.splitlines() if "gpu-box" in line)
        assert "gpu=1" in row and " gpu " in f" {row} "
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, 9)
            worker.wait(10)
    assert worker.returncode == 0, log.read_text()


def _empty_claims(app: accord.App, monkeypatch: pytest.MonkeyPatch, *, turns: bool) -> int:
    """Claims that came back empty while three idle nodes served 30 tasks,
    one at a time: a measure of how many nodes rush at each new task."""
    if not turns:
        monkeypatch.setattr(accord.Node, "_find_rank", lambda self: None)
    empty = 0
    exchange = app.store.exchange

    def counting(*args: object, **kw: object) -> object:
        nonlocal empty
        accepted, claimed = exchange(*args, **kw)  # type: ignore[arg-type]
        # (a claim only if there is work is mostly left out: not counted)
        empty += bool(kw.get("claim")) and not kw.get("only_if_work") and not claimed
        return accepted, claimed

    monkeypatch.setattr(app.store, "exchange", counting)
    with serving(*(app.node(mode="thread", slots=1) for _ in range(3))):
        time.sleep(0.3)
        before = empty
        for i in range(30):
            s.nap.submit(i).result(timeout=30)
    monkeypatch.undo()
    return empty - before


def test_idle_nodes_take_turns_at_new_work(
    app: accord.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New work wakes every idle node, but the first by id claims at once and
    the others only look, later, whether some is left: far fewer claims come
    back empty than when every node claims (the negative control)."""
    rushing = _empty_claims(app, monkeypatch, turns=False)
    turns = _empty_claims(app, monkeypatch, turns=True)
    assert rushing >= 30, rushing  # most tasks set both other nodes claiming
    assert turns <= rushing / 2, (turns, rushing)
