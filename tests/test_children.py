"""Child tasks: idempotency keys in batches, children written while the
parent still computes, and the idempotency key as a per-submit option only."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import accord
from accord import serde
from accord.store.base import NewRun, NewTask
from apps import kids as k
from support import bind

MODES = ["process", "thread"]
PATIENCE = 60.0


@pytest.fixture
def kids(store_url: str) -> Iterator[accord.App]:
    """tests/apps/kids.py's app on a fresh store."""
    yield bind(k.app, store_url)
    k.app.close()


def _new(key: str | None, i: int, name: str = "square") -> NewTask:
    return NewTask(name=name, queue="kids", args=serde.dumps([[i], {}]), idempotency_key=key)


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
