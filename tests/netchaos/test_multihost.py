"""Three nodes on three hosts, PostgreSQL on a fourth (RELIABILITY.md Q2, Q3, Q5, Q7, T2).

Hosts are network namespaces joined to the database host by veth; node 3 reaches the
database through a fault proxy in its own namespace. A 2,000-task DAG runs across
the three nodes while one fault of each kind hits, one after the other:

1. SIGKILL of a node (restarted at once);
2. SIGSTOP of another node (node and slots) for 1.5 x the lease, then SIGCONT;
3. a partition of a node's link for 2 x the lease, then healed;
4. latency, jitter and random connection resets on node 3's proxy, then all its
   connections reset;
5. kill -9 of PostgreSQL and a restart.

The run must complete with every task's result recorded exactly once by its final
attempt, no task run more often than 1 + the faults that hit it, and the zombie
attempts' completions refused.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import accord
from accord import serde
from accord.store.records import Completion, Outcome
from accord.tasks.handles import Run
from apps import netchaos
from support.checker import report, snapshot
from support.common import sql
from support.netharness import FaultLog, NetCluster, Topology, finish_times, recovery_times
from support.recorder import Fault

pytestmark = [pytest.mark.root, pytest.mark.chaos]

LEASE = 2.0
SLOTS = 2
WIDTH, DEPTH = 100, 20  # 2,000 tasks
STEP_S = 0.08  # 2,000 x 80 ms on 6 slots: >= 27 s, so every fault lands mid-run
SEED = 20261125
BUDGET_S = 150.0


def _submit_dag(app: accord.App) -> tuple[list[accord.Handle[Any]], list[int]]:
    """WIDTH x DEPTH steps; step (l, i) waits for (l-1, i) and one other step of
    layer l-1. One run per layer (one commit each)."""
    handles: list[accord.Handle[Any]] = []
    prev: list[accord.Handle[Any]] = []
    runs = []
    for layer in range(DEPTH):
        calls = []
        for i in range(WIDTH):
            deps = []
            if prev:
                other = (i + 1 + (i * 37) % (WIDTH - 1)) % WIDTH
                deps = [prev[i], prev[other]]
            calls.append((layer * WIDTH + i, STEP_S, deps))
        layer_handles = netchaos.step.map(calls)
        runs.append(app.store.task(layer_handles[0].id).run_id)
        handles += layer_handles
        prev = layer_handles
    return handles, runs


class Schedule:
    """The faults of this scenario, one after the other, from a thread."""

    def __init__(self, cluster: NetCluster, net: Topology, seed: int) -> None:
        self.cluster = cluster
        self.net = net
        self.log = FaultLog(cluster)
        self.rng = random.Random(seed)
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.named: dict[str, Fault] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="schedule", daemon=True)

    def start(self) -> Schedule:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        if self.error is not None:
            raise self.error

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _run(self) -> None:
        try:
            self._faults()
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            self.done.set()

    def _faults(self) -> None:
        c, net, rng = self.cluster, self.net, self.rng
        direct = [0, 1]  # nodes reaching the database on their own link
        rng.shuffle(direct)
        killed, cut = direct
        paused = 2
        self._sleep(2.0)
        # 1. a node's process dies (its slots live on as orphans until their task returns)
        self.named["kill"] = c.kill(killed)
        self._sleep(rng.uniform(0.2, 0.5))
        c.restart(killed)
        self._sleep(1.5)
        # 2. a node (with its slots) stops for longer than its lease: a zombie
        self.named["pause"] = c.pause(paused)
        self._sleep(1.5 * LEASE)
        c.resume(paused)
        self._sleep(1.5)
        # 3. a partition between a node's host and the database host
        fault = self.log.begin("partition", cut, detail=net.hosts[f"n{cut + 1}"].ns)
        net.net.cut(f"n{cut + 1}")
        self._sleep(2 * LEASE)
        net.net.heal(f"n{cut + 1}")
        self.named["partition"] = self.log.end(fault)
        self._sleep(1.5)
        # 4. a slow, unreliable path to the database for node 3, then every connection reset
        assert net.proxy is not None
        fault = self.log.begin("proxy", 2, detail="delay 20 ms + 0-30 ms, reset p=0.01")
        net.proxy.set_delay(20, 30)
        net.proxy.set_reset_probability(0.01, seed=rng.randrange(1 << 30))
        self._sleep(2 * LEASE)
        net.proxy.reset_all()
        net.proxy.heal()
        self.named["proxy"] = self.log.end(fault)
        self._sleep(1.5)
        # 5. the database host's PostgreSQL is killed and restarted (every node is hit)
        assert net.pg is not None
        crash = [self.log.begin("db_crash", i) for i in range(c.n)]
        net.pg.kill()
        self._sleep(rng.uniform(0.2, 0.8))
        net.pg.start()
        for fault in crash:
            self.log.end(fault)
        self.named["db_crash"] = crash[0]


@pytest.mark.timeout(240)
def test_dag_2000_tasks_three_hosts_every_fault(
    tmp_path: Path, net: Topology, app: accord.App
) -> None:
    started = time.monotonic()
    store = app.store
    placement = [
        (net.hosts["n1"].ns, net.url_from("n1", _db(app))),
        (net.hosts["n2"].ns, net.url_from("n2", _db(app))),
        (net.hosts["n3"].ns, net.url_from("n3", _db(app), via_proxy=True)),
    ]
    with NetCluster(
        tmp_path, app.store_url, placement, app="apps.netchaos:app", slots=SLOTS, lease=LEASE
    ) as cluster:
        cluster.start()
        cluster.wait_ready(store, timeout=30)
        handles, run_ids = _submit_dag(app)
        submitted_at = time.monotonic()
        schedule = Schedule(cluster, net, SEED).start()
        try:
            runs = [Run(app, r) for r in run_ids]
            deadline = started + BUDGET_S
            while any(r.status() == "running" for r in runs):
                assert time.monotonic() < deadline, f"the run did not end in {BUDGET_S} s"
                time.sleep(0.2)
            finished = time.monotonic()
            faults_done = schedule.done.is_set()
        finally:
            schedule.stop()
        rows, executions, figures = cluster.account(
            store,
            run_ids,
            [h.id for h in handles],
            expected={h.id: netchaos.square(k) for k, h in enumerate(handles)},
        )
        # Zombie completions: every attempt that lost its task tries again now, by
        # hand, with its old fence: all refused, no result changes.
        final_fence = {r.id: r.fence for r in rows}
        stale = [e for e in executions if e.fence != final_fence.get(e.task_id)]
        refused = 0
        for e in stale[:50]:
            assert e.node_id is not None
            late = Completion(e.task_id, e.fence, Outcome.OK, result=serde.dumps("zombie"))
            answer = store.exchange(e.node_id, [late], queue=app.name, claim=0, lease_ttl=LEASE)
            assert answer == ([False], []), f"a stale completion of task {e.task_id} was accepted"
            refused += 1
        after = snapshot(store, run_ids)
        assert [r.result for r in after] == [r.result for r in rows]

    local = app.store_url
    done_at = finish_times(local)
    detect = _detect_time(local, schedule.named["partition"], cluster)
    recovery = recovery_times(schedule.named, done_at)
    states: dict[str, int] = {}
    for r in rows:
        states[r.state] = states.get(r.state, 0) + 1
    report(
        "multihost",
        figures,
        executed_more_than_once=sum(1 for n in _per_task(executions).values() if n > 1),
        zombie_completions_refused=refused,
        stale_attempts=len(stale),
        recovery_time_s=recovery,
        detect_time_s=detect,
        fault_log=[
            (f.kind, f.target, round(f.start - started, 2), round((f.end or 0) - started, 2))
            for f in cluster.faults
        ],
        run_s=round(finished - submitted_at, 2),
        states=states,
        seed=SEED,
        lease_s=LEASE,
        wall_s=round(time.monotonic() - started, 2),
    )
    assert faults_done, "the run ended before every fault was applied: it proved nothing"
    assert figures["submitted"] == WIDTH * DEPTH
    assert figures["completed"] == figures["submitted"], states
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    assert figures["unexpected"] == 0
    assert figures["excess_executions"] == 0, "executions > 1 + faults that hit the task"
    assert figures["invariant_violations"] == 0, figures["violations"]
    assert figures["fenced_rejections"] >= 1, "no zombie completion or heartbeat was refused"
    assert refused == len(stale[:50]) and stale, "no attempt lost its task: faults missed"


def _db(app: accord.App) -> str:
    return app.store_url.split("?")[0].rsplit("/", 1)[1]


def _per_task(executions: list[Any]) -> dict[int, int]:
    out: dict[int, int] = {}
    for e in executions:
        out[e.task_id] = out.get(e.task_id, 0) + 1
    return out


def _detect_time(url: str, fault: Fault, cluster: NetCluster) -> float | None:
    """Partition start -> the first lease of the cut node declared lost (store's event)."""
    names = [f"w{w.index}.{w.generation}" for w in cluster.history if w.index == fault.target]
    rows = sql(url, "SELECT at, detail FROM events WHERE kind = 'lease_expired' ORDER BY at")
    for at, detail in rows:
        if at >= fault.wall and any(f"node {n} " in (detail or "") for n in names):
            return round(at - fault.wall, 3)
    return None
