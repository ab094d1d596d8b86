"""The store on both backends: schema, reopening, integrity, events, listings, fencing."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import accord
from accord import serde
from accord.store import open_store, postgres, sqlite
from accord.store.base import Store
from accord.store.records import (
    LEASE_LOSSES,
    ClaimedTask,
    Completion,
    NewRun,
    NewTask,
    Outcome,
    TaskState,
)
from accord.store.sql.core import migrations, statements
from accord.store.sql.store import SqlStore
from accord.store.sqlite.store import SqliteStore
from apps import flows as f
from support.common import sql

Counts = Callable[[], dict[str, int]]


@pytest.fixture
def store(store_url: str) -> Iterator[SqlStore]:
    opened = open_store(store_url)
    assert isinstance(opened, SqlStore)
    yield opened
    opened.close()


def _task(name: str = "square", *args: object, **fields: object) -> NewTask:
    data = serde.dumps([list(args), {}])
    return NewTask(name=name, queue="flows", args=data, **fields)  # type: ignore[arg-type]


def _node(store: SqlStore, name: str) -> int:
    return store.register_node(
        name=name, host="test", pid=1, queue="flows", slots=1, mode="thread", capabilities=[]
    )


def _ok(task_id: int, fence: int, value: object) -> Completion:
    return Completion(task_id, fence, Outcome.OK, result=serde.dumps(value))


def test_a_store_of_the_previous_schema_is_upgraded_in_place(store_url: str) -> None:
    """A store written by the accord before the last migration opens, is
    upgraded, and keeps its tasks (given the new columns' defaults)."""
    dialect = "sqlite" if store_url.startswith("sqlite:") else "postgresql"
    scripts = migrations(dialect)
    previous = scripts[-2][0]
    sql(store_url, "CREATE TABLE accord_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for _, script in scripts[:-1]:
        for statement in statements(script):
            sql(store_url, statement)
    sql(store_url, "INSERT INTO accord_meta VALUES ('schema_version', ?)", (str(previous),))
    sql(store_url, "INSERT INTO runs (id, app, name, created_at) VALUES (1, 'flows', 'old', 0)")
    sql(
        store_url,
        "INSERT INTO tasks (id, run_id, queue, name, state, args, created_at) "
        "VALUES (1, 1, 'flows', 'square', 'ready', ?, 0)",
        (serde.dumps([[4], {}]),),
    )
    with open_store(store_url) as store:
        assert store.schema_version() == scripts[-1][0] > previous  # type: ignore[attr-defined]
        old = store.task(1)
        assert (old.name, old.state, old.max_losses) == ("square", TaskState.READY, LEASE_LOSSES)


@pytest.mark.sqlite_only
def test_schema_version_and_pragmas(store: SqlStore) -> None:
    assert isinstance(store, SqliteStore)
    SCHEMA_VERSION = sqlite.SCHEMA_VERSION
    assert store.schema_version() == SCHEMA_VERSION >= 1
    conn = sqlite3.connect(store.path)
    try:
        rows = dict(conn.execute("SELECT key, value FROM accord_meta").fetchall())
        assert rows["schema_version"] == str(SCHEMA_VERSION)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"runs", "tasks", "deps", "nodes", "events", "accord_meta"} <= tables
    finally:
        conn.close()
    # every connection of the store writes with synchronous=FULL (2)
    assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 2
    assert store.integrity_check() == "ok"


def test_postgresql_schema(pg_url: str) -> None:
    import psycopg

    with open_store(pg_url) as store:
        assert store.schema_version() == postgres.SCHEMA_VERSION >= 1  # type: ignore[attr-defined]
    with psycopg.connect(pg_url) as conn:
        rows = dict(conn.execute("SELECT key, value FROM accord_meta").fetchall())
        assert rows["schema_version"] == str(postgres.SCHEMA_VERSION)
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        }
        assert {"runs", "tasks", "deps", "nodes", "events", "accord_meta"} <= tables
        assert conn.execute("SHOW fsync").fetchone() == ("on",)


