"""Tasks and workflows of the functional tests (tests/test_*.py).

The store comes from the test (``conftest.bind``) in the test process and
from the node in slot processes, so every task here runs the same in thread
and process mode. Tasks that must be observed from outside (how often they
ran, which process ran them) write to a file the test names.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import accord

app = accord.App("flows")


def _ctx() -> accord.TaskContext:
    ctx = accord.current()
    assert ctx is not None, "flows tasks run on a node"
    return ctx


@app.task
def square(i: int) -> int:
    return i * i


@app.task
def add_all(values: list[int]) -> int:
    return sum(values)


@app.task
def echo(value: Any) -> Any:
    return value


@app.task
def echo_kw(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


@app.task
def describe_array(array: Any) -> dict[str, Any]:
    """What a slot sees of a numpy argument, and the array doubled."""
    return {
        "dtype": array.dtype.str,
        "shape": list(array.shape),
        "type": type(array).__name__,
        "doubled": array * 2,
    }


@app.workflow
def dag(leaves: int, groups: int) -> accord.Handle[int]:
    """``leaves`` squares summed in ``groups`` groups, then the groups summed."""
    squares = [square.submit(i) for i in range(leaves)]
    size = leaves // groups
    sums = [add_all.submit(squares[g * size : (g + 1) * size]) for g in range(groups)]
    return add_all.submit(sums)


@app.workflow
def dynamic(seed: int) -> accord.Handle[int]:
    """How many children it makes depends on a result it waits for."""
    first = square.submit(seed)
    count = first.result(timeout=60) % 5 + 2
    kids = [square.submit(i) for i in range(count)]
    return add_all.submit([first, *kids])


@app.task
def logged_square(i: int, log_path: str) -> int:
    """A square that appends ``i`` to ``log_path`` each time it runs."""
    with open(log_path, "a") as log:
        log.write(f"{i}\n")
    return i * i


@app.task(retries=1, backoff=0.05, max_backoff=0.05)
def parent_fails_once(n: int, log_path: str) -> int:
    """Submits ``n`` children and waits for them; the first attempt then fails."""
    ctx = _ctx()
    with open(log_path + ".parent", "a") as log:
        log.write(f"{ctx.attempt}\n")
    kids = [logged_square.submit(i, log_path) for i in range(n)]
    values = [kid.result(timeout=60) for kid in kids]
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails after its children were written")
    return sum(values)


@app.task
def waits_on_child(x: int) -> int:
    """Blocks on a child's result: on a 1-slot node the slot must be lent."""
    return square.submit(x).result(timeout=60) + 1


@app.task
def waits_deep(depth: int) -> int:
    """A chain of ``depth`` tasks, each waiting on the next."""
    if depth == 0:
        return 0
    return waits_deep.submit(depth - 1).result(timeout=60) + 1


@app.task(retries=2, backoff=0.2, max_backoff=0.2)
def fails_until(succeed_on: int) -> int:
    ctx = _ctx()
    if ctx.attempt < succeed_on:
        raise RuntimeError(f"attempt {ctx.attempt} of {ctx.max_attempts} fails")
    return ctx.attempt


@app.task(retries=3, backoff=30.0, max_backoff=30.0)
def asks_retry(times: int, delay: float) -> int:
    """Raises accord.Retry ``times`` times (its delay, not the 30 s backoff, applies)."""
    ctx = _ctx()
    if ctx.attempt <= times:
        raise accord.Retry(f"not ready at attempt {ctx.attempt}", delay=delay)
    return ctx.attempt


@app.task(timeout=0.5)
def hangs(pid_path: str, seconds: float) -> float:
    Path(pid_path).write_text(str(os.getpid()))
    time.sleep(seconds)
    return seconds


@app.task
def sleeper(pid_path: str, seconds: float) -> float:
    """Writes its process id (and thread id) to ``pid_path``, then sleeps."""
    if pid_path:
        Path(pid_path).write_text(str(os.getpid()))
    time.sleep(seconds)
    return seconds


