from __future__ import annotations

import accord
from apps import basic as b


def test_workflow_runs_on_embedded_node(basic: accord.App) -> None:
    assert basic.run(b.fan, 10) == sum(2 * i for i in range(10))


def test_thread_node(basic: accord.App) -> None:
    handle = b.add.submit(2, 3)
    with basic.embedded_node(mode="thread", slots=2):
        assert handle.result(timeout=10) == 5