def test_reopening_keeps_everything(store_url: str, flows: accord.App) -> None:
    handle = f.square.submit(9)
    run = flows.start(f.dag, 4, 2)
    with flows.embedded_node(mode="thread", slots=1):
        assert handle.result(timeout=30) == 81
        run.wait(timeout=30)
    single_run = handle.info().run_id
    flows.close()
    for _ in range(2):  # and reopening a reopened store
        with open_store(store_url) as again:
            assert isinstance(again, SqlStore)
            backend = sqlite if isinstance(again, SqliteStore) else postgres
            assert again.schema_version() == backend.SCHEMA_VERSION
            assert again.task(handle.id).state is TaskState.SUCCEEDED
            assert serde.loads(again.results([handle.id])[0].result) == 81
            assert again.run(run.id).state == "succeeded"
            assert [r.id for r in again.runs()] == [run.id, single_run]
            if isinstance(again, SqliteStore):
                assert again.integrity_check() == "ok"
    app = accord.App("flows", store=store_url)
    try:
        assert app.handle(handle.id).result(timeout=1) == 81
        assert app.get_run(run.id).wait(timeout=1) == sum(i * i for i in range(4))
    finally:
        app.close()


def test_two_store_objects_on_one_file_see_each_other(store_url: str) -> None:
    with open_store(store_url) as one, open_store(store_url) as two:
        _, ids = one.submit([_task("square", 2)], run=NewRun(app="flows", name="square"))
        two.changed()  # the first call only records the version
        assert two.task(ids[0]).state is TaskState.READY
        one.cancel_tasks(ids, "bye")
        # PostgreSQL's notification arrives a moment after the commit.
        deadline = time.monotonic() + 5
        while not two.changed():
            assert time.monotonic() < deadline, "the other store object never saw the change"
            time.sleep(0.01)
        time.sleep(0.2)
        two.changed()
        assert two.changed() is False  # nothing new since
        assert two.task(ids[0]).state is TaskState.CANCELLED


def test_submit_is_one_transaction(store: SqlStore, row_counts: Counts) -> None:
    before = row_counts()
    bad = _task("add_all", 1)
    bad.deps = [424242]
    with pytest.raises(accord.NotFoundError, match="depends on task 424242"):
        store.submit([_task("square", 1), bad], run=NewRun(app="flows", name="x"))
    assert row_counts() == before


def test_dependencies_in_one_batch(store: SqlStore) -> None:
    first = _task("square", 3)
    second = _task("add_all")
    second.deps = [-1]
    run_id, (a, b) = store.submit([first, second], run=NewRun(app="flows", name="x"))
    assert store.task(a).state is TaskState.READY
    assert store.task(b).state is TaskState.PENDING
    assert store.run(run_id).counts == {"ready": 1, "pending": 1}


def test_exchange_claims_completes_and_settles(store: SqlStore) -> None:
    first = _task("square", 3)
    second = _task("add_all")
    second.deps = [-1]
    run_id, (a, b) = store.submit([first, second], run=NewRun(app="flows", name="x"))
    node = _node(store, "n1")
    accepted, claimed = store.exchange(node, [], queue="flows", claim=5, lease_ttl=30)
    assert accepted == [] and [t.id for t in claimed] == [a]
    task = claimed[0]
    assert task.fence >= 1 and task.attempt == 1 and task.run_id == run_id
    info = store.task(a)
    assert info.state is TaskState.RUNNING and info.node_id == node and info.node_name == "n1"
    # the completion and the next claim go in one commit; the dependent is ready then
    accepted, claimed = store.exchange(
        node, [_ok(a, task.fence, 9)], queue="flows", claim=5, lease_ttl=30
    )
    assert accepted == [True]
    assert [t.id for t in claimed] == [b]
    assert [serde.loads(r) for r in claimed[0].dep_results] == [9]
    accepted, _ = store.exchange(
        node, [_ok(b, claimed[0].fence, 9)], queue="flows", claim=0, lease_ttl=30
    )
    assert accepted == [True]
    assert store.run(run_id).state == "succeeded"
    assert [n.completed for n in store.nodes()] == [2]


