"""Tasks used by the benchmarks (importable by node processes)."""

from __future__ import annotations

import accord

app = accord.App("bench")


@app.task
def noop() -> None:
    return None


@app.task
def one(i: int) -> int:
    return i


@app.task
def gather(values: list[int]) -> int:
    return sum(values)


@app.workflow
def fan(width: int) -> accord.Handle[int]:
    return gather.submit([one.submit(i) for i in range(width)])


@app.task
def work(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds
