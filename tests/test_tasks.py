"""Tasks on real nodes: DAGs, dynamic children, slot lending, map, the task context."""

from __future__ import annotations

from pathlib import Path

import pytest

import accord
from accord import TaskState
from apps import flows as f

MODES = ["process", "thread"]
SQUARES_200 = sum(i * i for i in range(200))


def test_calling_a_task_runs_it_here(flows: accord.App) -> None:
    assert f.square(7) == 49
    assert f.add_all([1, 2, 3]) == 6
    assert accord.current() is None
    assert f.square.name == "square"
    assert "square" in repr(f.square) and "flows" in repr(f.square)


@pytest.mark.parametrize("mode", MODES)
def test_dag_of_200_leaves_20_groups_one_total(flows: accord.App, mode: str) -> None:
    run = flows.start(f.dag, 200, 20)
    with flows.embedded_node(mode=mode, slots=2):
        assert run.wait(timeout=90) == SQUARES_200
    tasks = run.tasks()
    names = [t.name for t in tasks]
    # the workflow, 200 leaves, 20 group sums and the total
    assert len(tasks) == 222
    assert names.count("square") == 200
    assert names.count("add_all") == 21
    assert all(t.state is TaskState.SUCCEEDED for t in tasks)
    root = tasks[0]
    assert root.name == "dag" and root.parent_id is None
    assert all(t.parent_id == root.id for t in tasks[1:])
    assert all(t.attempts == 1 for t in tasks)
    info = run.info()
    assert info.state == "succeeded"
    assert info.counts == {"succeeded": 222}
    assert info.root_task_id == root.id


def test_dag_built_by_the_client(flows: accord.App) -> None:
    """Fan-out and fan-in from outside any task: handles passed as arguments."""
    leaves = f.square.map(range(200))
    assert len(leaves) == 200
    groups = [f.add_all.submit(leaves[g * 10 : (g + 1) * 10]) for g in range(20)]
    total = f.add_all.submit(groups)
    assert total.status() is TaskState.PENDING
    assert groups[0].status() is TaskState.PENDING
    assert leaves[0].status() is TaskState.READY
    with flows.embedded_node(mode="thread", slots=4):
        assert total.result(timeout=60) == SQUARES_200
        assert [g.result(timeout=5) for g in groups] == [
            sum(i * i for i in range(g * 10, (g + 1) * 10)) for g in range(20)
        ]
    assert total.status() is TaskState.SUCCEEDED
    # a map forms one run without a root; its value is the list of results
    run = flows.get_run(leaves[0].info().run_id)
    assert {h.info().run_id for h in leaves} == {run.id}
    assert run.info().root_task_id is None
    assert run.wait(timeout=5) == [i * i for i in range(200)]


def test_map_takes_tuples_as_positional_arguments(flows: accord.App) -> None:
    handles = f.echo_kw.map([(1, 2), 3, ("a",)])
    with flows.embedded_node(mode="thread", slots=2):
        assert [h.result(timeout=30) for h in handles] == [
            {"args": [1, 2], "kwargs": {}},
            {"args": [3], "kwargs": {}},
            {"args": ["a"], "kwargs": {}},
        ]


@pytest.mark.parametrize("mode", MODES)
def test_dynamic_children_depend_on_earlier_results(flows: accord.App, mode: str) -> None:
    run = flows.start(f.dynamic, 3)
    with flows.embedded_node(mode=mode, slots=1):
        value = run.wait(timeout=60)
    count = 9 % 5 + 2  # decided by the first child's result
    assert value == 9 + sum(i * i for i in range(count))
    tasks = run.tasks()
    root = tasks[0]
    children = [t for t in tasks if t.parent_id == root.id]
    assert [t.name for t in children] == ["square"] * (1 + count) + ["add_all"]
    assert all(t.state is TaskState.SUCCEEDED for t in tasks)


@pytest.mark.parametrize("mode", MODES)
def test_reexecuted_parent_does_not_make_children_twice(
    flows: accord.App, mode: str, tmp_path: Path
) -> None:
    log = tmp_path / "children.log"
    parent = f.parent_fails_once.submit(6, str(log))
    with flows.embedded_node(mode=mode, slots=2):
        assert parent.result(timeout=60) == sum(i * i for i in range(6))
    info = parent.info()
    assert info.attempts == 2
    assert Path(str(log) + ".parent").read_text().split() == ["1", "2"]
    run = flows.get_run(info.run_id)
    children = [t for t in run.tasks() if t.parent_id == parent.id]
    assert len(children) == 6
    assert len(run.tasks()) == 7
    assert all(t.state is TaskState.SUCCEEDED and t.attempts == 1 for t in children)
    # each child ran exactly once: the second attempt found them and their results
    assert sorted(int(x) for x in log.read_text().split()) == list(range(6))
    retries = [e for e in flows.store.events(info.run_id) if e.kind == "retry"]
    assert len(retries) == 1 and "first attempt fails" in (retries[0].detail or "")


