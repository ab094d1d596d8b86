"""The records the chaos checker reads (RELIABILITY.md §4.1): what ran, and
what was done to it.

- The execution recorder: :func:`record` is called by the tasks of
  ``tests/apps/chaos.py``; each attempt appends a ``start`` line before it
  does anything and an ``end`` line when it returns, to a per-process JSONL
  file opened with ``O_APPEND`` in the folder named by ``CHAOS_RECORD_DIR``.
  Two lines rather than one so an attempt killed half-way still counts as an
  execution. :func:`read_executions` pairs them into :class:`Execution` s.
- :class:`Fault`: one injected fault, as the cluster and the nemeses log it.

Times are ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process
of the machine), so the test, the nemesis and the tasks can be compared.
This module is imported by the worker processes (through the chaos apps):
it needs nothing but accord.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import accord

RECORD_ENV = "CHAOS_RECORD_DIR"


# -- execution recorder -----------------------------------------------------
def record(event: str, key: Any, **extra: Any) -> dict[str, Any]:
    """Append one line about the running attempt to this process's log file.

    Called from task code. Returns the entry (the attempt's id, fence, ...)
    whether or not recording is on (``CHAOS_RECORD_DIR`` unset: nothing is
    written).
    """
    ctx = accord.current()
    entry: dict[str, Any] = {
        "ev": event,
        "task_id": ctx.task_id if ctx else None,
        "fence": ctx.fence if ctx else None,
        "attempt": ctx.attempt if ctx else None,
        "node_id": ctx.node_id if ctx else None,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "key": key,
        "t": time.monotonic(),
        "wall": time.time(),
        **extra,
    }
    folder = os.environ.get(RECORD_ENV)
    if folder:
        line = (json.dumps(entry) + "\n").encode()
        fd = os.open(
            os.path.join(folder, f"exec-{os.getpid()}.jsonl"),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND,
            0o644,
        )
        try:
            os.write(fd, line)  # one write of a short line: never interleaved
        finally:
            os.close(fd)
    return entry


@dataclass(frozen=True, slots=True)
class Execution:
    """One attempt that started running a task's function."""

    task_id: int
    fence: int
    attempt: int
    node_id: int | None
    pid: int
    ppid: int  # the node process that ran the slot
    key: Any
    start: float
    end: float | None  # None: the attempt never returned (killed, crashed)
    value: Any = None


def finished(key: Any, value: Any, started: dict[str, Any]) -> dict[str, Any]:
    """Record the attempt's end and return what a recorded task returns: its
    value with the attempt's identity (``started`` is :func:`record`'s entry)."""
    record("end", key, value=value)
    return {
        "key": key,
        "value": value,
        "task_id": started["task_id"],
        "fence": started["fence"],
        "attempt": started["attempt"],
        "pid": started["pid"],
    }


def read_executions(folder: str | os.PathLike[str]) -> list[Execution]:
    """Pair the ``start``/``end`` lines of every recorder file under ``folder``."""
    starts: dict[tuple[int, int, int], dict[str, Any]] = {}
    ends: dict[tuple[int, int, int], dict[str, Any]] = {}
    extra_starts: list[dict[str, Any]] = []
    for path in sorted(Path(folder).glob("exec-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # the last line of a file being written right now
            ident = (entry["pid"], entry["task_id"], entry["fence"])
            if entry["ev"] == "start":
                if ident in starts:
                    extra_starts.append(entry)
                else:
                    starts[ident] = entry
            elif entry["ev"] == "end":
                ends[ident] = entry
    out = []
    pairs = [(s, ends.get(ident)) for ident, s in starts.items()]
    pairs += [(s, None) for s in extra_starts]  # a fence started twice in one process
    for s, e in pairs:
        out.append(
            Execution(
                task_id=s["task_id"],
                fence=s["fence"],
                attempt=s["attempt"],
                node_id=s["node_id"],
                pid=s["pid"],
                ppid=s["ppid"],
                key=s["key"],
                start=s["t"],
                end=e["t"] if e else None,
                value=e.get("value") if e else None,
            )
        )
    out.sort(key=lambda x: x.start)
    return out


# -- faults -------------------------------------------------------------------
@dataclass(slots=True)
class Fault:
    """One injected fault; ``end`` is when it was healed (None: not yet)."""

    kind: str
    target: int
    pid: int
    start: float
    end: float | None = None
    wall: float = field(default_factory=time.time)
    detail: str = ""
    # The node could not record anything while the fault lasted (the store was
    # locked or out of reach): every execution on it that ran during the fault
    # is hit, not only those started before it (a task claimed just before can
    # start and end meanwhile, and its result wait until the node fences itself).
    blocks: bool = False
