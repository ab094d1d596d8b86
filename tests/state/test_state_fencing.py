"""Fencing (G3 for the state store, Q3's state half): a write made from a task
attempt that lost its lease is refused and changes nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import accord
from accord import serde
from accord.store.records import ClaimedTask, NewRun, NewTask
from accord.tasks import context
from support.common import sql


def _claim(app: accord.App, node_name: str, lease_ttl: float) -> ClaimedTask | None:
    store = app.store
    node = store.register_node(
        name=node_name, host="test", pid=1, queue=app.name, slots=1, mode="thread", capabilities=[]
    )
    _, claimed = store.exchange(node, [], queue=app.name, claim=1, lease_ttl=lease_ttl)
    return claimed[0] if claimed else None


def _context(app: accord.App, task: ClaimedTask) -> context.TaskContext:
    return context.TaskContext(
        runtime=app.runtime,
        task_id=task.id,
        run_id=task.run_id,
        name=task.name,
        attempt=task.attempt,
        max_attempts=task.max_attempts,
        fence=task.fence,
    )


class Attempt:
    """Run code as if inside a task attempt."""

    def __init__(self, ctx: context.TaskContext) -> None:
        self.ctx = ctx

    def __enter__(self) -> context.TaskContext:
        self.token = context.enter(self.ctx)
        return self.ctx

    def __exit__(self, *exc: object) -> None:
        context.leave(self.token)


@pytest.fixture
def zombie(app: accord.App) -> Iterator[tuple[Attempt, Attempt]]:
    """An old attempt whose lease expired and the new attempt that took over."""
    app.store.submit(
        [NewTask(name="work", queue=app.name, args=serde.dumps([[], {}]), max_attempts=3)],
        run=NewRun(app=app.name, name="work"),
    )
    old = _claim(app, "old", lease_ttl=0.05)
    assert old is not None
    time.sleep(0.1)
    new = _claim(app, "new", lease_ttl=30)
    assert new is not None and new.id == old.id and new.fence > old.fence
    yield Attempt(_context(app, old)), Attempt(_context(app, new))


def test_a_zombie_cannot_write_state(app: accord.App, zombie: tuple[Attempt, Attempt]) -> None:
    old, new = zombie
    app.state.put("shared", "before")
    app.state.snapshot("s")
    revision = app.state.revision()
    with old as ctx:
        for write in (
            lambda: ctx.state.put("x", 1),
            lambda: app.state.put("shared", "zombie"),
            lambda: app.state.delete("shared"),
            lambda: app.state.txn().then_put("a", 1).commit(),
            lambda: app.state.rollback("", to="s"),
            lambda: app.state.snapshot("z"),
            lambda: app.state.lease(5),
            lambda: app.state.delete_prefix("sh"),
            lambda: app.state.delete_snapshot("s"),
            lambda: app.state.compact(),
        ):
            with pytest.raises(accord.FencedError) as caught:
                write()
            assert caught.value.task_id == ctx.task_id and caught.value.fence == ctx.fence
        assert app.state.get("shared") is not None  # reads are not fenced
    assert app.state.revision() == revision and app.state.value("shared") == "before"
    assert [s.name for s in app.state.snapshots()] == ["s"]
    with new as ctx:
        ctx.state.put("x", 2)
        app.state.put("shared", "new attempt")
    assert app.state.run(ctx.run_id).value("x") == 2


def test_a_zombie_cannot_message(app: accord.App, zombie: tuple[Attempt, Attempt]) -> None:
    old, new = zombie
    box, topic = app.mailbox("jobs"), app.topic("news")
    box.send("queued")
    sub = topic.subscribe("reader")
    with old:
        with pytest.raises(accord.FencedError):
            box.send("zombie")
        with pytest.raises(accord.FencedError):
            box.receive(timeout=0)
        with pytest.raises(accord.FencedError):
            topic.publish("zombie")
        with pytest.raises(accord.FencedError):
            topic.subscribe("zombie-reader")
        with pytest.raises(accord.FencedError):
            topic.unsubscribe("reader")
        with pytest.raises(accord.FencedError):
            topic.trim(force=True)
        with pytest.raises(accord.FencedError):
            box.purge_acked(0)
    assert box.stats()["ready"] == 1 and topic.offsets() == (0, 0)
    assert topic.subscribers() == {"reader": 0}
    with new:
        message = box.receive(timeout=1)
        assert message is not None and message.payload == "queued"
        topic.publish("fresh")
    with old, pytest.raises(accord.FencedError):
        message.ack()
    with new:
        assert message.ack()
    assert sub.get(timeout=1).payload == "fresh"  # type: ignore[union-attr]


def test_a_zombie_cannot_revoke_the_lease_it_was_granted(app: accord.App, store_url: str) -> None:
    """A lease granted by an attempt that then lost its task's lease: revoking
    it (which deletes its keys) is refused like any other write."""
    app.store.submit(
        [NewTask(name="work", queue=app.name, args=serde.dumps([[], {}]), max_attempts=3)],
        run=NewRun(app=app.name, name="work"),
    )
    first = _claim(app, "old", lease_ttl=30)
    assert first is not None
    old = Attempt(_context(app, first))
    with old:
        lease = app.state.lease(30)
        app.state.put("held", 1, lease=lease)
    sql(store_url, "UPDATE tasks SET lease_expires_at = 0 WHERE id = ?", (first.id,))
    with accord.App(app.name, store=store_url) as elsewhere:  # another process's claims
        second = _claim(elsewhere, "new", lease_ttl=30)
    assert second is not None and second.fence > first.fence
    with old, pytest.raises(accord.FencedError):
        lease.revoke()
    assert app.state.value("held") == 1 and lease.alive()


def test_writes_from_an_ended_task_are_refused(app: accord.App) -> None:
    app.store.submit(
        [NewTask(name="work", queue=app.name, args=serde.dumps([[], {}]))],
        run=NewRun(app=app.name, name="work"),
    )
    task = _claim(app, "n", lease_ttl=30)
    assert task is not None
    app.store.cancel_tasks([task.id], "stop")
    with Attempt(_context(app, task)), pytest.raises(accord.FencedError):
        app.state.put("late", 1)
    assert app.state.get("late") is None


def test_a_lease_cannot_end_while_a_fenced_write_commits(
    app: accord.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fence check holds until the write commits: the task cannot be
    cancelled (or re-leased) between the check and the commit."""
    app.store.submit(
        [NewTask(name="work", queue=app.name, args=serde.dumps([[], {}]))],
        run=NewRun(app=app.name, name="work"),
    )
    task = _claim(app, "n", lease_ttl=30)
    assert task is not None
    store = app.store
    inside, go = threading.Event(), threading.Event()
    check = store._check_fence  # type: ignore[attr-defined]

    def check_then_pause(c: Any, fence: Any, what: str) -> None:
        check(c, fence, what)
        if threading.current_thread().name == "attempt":
            inside.set()
            go.wait(10)

    monkeypatch.setattr(store, "_check_fence", check_then_pause)
    written: list[int] = []

    def write() -> None:
        with Attempt(_context(app, task)) as ctx:
            written.append(ctx.state.put("x", 1))

    writer = threading.Thread(target=write, name="attempt")
    writer.start()
    assert inside.wait(10)
    cancel = threading.Thread(target=lambda: store.cancel_tasks([task.id], "stop"))
    cancel.start()
    cancel.join(0.5)
    assert cancel.is_alive(), "the task was cancelled between its fence check and its write"
    go.set()
    writer.join(30)
    cancel.join(30)
    assert written == [1]
    with Attempt(_context(app, task)) as ctx, pytest.raises(accord.FencedError):
        ctx.state.put("y", 2)


def test_fences_only_apply_to_the_attempt_s_own_store(
    app: accord.App, zombie: tuple[Attempt, Attempt], tmp_path: Path
) -> None:
    old, _ = zombie
    with accord.App("elsewhere", store=f"sqlite:///{tmp_path}/other.db") as other, old:
        assert other.state.put("k", 1) == 1  # not this attempt's store: no fence to check


def test_tasks_write_their_run_state(store_url: str) -> None:
    """End to end: tasks on a node write their run's namespace and send messages."""
    from state_app import app as task_app
    from state_app import remember_all

    task_app.runtime.reopen(store_url)
    try:
        run = task_app.start(remember_all, 4)
        with task_app.embedded_node(mode="thread", slots=3):
            revisions = run.wait(timeout=60)
        assert len(set(revisions)) == 4
        values = {e.key: e.value for e in task_app.state.run(run.id).get_prefix("")}
        assert values == {f"k{i}": i for i in range(4)}
        done = task_app.mailbox("stapp-done").receive_many(10, timeout=1)
        assert sorted(m.payload["key"] for m in done) == ["k0", "k1", "k2", "k3"]
    finally:
        task_app.close()
