"""Workflows and runs: start, wait, values, forwarding, listing, durability."""

from __future__ import annotations

import pytest

import accord
from accord import TaskState
from apps import flows as f


def test_start_is_durable_before_any_node_runs(flows: accord.App, store_url: str) -> None:
    run = flows.start(f.dag, 40, 4)
    info = run.info()
    assert info.state == "running"
    assert info.name == "dag" and info.app == "flows"
    assert info.counts == {"ready": 1}
    assert run.status() == "running"
    assert str(run.id) in repr(run)
    # another App object on the same store sees the run and can wait for it
    other = accord.App("flows", store=store_url)
    try:
        again = other.get_run(run.id)
        with pytest.raises(TimeoutError, match=f"run {run.id} did not finish within 0.2 s"):
            again.wait(timeout=0.2)
        with flows.embedded_node(mode="thread", slots=2):
            assert again.wait(timeout=60) == sum(i * i for i in range(40))
    finally:
        other.close()


def test_keyword_arguments_and_defaults(flows: accord.App) -> None:
    with flows.embedded_node(mode="thread", slots=2):
        assert flows.start(f.dag, leaves=30, groups=3).wait(timeout=60) == sum(
            i * i for i in range(30)
        )
        assert flows.start(f.sum_of, [1, 2, 3]).wait(timeout=30) == 6
        assert flows.start(f.sum_of, [1, 2, 3], offset=10).wait(timeout=30) == 16


def test_nested_workflows_forward_their_values(flows: accord.App) -> None:
    run = flows.start(f.nested, 10)
    with flows.embedded_node(mode="process", slots=2):
        assert run.wait(timeout=60) == sum(i * i for i in range(10))
    tasks = run.tasks()
    root, child = tasks[0], tasks[1]
    assert (root.name, child.name) == ("nested", "dag")
    assert child.parent_id == root.id
    assert root.forward_to == child.id
    assert child.forward_to is not None
    assert all(t.state is TaskState.SUCCEEDED for t in tasks)
    assert len(tasks) == 2 + 10 + 2 + 1


def test_workflow_arguments_may_be_handles(flows: accord.App) -> None:
    """A run started with another task's handle waits for it and gets its value."""
    first = f.square.submit(5)
    run = flows.start(f.sum_of, [first, first, 1])
    assert run.info().counts == {"pending": 1}
    with flows.embedded_node(mode="thread", slots=1):
        assert run.wait(timeout=30) == 51


def test_task_started_as_a_run(flows: accord.App) -> None:
    """app.start takes a plain task as well."""
    with flows.embedded_node(mode="thread", slots=1):
        assert flows.start(f.square, 12).wait(timeout=30) == 144


def test_app_run_returns_the_value_and_raises_the_failure(flows: accord.App) -> None:
    assert flows.run(f.plain_value, 3) == {"x": 3, "twice": 18}
    with pytest.raises(accord.TaskCancelled, match="dependency task"):
        flows.run(f.failing_workflow, "bad")
    runs = flows.store.runs(limit=10)
    assert [(r.name, r.state) for r in runs] == [
        ("failing_workflow", "failed"),  # cancelled through a failure
        ("plain_value", "succeeded"),
    ]


def test_runs_listing_newest_first_with_counts(flows: accord.App) -> None:
    started = [flows.start(f.dag, 4, 2) for _ in range(3)]
    f.square.map([1, 2, 3])
    listed = flows.store.runs(limit=10)
    assert len(listed) == 4
    assert listed[0].name == "square" and listed[0].root_task_id is None
    assert [r.id for r in listed[1:]] == [r.id for r in reversed(started)]
    assert listed[0].counts == {"ready": 3}
    assert len(flows.store.runs(limit=2)) == 2
    with flows.embedded_node(mode="thread", slots=2):
        for run in started:
            run.wait(timeout=30)
    done = flows.store.run(started[0].id)
    assert done.state == "succeeded"
    assert done.finished_at is not None and done.finished_at >= done.created_at
    assert done.counts == {"succeeded": 1 + 4 + 2 + 1}


def test_run_without_root_fails_if_a_task_fails(flows: accord.App) -> None:
    handles = f.fail.map(["a"])
    ok = f.square.map([1, 2])
    with flows.embedded_node(mode="thread", slots=1):
        with pytest.raises(accord.TaskFailed):
            handles[0].result(timeout=30)
        assert flows.get_run(ok[0].info().run_id).wait(timeout=30) == [1, 4]
    failed = flows.get_run(handles[0].info().run_id)
    assert failed.info().state == "failed"
    assert failed.info().error == "1 task(s) failed"


def test_failed_root_cancels_what_the_workflow_started(flows: accord.App) -> None:
    run = flows.start(f.failing_workflow, "stop here")
    with flows.embedded_node(mode="thread", slots=2):
        with pytest.raises(accord.TaskError):
            run.wait(timeout=30)
    states = {t.name: t.state for t in run.tasks()}
    assert states["fail"] is TaskState.FAILED
    # the square may have finished before the failure; nothing stays open
    assert all(t.state.terminal for t in run.tasks())


def test_get_run_of_an_unknown_id(flows: accord.App) -> None:
    with pytest.raises(accord.NotFoundError, match="run 12345 does not exist"):
        flows.get_run(12345)
    with pytest.raises(accord.NotFoundError, match="task 777 does not exist"):
        flows.handle(777)
