"""Hooks (accord.hooks): what the node and the store tell plugins, on both
backends, and that a failing hook never stops either."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import accord
from accord import serde
from accord.hooks import Hook, NodeEvent, RefusedWrite, RunEvent, TaskEvent
from accord.store.records import Completion, Outcome
from apps import hooked as h
from support.common import bind

MODES = ["process", "thread"]


@pytest.fixture
def app(store_url: str) -> Iterator[accord.App]:
    h.recorder.seen.clear()
    yield bind(h.app, store_url)
    h.app.close()


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


@pytest.mark.parametrize("mode", MODES)
def test_a_task_is_told_from_claim_to_success(app: accord.App, mode: str) -> None:
    handle = h.add.submit(2, 3)
    with app.embedded_node(mode=mode, slots=1) as node:
        assert handle.result(timeout=30) == 5
    assert h.recorder.of(handle.id) == ["task_claimed", "task_started", "task_succeeded"]
    told = {m: e for m, e in h.recorder.seen if getattr(e, "task_id", None) == handle.id}
    for event in told.values():
        assert isinstance(event, TaskEvent)
        assert (event.name, event.queue, event.run_id) == ("add", "hooked", handle.info().run_id)
        assert event.node_id == node.node_id and event.attempt == 1
        # the options the hook declares reach it with the task's value
        assert event.options == {"alert": "page"}
    assert told["task_succeeded"].duration is not None
    assert told["task_claimed"].at <= told["task_started"].at <= told["task_succeeded"].at


def test_retries_then_failure_then_the_run_ends(app: accord.App) -> None:
    run = app.start(h.always_fails)
    with app.embedded_node(mode="thread", slots=1):
        with pytest.raises(accord.TaskFailed):
            run.result(timeout=30)
        _wait_for(lambda: bool(h.recorder.events("run_ended")), 10, "the run's end told")
    task_id = run.info().root_task_id
    told = h.recorder.of(task_id)
    assert told == [
        "task_claimed",
        "task_started",
        "task_retried",
        "task_claimed",
        "task_started",
        "task_failed",
    ]
    retried, failed = h.recorder.events("task_retried")[0], h.recorder.events("task_failed")[0]
    assert retried.attempt == 1 and failed.attempt == 2
    assert failed.error_type == "RuntimeError" and "always fails" in (failed.error or "")
    (ended,) = h.recorder.events("run_ended")
    assert ended == RunEvent(run.id, "failed", ended.at, ended.error)
    assert "always fails" in (ended.error or "")


def test_a_forwarding_workflow_succeeds_with_its_child(app: accord.App) -> None:
    run = app.start(h.forwards, 4)
    with app.embedded_node(mode="thread", slots=1):
        assert run.result(timeout=30) == 8
        _wait_for(lambda: bool(h.recorder.events("run_ended")), 10, "the run's end told")
    names = [e.name for e in h.recorder.events("task_succeeded")]
    assert sorted(names) == ["add", "forwards"]
    assert [(e.run_id, e.state) for e in h.recorder.events("run_ended")] == [(run.id, "succeeded")]


def test_a_cancelled_run_is_told_where_it_is_cancelled(app: accord.App) -> None:
    run = app.start(h.forwards, 1)
    run.cancel()
    (ended,) = h.recorder.events("run_ended")
    assert (ended.run_id, ended.state) == (run.id, "cancelled")


def _node(app: accord.App, name: str, lease_ttl: float) -> int:
    return app.store.register_node(
        name=name,
        host="test",
        pid=1,
        queue=app.name,
        slots=1,
        mode="thread",
        capabilities=[],
        lease_ttl=lease_ttl,
    )


def test_a_lost_lease_a_lost_node_and_a_refused_result(app: accord.App) -> None:
    store = app.store
    h.add.submit(1, 2)
    dying = _node(app, "dying", lease_ttl=0.2)
    _, (old,) = store.exchange(dying, [], queue=app.name, claim=1, lease_ttl=0.2)
    time.sleep(1.3)  # past the lease, and past the sweep for lost nodes
    other = _node(app, "other", lease_ttl=30)
    _, (new,) = store.exchange(other, [], queue=app.name, claim=1, lease_ttl=30)
    assert new.id == old.id and new.fence != old.fence
    (lost,) = h.recorder.events("lease_lost")
    assert (lost.task_id, lost.node_id, lost.error_type) == (old.id, dying, "LeaseExpired")
    (gone,) = h.recorder.events("node_lost")
    assert isinstance(gone, NodeEvent) and (gone.node_id, gone.name) == (dying, "dying")
    # The dead node's late result is refused, and said so.
    stale = Completion(old.id, old.fence, Outcome.OK, result=serde.dumps(3))
    accepted, _ = store.exchange(dying, [stale], queue=app.name, claim=0, lease_ttl=0.2)
    assert accepted == [False]
    (refused,) = h.recorder.events("write_refused")
    assert isinstance(refused, RefusedWrite)
    assert (refused.task_id, refused.fence) == (old.id, old.fence)
    assert "result" in refused.what


def test_a_state_write_with_a_stale_fence_is_told_refused(app: accord.App) -> None:
    store = app.store
    h.add.submit(1, 2)
    node = _node(app, "n", lease_ttl=30)
    _, (task,) = store.exchange(node, [], queue=app.name, claim=1, lease_ttl=30)
    with pytest.raises(accord.FencedError):
        store.kv_txn([], [("put", "hooked/k", b"v", None)], [], fence=(task.id, task.fence + 1))
    (refused,) = h.recorder.events("write_refused")
    assert (refused.task_id, refused.fence) == (task.id, task.fence + 1)
    assert app.state.get("k") is None


class Broken(Hook):
    def task_claimed(self, event: TaskEvent) -> None:
        raise RuntimeError("a broken plugin")

    def task_succeeded(self, event: TaskEvent) -> None:
        raise RuntimeError("a broken plugin")


def test_a_failing_hook_is_logged_and_never_fatal(
    app: accord.App, caplog: pytest.LogCaptureFixture
) -> None:
    broken = app.hooks.add(Broken())
    try:
        with caplog.at_level(logging.WARNING, logger="accord.hooks"):
            handles = [h.add.submit(i, i) for i in range(3)]
            with app.embedded_node(mode="thread", slots=1):
                assert [x.result(timeout=30) for x in handles] == [0, 2, 4]
    finally:
        app.hooks.remove(broken)
    assert app.hooks.failures >= 6
    # the other hook heard everything all the same
    assert len(h.recorder.events("task_succeeded")) == 3
    logged = [r for r in caplog.records if "a broken plugin" in (r.exc_text or "")]
    # once per method with its traceback; the rest are summed up later
    assert len(logged) == 2


def test_task_options_a_hook_declares(app: accord.App) -> None:
    assert h.add.options.hooked == {"alert": "page"}
    with pytest.raises(accord.ConfigError, match="alert must be 'page' or 'ticket'"):
        app.task(name="bad_alert", alert="pager")(_noop)
    with pytest.raises(accord.ConfigError, match=r"unknown task option\(s\) \['colour'\].*alert"):
        app.task(name="bad_colour", colour="red")(_noop)
    with pytest.raises(accord.ConfigError, match="declared by a hook"):
        h.add.with_options(alert="ticket")
    assert "bad_alert" not in app.tasks and "bad_colour" not in app.tasks


def _noop() -> None:
    return None


def test_an_app_without_hooks_refuses_their_options(store_url: str) -> None:
    bare = accord.App("bare", store_url)
    with pytest.raises(accord.ConfigError, match=r"unknown task option\(s\) \['alert'\]"):
        bare.task(name="x", alert="page")(_noop)
    bare.close()


def test_hooks_of_apps_sharing_one_store_each_hear_it(store_url: str) -> None:
    class Runs(Hook):
        def __init__(self) -> None:
            self.ended: list[int] = []

        def run_ended(self, event: RunEvent) -> None:
            self.ended.append(event.run_id)

    first, second = Runs(), Runs()
    store = accord.App("one", store_url).store
    one = accord.App("one", store, hooks=[first])
    accord.App("two", store, hooks=[second])

    @one.workflow(name="nothing")
    def nothing() -> int:
        return 1

    run = one.start(nothing)
    run.cancel()
    assert first.ended == [run.id] and second.ended == [run.id]
    store.close()


def _unused(*_: Any) -> None:
    return None
