"""Serialisation through real tasks: numpy arguments and results through a
node, and task handles inside arguments as dependencies. The values
themselves are tested in tests/unit/test_serde.py."""

from __future__ import annotations

import numpy as np
import pytest

import accord
from accord import TaskState
from apps import flows as f
from support.common import sql


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_numpy_arguments_and_results_through_a_node(flows: accord.App, mode: str) -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4).T
    handle = f.describe_array.submit(array)
    with flows.embedded_node(mode=mode, slots=1):
        seen = handle.result(timeout=30)
    assert seen["type"] == "ndarray"
    assert seen["dtype"] == "<f4" and seen["shape"] == [4, 3]
    assert seen["doubled"].dtype == np.float32 and seen["doubled"].shape == (4, 3)
    assert np.array_equal(seen["doubled"], array * 2)


def _n_deps(store_url: str, task_id: int) -> int:
    return int(sql(store_url, "SELECT n_deps FROM tasks WHERE id = ?", (task_id,))[0][0])


def test_handles_nested_in_arguments_are_dependencies(flows: accord.App, store_url: str) -> None:
    a, b, c = f.square.submit(2), f.square.submit(3), f.square.submit(4)
    nested = f.echo.submit({"a": a, "more": [b, {"c": c, "again": a}], "pair": (a, 5), "n": 1})
    keyword = f.echo_kw.submit(a, [b], key={"deep": [[c]]})
    assert nested.status() is TaskState.PENDING
    assert _n_deps(store_url, nested.id) == 3  # a counted once although passed three times
    assert _n_deps(store_url, keyword.id) == 3
    with flows.embedded_node(mode="thread", slots=2):
        assert nested.result(timeout=30) == {
            "a": 4,
            "more": [9, {"c": 16, "again": 4}],
            "pair": [4, 5],
            "n": 1,
        }
        assert keyword.result(timeout=30) == {"args": [4, [9]], "kwargs": {"key": {"deep": [[16]]}}}


def test_handles_inside_a_workflow_are_dependencies(flows: accord.App) -> None:
    """dag passes lists of child handles to its children (see test_tasks too)."""
    assert flows.run(f.dag, 6, 3) == sum(i * i for i in range(6))
