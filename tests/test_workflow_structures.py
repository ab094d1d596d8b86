"""Results that hold handles nested in lists and dicts, on real nodes; and what
a node logs of a running task that was cancelled."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import pytest

import accord
from accord import TaskState
from accord.store.records import NewRun, NewTask, Outcome
from accord.tasks.gather import GATHER
from accord.worker.execute import execute
from apps import flows as f
from support.common import wait_for

MODES = ["process", "thread"]


def _gathers(run: accord.Run) -> list[accord.TaskInfo]:
    return [t for t in run.tasks() if t.name == GATHER]


@pytest.mark.parametrize("mode", MODES)
def test_dict_and_list_of_handles_give_their_results(flows: accord.App, mode: str) -> None:
    run = flows.start(f.returns_structure, 5)
    with flows.embedded_node(mode=mode, slots=2):
        assert run.wait(timeout=60) == {"a": 25, "b": [36, 3]}
    tasks = run.tasks()
    root = tasks[0]
    (gather,) = _gathers(run)
    assert root.forward_to == gather.id
    assert gather.parent_id == root.id
    assert all(t.state is TaskState.SUCCEEDED for t in tasks)
    assert sorted(t.name for t in tasks) == sorted(
        ["returns_structure", "square", "square", GATHER]
    )
    assert run.info().state == "succeeded"


def test_a_list_of_handles(flows: accord.App) -> None:
    with flows.embedded_node(mode="thread", slots=2):
        assert flows.start(f.returns_handles, 6).wait(timeout=60) == [i * i for i in range(6)]
        # no handle at all: an empty list is a plain value
        run = flows.start(f.returns_handles, 0)
        assert run.wait(timeout=60) == []
        assert _gathers(run) == []


def _expected_deep(depth: int) -> Any:
    value: Any = {"child": {"a": depth * depth, "b": [(depth + 1) ** 2, 3]}}
    for level in range(depth):
        value = {"level": level, "inner": [value, [level * level, level]]}  # tuples: lists
    return value


def test_deeply_nested_handles_and_a_child_workflow(flows: accord.App) -> None:
    run = flows.start(f.returns_deep, 6)
    with flows.embedded_node(mode="thread", slots=2):
        assert run.wait(timeout=60) == _expected_deep(6)
    # one gather for the run's root, one for the child workflow's dict
    assert len(_gathers(run)) == 2
    assert all(t.state is TaskState.SUCCEEDED for t in run.tasks())


def test_a_failing_handle_ends_the_run_and_stops_the_rest(flows: accord.App) -> None:
    run = flows.start(f.returns_failing, "boom", 30.0)
    # what a workflow returning the handle of a task that depends on a failed
    # one does: the run must end the same way
    same = flows.start(f.failing_workflow, "boom")
    with flows.embedded_node(mode="thread", slots=2):
        with pytest.raises(accord.TaskError) as caught:
            run.wait(timeout=20)  # well before the delayed task is due
        with pytest.raises(accord.TaskError) as expected:
            same.wait(timeout=20)
    tasks = run.tasks()
    (bad,) = [t for t in tasks if t.name == "fail"]
    (gather,) = _gathers(run)
    assert type(caught.value) is type(expected.value)
    assert run.info().state == same.info().state
    assert run.info().state in ("failed", "cancelled")
    # the run's end names the failed task, which holds its error
    assert f"dependency task {bad.id} (fail) failed" in str(caught.value)
    assert f"dependency task {bad.id} (fail) failed" in (run.info().error or "")
    assert bad.state is TaskState.FAILED
    with pytest.raises(accord.TaskFailed, match="ValueError: boom"):
        flows.handle(bad.id).result(timeout=5)
    assert gather.state is TaskState.CANCELLED and gather.started_at is None
    # the task due later (submitted last) never ran: the run's end cancelled it
    later = [t for t in tasks if t.name == "square"][-1]
    assert later.state is TaskState.CANCELLED and later.started_at is None
    assert f"run {run.id} " in (later.error or "")
    assert all(t.state.terminal for t in tasks)


def test_a_reexecuted_workflow_does_not_make_its_gather_twice(
    flows: accord.App, tmp_path: Path
) -> None:
    """The workflow's first attempt writes its children and the gather, then
    its node dies before the outcome is recorded; another node runs it again."""
    log = tmp_path / "children.log"
    run = flows.start(f.returns_logged, 4, str(log))
    store = flows.store
    doomed = store.register_node(
        name="doomed",
        host=socket.gethostname(),
        pid=os.getpid(),
        queue="flows",
        slots=1,
        mode="thread",
        capabilities=[],
        lease_ttl=0.5,
    )
    _, (claimed,) = store.exchange(doomed, [], queue="flows", claim=1, lease_ttl=0.5)
    assert claimed.id == run.info().root_task_id
    first = execute(flows.runtime, claimed, node_id=doomed)
    assert first.outcome is Outcome.FORWARD
    (made,) = _gathers(run)
    assert first.forward_to == made.id
    # ...and the node is gone: its outcome is never recorded, its lease runs
    # out, and another node runs the workflow again
    other = accord.Node(flows, mode="thread", slots=2)
    other.start()
    try:
        assert run.wait(timeout=60) == {"squares": [i * i for i in range(4)]}
    finally:
        other.stop()
        other.join()
    assert Path(str(log) + ".parent").read_text().split() == ["1", "1"]  # a lost lease
    root = store.task(claimed.id)
    (gather,) = _gathers(run)
    assert gather.id == made.id == root.forward_to
    children = [t for t in run.tasks() if t.parent_id == root.id]
    assert sorted(t.name for t in children) == sorted(["logged_square"] * 4 + [GATHER])
    assert all(t.state is TaskState.SUCCEEDED and t.attempts == 1 for t in children)
    assert sorted(int(x) for x in log.read_text().split()) == list(range(4))


def test_a_plain_result_makes_no_gather(flows: accord.App) -> None:
    with flows.embedded_node(mode="thread", slots=1):
        run = flows.start(f.returns_plain, 100_000)
        assert run.wait(timeout=60) == {"values": list(range(100_000))}
        assert flows.run(f.plain_value, 3) == {"x": 3, "twice": 18}
    assert _gathers(run) == []


@pytest.mark.parametrize(
    ("kind", "error_type", "message"),
    [
        ("key", "BadHandle", "has the handle of task square as a key"),
        ("foreign", "BadHandle", "names a task in another store"),
        ("object", "TypeError", "values of type object cannot be serialised"),
    ],
)
def test_a_result_no_gather_can_take_fails_at_once(
    flows: accord.App, tmp_path: Path, kind: str, error_type: str, message: str
) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    run = flows.start(f.returns_bad_handle, kind, url)
    with flows.embedded_node(mode="thread", slots=1):
        with pytest.raises(accord.TaskFailed, match=message) as caught:
            run.wait(timeout=30)
    assert caught.value.error_type == error_type
    assert "the result of returns_bad_handle() cannot be" in str(caught.value)
    assert _gathers(run) == []
    assert run.tasks()[0].attempts == 1  # not retried: another attempt returns the same


def test_a_cancelled_running_task_is_logged_as_cancelled(
    flows: accord.App, caplog: pytest.LogCaptureFixture
) -> None:
    running = f.sleeper.submit("", 3.0)
    with caplog.at_level(logging.INFO, logger="accord.node"):
        with flows.embedded_node(mode="thread", slots=1, lease_ttl=1.5, grace=0):
            wait_for(lambda: running.status() is TaskState.RUNNING, 20, "the task starting")
            assert running.cancel("no longer wanted") is True
            wait_for(
                lambda: any(f"task {running.id}:" in r.getMessage() for r in caplog.records),
                10,
                "the node noticing",
            )
    lines = [r.getMessage() for r in caplog.records if f"task {running.id}" in r.getMessage()]
    assert all(
        r.levelno == logging.INFO for r in caplog.records if f"task {running.id}:" in r.getMessage()
    )
    assert lines == [f"task {running.id}: cancelled (no longer wanted); stopping it"]
    assert not any("lease" in line for line in lines)


def test_a_task_taken_over_is_said_to_have_lost_its_lease(flows: accord.App) -> None:
    store = flows.store
    _, (task_id,) = store.submit(
        [NewTask(name="square", queue="flows", args=b"")], run=NewRun(app="flows", name="x")
    )

    def node(name: str) -> int:
        return store.register_node(
            name=name, host="h", pid=1, queue="flows", slots=1, mode="thread", capabilities=[]
        )

    first, second = node("first"), node("second")
    store.exchange(first, [], queue="flows", claim=1, lease_ttl=0.05)
    wait_for(
        lambda: store.exchange(second, [], queue="flows", claim=1, lease_ttl=30)[1],
        10,
        "the lease running out and the task taken over",
    )
    why = accord.Node(flows, slots=1, mode="thread")._why_lost([task_id])
    assert why == {task_id: "lease lost (lease taken over by another attempt, or expired)"}