def test_a_claim_only_if_work_is_left_out_unless_there_is_some(store: SqlStore) -> None:
    """``only_if_work`` (the node saw no sign of new work): the claim is left
    out, unless the results going in make tasks ready or the node's last
    claim left tasks it could not take then."""
    node = _node(store, "n1")
    (a,) = store.submit([_task("square", 1)], run=NewRun(app="flows", name="a"))[1]
    claim = {"queue": "flows", "lease_ttl": 30, "only_if_work": True}
    # nothing said there was work: the ready task stays where it is
    assert store.exchange(node, [], claim=1, **claim) == ([], [])  # type: ignore[arg-type]
    assert store.task(a).state is TaskState.READY
    (ta,) = store.exchange(node, [], queue="flows", claim=1, lease_ttl=30)[1]
    # a result that makes its dependent ready claims it in the same commit
    dependent = _task("add_all")
    dependent.deps = [a]
    _, (b,) = store.submit([dependent], run=NewRun(app="flows", name="b"))
    accepted, claimed = store.exchange(node, [_ok(a, ta.fence, 1)], claim=1, **claim)  # type: ignore[arg-type]
    assert accepted == [True] and [t.id for t in claimed] == [b]
    # a claim cut short by the node's free resources leaves work behind for later
    wide = [_task("square", i, resources={"cpu": 1.0}) for i in range(2)]
    _, (c, d) = store.submit(wide, run=NewRun(app="flows", name="c"))
    (tc,) = store.exchange(node, [], queue="flows", claim=2, lease_ttl=30, free={"cpu": 1})[1]
    assert tc.id == c
    accepted, claimed = store.exchange(
        node,
        [_ok(c, tc.fence, 1)],
        claim=2,
        free={"cpu": 1},
        **claim,  # type: ignore[arg-type]
    )
    assert accepted == [True] and [t.id for t in claimed] == [d]


def test_has_ready_sees_only_tasks_that_could_be_claimed_now(store: SqlStore) -> None:
    assert not store.has_ready("flows")
    store.submit([_task("square", 1, delay=60.0)], run=NewRun(app="flows", name="later"))
    assert not store.has_ready("flows")  # delayed: not claimable yet
    assert not store.has_ready("other")
    (a,) = store.submit([_task("square", 2)], run=NewRun(app="flows", name="now"))[1]
    assert store.has_ready("flows")
    node = _node(store, "n1")
    (claimed,) = store.exchange(node, [], queue="flows", claim=2, lease_ttl=30)[1]
    assert claimed.id == a
    assert not store.has_ready("flows")


def _elsewhere(store: Store) -> Callable[[Callable[[Store], object]], None]:
    """Run a write on ``store`` in another thread (a thread's own commits
    wake nothing of its own)."""

    def run(write: Callable[[Store], object]) -> None:
        thread = threading.Thread(target=write, args=(store,))
        thread.start()
        thread.join()

    return run


def test_another_store_sees_changes_and_new_work(store_url: str) -> None:
    """What waiting nodes and clients rely on: a store is told (or finds by
    looking) that another thread committed, and whether that made new work.
    A store that first only asked about new work sees the rest too."""
    with open_store(store_url) as watcher, open_store(store_url) as writer:
        elsewhere = _elsewhere(writer)
        while watcher.work_changed():  # settle: the first calls count a change
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        elsewhere(lambda s: s.submit([_task("square", 1)], run=NewRun(app="flows", name="x")))
        while not watcher.work_changed():
            assert time.monotonic() < deadline, "the new ready task was not seen as work"
            time.sleep(0.02)
        while watcher.changed():
            time.sleep(0.2)
        elsewhere(
            lambda s: s.register_node(
                name="w", host="t", pid=2, queue="flows", slots=1, mode="thread", capabilities=[]
            )
        )
        while not watcher.wait_changed(0.2):
            assert time.monotonic() < deadline, "the other thread's commit was not seen"


