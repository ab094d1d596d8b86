"""Tasks of tests/test_children.py: parents that submit child tasks, with
idempotency keys, and parents that keep computing after they fan out.

Tasks that must be observed from outside write files in a directory the test
names (the same in thread and process mode).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import accord

app = accord.App("kids")

# A parent that waits for its test gives up after this long (a failing test
# then fails, instead of hanging).
PATIENCE = 60.0


@app.task
def square(i: int) -> int:
    return i * i


@app.task
def add_all(values: list[int]) -> int:
    return sum(values)


@app.task
def keyed_children(calls: list[list[Any]]) -> list[int]:
    """Submit one ``square(i)`` child per ``[key, i]``, one after the other
    (they go to the store together), and return the children's task ids."""
    handles = [square.with_options(idempotency_key=key).submit(i) for key, i in calls]
    return [h.id for h in handles]


@app.task
def keyed_chain(key: str) -> list[int]:
    """A child, and a keyed child that depends on it: ``[first id, keyed id]``."""
    first = square.submit(3)
    keyed = add_all.with_options(idempotency_key=key).submit([first, 1])
    return [first.id, keyed.id]


@app.task
def mark(folder: str, i: int) -> int:
    """Record that child ``i`` started (the file is its start event)."""
    (Path(folder) / f"child-{i}").write_text(str(time.time()))
    return i


@app.task(requires=["parents"])
def fan_out_then_compute(folder: str, n: int) -> int:
    """Submit ``n`` children, then compute (wait for the test's ``release``
    file) without touching them: no result(), no further submit."""
    for i in range(n):
        mark.submit(folder, i)
    release = Path(folder) / "release"
    deadline = time.monotonic() + PATIENCE
    while not release.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never released the parent")
        time.sleep(0.01)
    return n


@app.task(requires=["parents"])
def fan_out_then_fail(folder: str, n: int) -> None:
    """Submit ``n`` children in a loop, then fail at once: nothing forces a write."""
    for i in range(n):
        mark.submit(folder, i)
    raise RuntimeError("the parent fails right after submitting its children")
