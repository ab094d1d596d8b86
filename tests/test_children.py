"""Child tasks: idempotency keys in batches, children written while the
parent still computes, and the idempotency key as a per-submit option only."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import accord
from accord import TaskState, serde
from accord.store.records import NewRun, NewTask
from accord.tasks import context
from apps import kids as k
from support.common import bind

MODES = ["process", "thread"]
PATIENCE = 60.0


@pytest.fixture
def kids(store_url: str) -> Iterator[accord.App]:
    """tests/apps/kids.py's app on a fresh store."""
    yield bind(k.app, store_url)
    k.app.close()


def _new(key: str | None, i: int, name: str = "square") -> NewTask:
    return NewTask(name=name, queue="kids", args=serde.dumps([[i], {}]), idempotency_key=key)


def _wait_for(check: Callable[[], bool], what: str, timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.01)


# -- 7: idempotency keys in a batch ------------------------------------------


def test_batch_with_a_used_key_returns_the_existing_task(kids: accord.App) -> None:
    store = kids.store
    run_id, (first,) = store.submit([_new("k-1", 1)], run=NewRun(app="kids", name="one"))
    other_run, ids = store.submit(
        [_new("k-0", 0), _new("k-1", 1), _new("k-2", 2)], run=NewRun(app="kids", name="three")
    )
    assert other_run != run_id
    assert ids[1] == first
    assert len(set(ids)) == 3
    assert [t.id for t in store.tasks(other_run)] == [ids[0], ids[2]]
    # every key of the batch used already: nothing is written, the first's run is returned
    before = len(store.runs(limit=100))
    again_run, again = store.submit(
        [_new("k-2", 2), _new("k-1", 1)], run=NewRun(app="kids", name="again")
    )
    assert (again_run, again) == (other_run, [ids[2], first])
    assert len(store.runs(limit=100)) == before


def test_same_key_twice_in_one_batch_is_one_task(kids: accord.App) -> None:
    store = kids.store
    run_id, ids = store.submit(
        [_new("twice", 4), _new(None, 5), _new("twice", 4)], run=NewRun(app="kids", name="t")
    )
    assert ids[0] == ids[2] != ids[1]
    assert [t.id for t in store.tasks(run_id)] == [ids[0], ids[1]]


def test_key_reused_with_other_arguments_in_a_batch_conflicts(
    kids: accord.App, row_counts: Callable[[], dict[str, int]]
) -> None:
    store = kids.store
    _, (first,) = store.submit([_new("used", 1)], run=NewRun(app="kids", name="one"))
    before = row_counts()
    with pytest.raises(accord.ConflictError, match="idempotency key 'used' was used") as caught:
        store.submit([_new(None, 0), _new("used", 2)], run=NewRun(app="kids", name="x"))
    assert caught.value.task_id == first
    with pytest.raises(accord.ConflictError, match="with other arguments"):
        store.submit(
            [_new(None, 0), _new("used", 1, name="add_all")], run=NewRun(app="kids", name="x")
        )
    with pytest.raises(accord.ConflictError, match="idempotency key 'dup' was used"):
        store.submit([_new("dup", 1), _new("dup", 2)], run=NewRun(app="kids", name="x"))
    assert row_counts() == before


@pytest.mark.parametrize("mode", MODES)
def test_keyed_children_submitted_together(kids: accord.App, mode: str) -> None:
    """Children with keys go to the store in one batch: a key used before
    (here by a top-level submit) gives that task, a key used twice in the
    batch gives one task."""
    used = k.square.with_options(idempotency_key="child-1").submit(1)
    calls = [["child-0", 0], ["child-1", 1], ["child-2", 2], ["child-0", 0]]
    parent = k.keyed_children.submit(calls)
    with kids.embedded_node(mode=mode, slots=2):
        ids = parent.result(timeout=PATIENCE)
        assert ids[1] == used.id
        assert ids[3] == ids[0]
        assert len(set(ids)) == 3
        assert [kids.handle(i).result(timeout=PATIENCE) for i in ids] == [0, 1, 4, 0]
        # The parent again, with the same keys: the same children.
        again = k.keyed_children.submit(calls)
        assert again.result(timeout=PATIENCE) == ids
    children = [t for t in kids.store.tasks(parent.info().run_id) if t.parent_id == parent.id]
    assert sorted(t.id for t in children) == sorted({ids[0], ids[2]})


def test_keyed_child_depending_on_a_sibling(kids: accord.App) -> None:
    """A keyed child whose argument is a sibling in its batch: another
    parent's sibling is another argument, so the same key conflicts there."""
    parent = k.keyed_chain.submit("chain")
    with kids.embedded_node(mode="thread", slots=2):
        first, keyed = parent.result(timeout=PATIENCE)
        assert first != keyed
        assert kids.handle(keyed).result(timeout=PATIENCE) == 10
        other = k.keyed_chain.submit("chain")
        with pytest.raises(accord.TaskFailed, match="idempotency key 'chain' was used") as caught:
            other.result(timeout=PATIENCE)
    assert caught.value.error_type == "ConflictError"