def test_a_claim_alone_is_no_news_to_waiting_clients(pg_url: str) -> None:
    """On PostgreSQL nobody is woken by a claim (nothing waits for one), but
    by the result that follows."""
    with open_store(pg_url) as watcher, open_store(pg_url) as node_store:
        elsewhere = _elsewhere(node_store)
        node = node_store.register_node(
            name="n", host="t", pid=1, queue="flows", slots=1, mode="thread", capabilities=[]
        )
        elsewhere(lambda s: s.submit([_task("square", 3)], run=NewRun(app="flows", name="x")))
        while watcher.wait_changed(0.3):
            pass
        claimed: list[ClaimedTask] = []
        elsewhere(
            lambda s: claimed.extend(s.exchange(node, [], queue="flows", claim=1, lease_ttl=30)[1])
        )
        assert len(claimed) == 1
        assert not watcher.wait_changed(0.5)
        elsewhere(
            lambda s: s.exchange(
                node, [_ok(claimed[0].id, claimed[0].fence, 9)], queue="flows", claim=0,
                lease_ttl=30,
            )
        )  # fmt: skip
        assert watcher.wait_changed(5)


@pytest.mark.parametrize("handback", ["lease expired", "released"])
def test_a_task_given_back_keeps_its_place_in_line(store: SqlStore, handback: str) -> None:
    """A task whose lease expired, or that its node handed back, is claimed
    before the tasks that became ready with it or after it, however many:
    its place is its ready time, then its id, on both backends (on
    PostgreSQL an index holding equal ready times in row-version order put
    the task back behind all of them)."""
    _, ids = store.submit(
        [_task("square", i) for i in range(300)], run=NewRun(app="flows", name="x")
    )
    first = _node(store, "first")
    _, (held,) = store.exchange(first, [], queue="flows", claim=1, lease_ttl=0.05)
    assert held.id == ids[0]
    if handback == "released":
        store.release(first, [(held.id, held.fence)])
    else:
        time.sleep(0.1)
    second = _node(store, "second")
    _, claimed = store.exchange(second, [], queue="flows", claim=3, lease_ttl=30)
    assert [t.id for t in claimed] == [ids[0], ids[1], ids[2]]


def test_stale_fence_is_refused_and_changes_nothing(store: SqlStore) -> None:
    run_id, (task_id,) = store.submit(
        [_task("square", 4, max_attempts=3)], run=NewRun(app="flows", name="x")
    )
    old_node = _node(store, "old")
    new_node = _node(store, "new")
    _, (old,) = store.exchange(old_node, [], queue="flows", claim=1, lease_ttl=0.05)
    time.sleep(0.1)  # the old node's lease expires; the new node takes the task over
    _, (new,) = store.exchange(new_node, [], queue="flows", claim=1, lease_ttl=30)
    assert new.id == task_id and new.fence == old.fence + 1
    before = store.task(task_id)
    assert before.state is TaskState.RUNNING and before.node_id == new_node
    # the old attempt's completion, success or failure, is refused
    stale = [
        _ok(task_id, old.fence, 1),
        Completion(task_id, old.fence, Outcome.ERROR, error="late", error_type="X"),
    ]
    accepted, claimed = store.exchange(old_node, stale, queue="flows", claim=0, lease_ttl=30)
    assert accepted == [False, False] and claimed == []
    assert store.task(task_id) == before
    assert store.results([task_id])[0].result is None
    # it no longer holds the lease, so its heartbeat does not extend it
    assert store.heartbeat(old_node, 30, 1) == {}
    assert store.heartbeat(new_node, 30, 1) == {task_id: new.fence}
    # nor can it add children
    with pytest.raises(accord.FencedError, match="no longer holds its lease") as caught:
        store.submit([_task("square", 1)], parent=(task_id, old.fence))
    assert caught.value.task_id == task_id and caught.value.fence == old.fence
    assert len(store.tasks(run_id)) == 1
    # the current attempt completes
    accepted, _ = store.exchange(
        new_node, [_ok(task_id, new.fence, 16)], queue="flows", claim=0, lease_ttl=30
    )
    assert accepted == [True]
    assert serde.loads(store.results([task_id])[0].result) == 16
    # and a second completion of the same attempt is refused too
    accepted, _ = store.exchange(
        new_node, [_ok(task_id, new.fence, 17)], queue="flows", claim=0, lease_ttl=30
    )
    assert accepted == [False]
    assert serde.loads(store.results([task_id])[0].result) == 16
    expired = [e for e in store.events(run_id) if e.kind == "lease_expired"]
    assert len(expired) == 1
    assert "lease expired on node old" in (expired[0].detail or "")


