"""An app whose tasks use the state store and messaging (store set by the test)."""

from __future__ import annotations

import accord

app = accord.App("stapp")


@app.task
def remember(key: str, value: int) -> int:
    """Write to the run's namespace and report on a mailbox, from inside a task."""
    ctx = accord.current()
    assert ctx is not None
    revision = ctx.state.put(key, value)
    app.mailbox("stapp-done").send({"key": key, "task": ctx.task_id}, id=f"done-{ctx.task_id}")
    return revision


@app.workflow
def remember_all(n: int) -> list[int]:
    handles = [remember.submit(f"k{i}", i) for i in range(n)]
    return [h.result() for h in handles]