@pytest.mark.parametrize("mode", MODES)
def test_keyed_children_with_other_arguments_fail_the_parent(kids: accord.App, mode: str) -> None:
    k.square.with_options(idempotency_key="taken").submit(1)
    parent = k.keyed_children.submit([["fresh", 0], ["taken", 2]])
    with kids.embedded_node(mode=mode, slots=1):
        with pytest.raises(accord.TaskFailed, match="idempotency key 'taken' was used") as caught:
            parent.result(timeout=PATIENCE)
    assert caught.value.error_type == "ConflictError"


# -- 8: children are written while the parent computes -----------------------


@pytest.mark.parametrize("mode", MODES)
def test_children_run_on_another_node_while_the_parent_computes(
    kids: accord.App, mode: str, tmp_path: Path
) -> None:
    """The parent submits its children and computes (no result(), no further
    submit); another node claims and starts every child meanwhile."""
    n = 5
    parent = k.fan_out_then_compute.submit(str(tmp_path), n)
    # Only this node may run the parent, and its one slot is then busy.
    parent_node = kids.node(mode=mode, slots=1, capabilities=["parents"], name="parent-node")
    parent_node.start()
    try:
        _wait_for(lambda: parent.status() is TaskState.RUNNING, "the parent's start")
        child_node = kids.node(mode="thread", slots=2, name="child-node")
        child_node.start()
        try:
            started = [tmp_path / f"child-{i}" for i in range(n)]
            _wait_for(lambda: all(p.exists() for p in started), "every child's start")
            # The parent is still computing: it can only end once released.
            assert parent.status() is TaskState.RUNNING
            (tmp_path / "release").write_text("go")
            assert parent.result(timeout=PATIENCE) == n
        finally:
            child_node.stop()
            child_node.join()
    finally:
        parent_node.stop()
        parent_node.join()
    children = [t for t in kids.store.tasks(parent.info().run_id) if t.parent_id == parent.id]
    assert len(children) == n
    assert {t.node_name for t in children} == {"child-node"}
    assert all(t.state is TaskState.SUCCEEDED for t in children)


@pytest.mark.parametrize("mode", MODES)
def test_a_failing_parent_leaves_all_its_children(
    kids: accord.App, mode: str, tmp_path: Path
) -> None:
    """Children already written are not taken back when the parent fails; so
    that none is left half-way, what is still buffered is written too."""
    n = 50
    parent = k.fan_out_then_fail.submit(str(tmp_path), n)
    with kids.embedded_node(mode=mode, slots=1, capabilities=["parents"]):
        with pytest.raises(accord.TaskFailed, match="fails right after submitting"):
            parent.result(timeout=PATIENCE)
    children = [t for t in kids.store.tasks(parent.info().run_id) if t.parent_id == parent.id]
    assert sorted(t.name for t in children) == ["mark"] * n


def test_children_written_in_the_background_carry_the_attempts_fence(kids: accord.App) -> None:
    """A child is written without any further call of the parent; once a
    newer attempt holds the parent, the old attempt's children are refused:
    FencedError from the handle, once from the attempt, nothing written."""
    store = kids.store
    run_id, (parent_id,) = store.submit(
        [_new(None, 0, name="keyed_children")], run=NewRun(app="kids", name="p")
    )
    old_node = store.register_node(
        name="old", host="h", pid=1, queue="kids", slots=1, mode="thread", capabilities=[]
    )
    _, (old,) = store.exchange(old_node, [], queue="kids", claim=1, lease_ttl=0.2)
    ctx = accord.TaskContext(
        runtime=kids.runtime,
        task_id=parent_id,
        run_id=run_id,
        name=old.name,
        attempt=old.attempt,
        max_attempts=old.max_attempts,
        fence=old.fence,
    )
    token = context.enter(ctx)
    try:
        k.square.submit(1)
        _wait_for(
            lambda: [t.name for t in store.tasks(run_id)] == ["keyed_children", "square"],
            "the child's row",
        )
        time.sleep(0.3)  # the old attempt's lease expires; a new node takes the parent over
        new_node = store.register_node(
            name="new", host="h", pid=2, queue="kids", slots=1, mode="thread", capabilities=[]
        )
        _, (new,) = store.exchange(new_node, [], queue="kids", claim=1, lease_ttl=30)
        assert new.fence > old.fence
        late = k.square.submit(2)
        with pytest.raises(accord.FencedError, match="no longer holds its lease"):
            late.id  # noqa: B018
        ctx.flush()  # the error was raised once
        with pytest.raises(accord.FencedError):
            late.id  # noqa: B018 - but the handle keeps it
    finally:
        ctx.close()
        context.leave(token)
    assert [t.name for t in store.tasks(run_id)] == ["keyed_children", "square"]


# -- 9: the idempotency key is a per-submit option ---------------------------


@pytest.mark.parametrize("register", ["task", "workflow"])
def test_idempotency_key_refused_at_decoration(
    register: str, store_url: str, row_counts: Callable[[], dict[str, int]]
) -> None:
    app = accord.App("decorated", store=store_url)
    try:
        app.store  # noqa: B018 - the store exists before the bad call
        before = row_counts()
        decorator = getattr(app, register)
        with pytest.raises(
            accord.ConfigError, match=r"with_options\(idempotency_key=\.\.\.\)\.submit"
        ):
            decorator(idempotency_key="once")(k.square.fn)
        assert app.tasks == {}
        assert row_counts() == before
    finally:
        app.close()