@pytest.mark.parametrize("bound", [None, 1, 5])
def test_lease_lost_again_and_again_fails_the_task(store: SqlStore, bound: int | None) -> None:
    """A lost lease is the node's fault and does not use up the task's retries,
    but a task that every node loses (it kills or hangs them) ends up failed,
    after the task's own bound (``lease_losses``) or the default."""
    losses = LEASE_LOSSES if bound is None else bound
    fields = {} if bound is None else {"max_losses": bound}
    run_id, (task_id,) = store.submit(
        [_task("square", 4, **fields)], run=NewRun(app="flows", name="x")
    )
    fences = []
    for n in range(losses):
        node = _node(store, f"doomed{n}")
        _, claimed = store.exchange(node, [], queue="flows", claim=1, lease_ttl=0.05)
        assert [t.id for t in claimed] == [task_id]
        fences.append(claimed[0].fence)
        time.sleep(0.1)
    assert fences == sorted(set(fences))
    other = _node(store, "other")
    _, claimed = store.exchange(other, [], queue="flows", claim=1, lease_ttl=30)
    assert claimed == []
    info = store.task(task_id)
    assert info.state is TaskState.FAILED
    assert info.error_type == "LeaseExpired"
    assert f"lost its lease {losses} times" in (info.error or "")
    kinds = [e.kind for e in store.events(run_id)]
    assert kinds.count("lease_expired") == losses
    assert "failed" in kinds and "run_failed" in kinds
    assert store.run(run_id).state == "failed"


def test_child_submission_is_not_repeated(store: SqlStore) -> None:
    run_id, (parent,) = store.submit(
        [_task("parent_fails_once", max_attempts=2)], run=NewRun(app="flows", name="x")
    )
    node = _node(store, "n")
    _, (attempt,) = store.exchange(node, [], queue="flows", claim=1, lease_ttl=30)
    kids = [_task("square", i, seq=i) for i in range(3)]
    _, first_ids = store.submit(kids, parent=(parent, attempt.fence))
    # the same children again (a re-executed parent), plus one new
    again = [_task("square", i, seq=i) for i in range(4)]
    _, second_ids = store.submit(again, parent=(parent, attempt.fence))
    assert second_ids[:3] == first_ids
    assert second_ids[3] not in first_ids
    children = [t for t in store.tasks(run_id) if t.parent_id == parent]
    assert len(children) == 4


def test_release_hands_a_task_back_without_counting_the_attempt(store: SqlStore) -> None:
    _, (task_id,) = store.submit([_task("square", 4)], run=NewRun(app="flows", name="x"))
    node = _node(store, "n")
    _, (claimed,) = store.exchange(node, [], queue="flows", claim=1, lease_ttl=30)
    assert store.release(node, [(task_id, claimed.fence)]) == 1
    info = store.task(task_id)
    assert info.state is TaskState.READY and info.attempts == 0 and info.node_id is None
    assert store.release(node, [(task_id, claimed.fence)]) == 0