@pytest.mark.parametrize("mode", MODES)
def test_waiting_on_a_child_with_one_slot_does_not_deadlock(flows: accord.App, mode: str) -> None:
    outer = f.waits_on_child.submit(5)
    deep = f.waits_deep.submit(3)
    with flows.embedded_node(mode=mode, slots=1):
        assert outer.result(timeout=60) == 26
        assert deep.result(timeout=60) == 3
    run = flows.get_run(deep.info().run_id)
    assert [t.name for t in run.tasks()] == ["waits_deep"] * 4
    assert all(t.state is TaskState.SUCCEEDED for t in run.tasks())


def test_workflow_returning_a_value(flows: accord.App) -> None:
    with flows.embedded_node(mode="thread", slots=1):
        run = flows.start(f.plain_value, 4)
        assert run.wait(timeout=30) == {"x": 4, "twice": 32}
        assert run.result(timeout=1) == {"x": 4, "twice": 32}
    assert run.status() == "succeeded"


def test_app_run_starts_a_node_in_process(flows: accord.App) -> None:
    assert flows.live_nodes() == 0
    assert flows.run(f.dag, 20, 4) == sum(i * i for i in range(20))
    nodes = flows.store.nodes(include_stopped=True)
    assert len(nodes) == 1
    assert nodes[0].state == "stopped" and nodes[0].queue == "flows"
    assert flows.live_nodes() == 0


def test_task_context_inside_an_attempt(flows: accord.App) -> None:
    handle = f.context_info.submit()
    with flows.embedded_node(mode="process", slots=1) as node:
        info = handle.result(timeout=30)
        assert node is not None
        node_id = node.node_id
    import os

    assert info["task_id"] == handle.id
    assert info["run_id"] == handle.info().run_id
    assert info["name"] == "context_info"
    assert info["attempt"] == 1 and info["max_attempts"] == 1
    assert info["fence"] == handle.info().fence >= 1
    assert info["node_id"] == node_id
    assert info["pid"] != os.getpid()  # process mode: a slot process ran it
    assert handle.info().node_name is not None


def test_embedded_node_is_not_started_when_a_node_is_alive(flows: accord.App) -> None:
    with flows.embedded_node(mode="thread", slots=1) as first:
        assert first is not None
        assert flows.live_nodes() == 1
        with flows.embedded_node(mode="thread", slots=1) as second:
            assert second is None
            assert f.square.submit(3).result(timeout=30) == 9
    assert flows.live_nodes() == 0


def test_handle_api(flows: accord.App) -> None:
    handle = f.square.submit(4)
    assert isinstance(handle.id, int)
    assert handle.name == "square"
    assert str(handle.id) in repr(handle)
    assert handle.status() is TaskState.READY
    assert not handle.done()
    with pytest.raises(TimeoutError, match=f"task {handle.id} did not finish within 0.2 s"):
        handle.result(timeout=0.2)
    same = flows.handle(handle.id)
    with flows.embedded_node(mode="thread", slots=1):
        assert same.result(timeout=30) == 16
    assert handle.done() and handle.status() is TaskState.SUCCEEDED
    assert handle.cancel() is False  # it had already ended
    info = handle.info()
    assert info.finished_at is not None and info.started_at is not None
    assert info.created_at <= info.started_at <= info.finished_at


def test_delay_holds_a_task_back(flows: accord.App) -> None:
    delayed = f.square.with_options(delay=0.5).submit(3)
    with flows.embedded_node(mode="thread", slots=1):
        assert f.square.submit(2).result(timeout=30) == 4
        assert delayed.result(timeout=30) == 9
    info = delayed.info()
    assert info.started_at is not None
    assert info.started_at - info.created_at >= 0.5


def test_large_dag_in_process_mode(flows: accord.App) -> None:
    """The DAG test at 10x the size: leaves finish while their parent is
    still submitting the tasks that wait on them (on PostgreSQL, in other
    transactions at the same time)."""
    run = flows.start(f.dag, 2000, 40)
    with flows.embedded_node(mode="process", slots=2):
        assert run.wait(timeout=300) == sum(i * i for i in range(2000))
    assert run.info().counts == {"succeeded": 1 + 2000 + 40 + 1}
