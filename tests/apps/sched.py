"""The app of the scheduling tests (tests/scheduling).

Its store comes from the test: ``conftest.bind`` in the test process,
``ACCORD_STORE`` in worker processes. Tasks that get a ``folder`` append a
``start`` line before they sleep and an ``end`` line after, one JSON object
per line, to a file of their own process and thread in that folder; the
tests pair them to measure overlap and start rates.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import accord

app = accord.App("sched")


def record(folder: str | None, event: str, key: Any) -> None:
    """Append one line about the running attempt to this process's file."""
    if not folder:
        return
    ctx = accord.current()
    entry = {
        "ev": event,
        "key": key,
        "task_id": ctx.task_id if ctx else None,
        "node_id": ctx.node_id if ctx else None,
        "pid": os.getpid(),
        "wall": time.time(),
        "mono": time.monotonic(),
    }
    path = Path(folder) / f"exec-{os.getpid()}-{threading.get_ident()}.jsonl"
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


def read_records(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every line written by :func:`record` under ``folder``."""
    lines: list[dict[str, Any]] = []
    for path in sorted(Path(folder).glob("exec-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line]
    return lines


def intervals(folder: str | os.PathLike[str]) -> list[tuple[float, float]]:
    """(start, end) monotonic times of every finished attempt, by task id."""
    starts: dict[int, float] = {}
    ends: dict[int, float] = {}
    for entry in read_records(folder):
        (starts if entry["ev"] == "start" else ends)[entry["task_id"]] = entry["mono"]
    return sorted((starts[t], ends[t]) for t in ends if t in starts)


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The largest number of spans open at one moment (an end before a start
    at the same instant)."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = level = 0
    for _, step in edges:
        level += step
        best = max(best, level)
    return best


@app.task
def nap(key: Any, seconds: float = 0.0, folder: str | None = None) -> dict[str, Any]:
    """Sleep ``seconds``; report where it ran."""
    record(folder, "start", key)
    if seconds > 0:
        time.sleep(seconds)
    record(folder, "end", key)
    ctx = accord.current()
    return {"key": key, "node_id": ctx.node_id if ctx else None, "pid": os.getpid()}


@app.task(requires=["gpu"])
def on_gpu(key: Any, seconds: float = 0.0, folder: str | None = None) -> dict[str, Any]:
    """``nap`` for nodes with the ``gpu`` capability only."""
    record(folder, "start", key)
    if seconds > 0:
        time.sleep(seconds)
    record(folder, "end", key)
    ctx = accord.current()
    return {"key": key, "node_id": ctx.node_id if ctx else None, "pid": os.getpid()}


@app.task(size=lambda items: float(len(items)))
def count(items: list[Any]) -> int:
    """A task whose size is a function of its arguments."""
    return len(items)