def test_events_for_failures_and_retries(flows: accord.App) -> None:
    handle = f.fails_until.with_options(backoff=0.01, max_backoff=0.01).submit(99)
    with flows.embedded_node(mode="thread", slots=1) as node:
        with pytest.raises(accord.TaskFailed):
            handle.result(timeout=30)
        assert node is not None
        node_id = node.node_id
    run_id = handle.info().run_id
    events = flows.store.events(run_id)
    assert [e.kind for e in events] == ["retry", "retry", "failed", "run_failed"]
    assert all(e.task_id == handle.id for e in events[:3])
    assert all(e.run_id == run_id for e in events)
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert events[2].detail == "attempt 3 of 3 fails"
    every = flows.store.events()
    kinds = [e.kind for e in every]
    assert kinds[0] == "node_started" and kinds[-1] == "node_stopped"
    assert every[0].node_id == node_id
    assert flows.store.events(limit=2) == every[-2:]


def test_runs_listing_and_counts(store: SqlStore) -> None:
    ids = []
    for n in range(3):
        run_id, _ = store.submit(
            [_task("square", i) for i in range(n + 1)], run=NewRun(app="flows", name=f"r{n}")
        )
        ids.append(run_id)
    listed = store.runs()
    assert [r.id for r in listed] == list(reversed(ids))
    assert [r.name for r in listed] == ["r2", "r1", "r0"]
    assert [r.counts for r in listed] == [{"ready": 3}, {"ready": 2}, {"ready": 1}]
    assert all(r.state == "running" and r.app == "flows" for r in listed)
    assert [r.id for r in store.runs(limit=1)] == [ids[-1]]
    assert store.cancel_run(ids[0], "done with it") == 1
    assert store.run(ids[0]).state == "cancelled"


def test_nodes_listing(store: SqlStore) -> None:
    one = _node(store, "one")
    two = _node(store, "two")
    assert [n.name for n in store.nodes()] == ["one", "two"]
    store.stop_node(one)
    assert [n.id for n in store.nodes()] == [two]
    listed = store.nodes(include_stopped=True)
    assert [(n.name, n.state) for n in listed] == [("one", "stopped"), ("two", "running")]
    assert listed[0].stopped_at is not None


def test_a_node_without_heartbeats_is_marked_lost_and_comes_back(store: SqlStore) -> None:
    quiet = store.register_node(
        name="quiet", host="h1", pid=1, queue="flows", slots=2, mode="process",
        capabilities=[], lease_ttl=0.3,
    )  # fmt: skip
    busy = _node(store, "busy")
    _, ids = store.submit([_task("square", 3)], run=NewRun(app="flows", name="square"))
    _, claimed = store.exchange(quiet, [], queue="flows", claim=1, lease_ttl=0.3)
    assert [t.id for t in claimed] == ids
    store.exchange(busy, [], queue="flows", claim=1, lease_ttl=30)
    assert {n.name: n.state for n in store.nodes()}["quiet"] == "running"
    time.sleep(1.1)  # past its lease, and past the one-second spacing of the sweep
    _, taken = store.exchange(busy, [], queue="flows", claim=1, lease_ttl=30)
    assert [t.id for t in taken] == ids  # its task was reclaimed ...
    states = {n.name: n.state for n in store.nodes()}
    assert states == {"quiet": "lost", "busy": "running"}  # ... and it is marked lost
    lost = [e for e in store.events(limit=1000) if e.kind == "node_lost"]
    assert [e.node_id for e in lost] == [quiet]
    assert "no heartbeat" in (lost[0].detail or "")
    # it wakes up: the heartbeat shows it holds nothing, and it is running again
    assert store.heartbeat(quiet, 0.3, 0) == {}
    assert {n.name: n.state for n in store.nodes()}["quiet"] == "running"