@app.task(retries=2)
def bad_result(kind: str) -> Any:
    if kind == "object":
        return object()
    if kind == "cycle":
        cycle: dict[str, Any] = {}
        cycle["self"] = cycle
        return cycle
    if kind == "bigint":
        return 2**70
    return kind


@app.task
def fail(message: str) -> None:
    raise ValueError(message)


@app.task
def context_info() -> dict[str, Any]:
    ctx = _ctx()
    return {
        "task_id": ctx.task_id,
        "run_id": ctx.run_id,
        "name": ctx.name,
        "attempt": ctx.attempt,
        "max_attempts": ctx.max_attempts,
        "fence": ctx.fence,
        "node_id": ctx.node_id,
        "pid": os.getpid(),
    }


@app.workflow
def slow_children(n: int, seconds: float) -> accord.Handle[int]:
    kids = [sleeper.submit("", seconds) for _ in range(n)]
    return add_all.submit(kids)


@app.workflow
def failing_workflow(message: str) -> accord.Handle[int]:
    bad = fail.submit(message)
    return add_all.submit([bad, square.submit(2)])


@app.workflow
def plain_value(x: int) -> dict[str, Any]:
    """A workflow that returns a value, not a handle."""
    return {"x": x, "twice": square.submit(x).result(timeout=60) * 2}


@app.workflow
def nested(leaves: int) -> accord.Handle[int]:
    """Returns the handle of a child workflow, which returns a handle in turn."""
    return dag.submit(leaves, 2)


@app.workflow
def sum_of(values: list[int], offset: int = 0) -> int:
    """A workflow whose arguments may be other runs' results."""
    return sum(values) + offset


@app.task(retries=2)
def big(size: int) -> bytes:
    return b"x" * size


@app.task
def raises_base(kind: str) -> None:
    """Raises what ``except Exception`` does not catch."""
    if kind == "exit":
        raise SystemExit(3)
    raise KeyboardInterrupt


# -- results that hold handles (tests/test_workflow_structures.py) ---------------


@app.workflow
def returns_structure(x: int) -> dict[str, Any]:
    """Handles nested in a dict and a list, beside a plain value."""
    return {"a": square.submit(x), "b": [square.submit(x + 1), 3]}


@app.workflow
def returns_handles(n: int) -> list[Any]:
    return [square.submit(i) for i in range(n)]


@app.workflow
def returns_deep(depth: int) -> Any:
    """Handles ``depth`` levels down, in dicts, lists and tuples, one of them a
    child workflow's whose own result holds handles."""
    value: Any = {"child": returns_structure.submit(depth)}
    for level in range(depth):
        value = {"level": level, "inner": [value, (square.submit(level), level)]}
    return value


@app.workflow
def returns_failing(message: str, later: float) -> dict[str, Any]:
    """One handle fails; another task is only due ``later`` seconds on."""
    return {
        "bad": fail.submit(message),
        "ok": square.submit(2),
        "later": [square.with_options(delay=later).submit(3)],
    }


@app.workflow(retries=1)
def returns_logged(n: int, log_path: str) -> dict[str, Any]:
    """A dict of ``n`` logged squares; appends its attempt to ``log_path + '.parent'``."""
    with open(log_path + ".parent", "a") as log:
        log.write(f"{_ctx().attempt}\n")
    return {"squares": [logged_square.submit(i, log_path) for i in range(n)]}


@app.workflow
def returns_plain(n: int) -> dict[str, Any]:
    """A plain result (no handles): a list of ``n`` ints."""
    return {"values": list(range(n))}


@app.workflow
def returns_bad_handle(kind: str, url: str) -> Any:
    """A result holding a handle no gather can wait for, or something else
    that cannot be serialised beside a handle."""
    if kind == "key":
        return {square.submit(2): 1}
    if kind == "foreign":
        other = accord.App("elsewhere", store=url)
        other.close()
        return {"mine": square.submit(2), "theirs": accord.Handle(other, 1, "far")}
    return {"mine": square.submit(2), "other": object()}
