"""The app of the chaos suite (tests/chaos): tasks that record every execution.

Its store comes from the test: ``conftest.bind`` in the test process,
``ACCORD_STORE`` in worker processes. Each task attempt appends a ``start``
line to the execution log before it does anything and an ``end`` line when it
returns (see ``support.recorder.record``), so an attempt killed half-way still counts
as an execution.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Any

import accord
from support.recorder import finished, record

app = accord.App("chaos")


def _run(key: Any, seconds: float) -> dict[str, Any]:
    started = record("start", key)
    if seconds > 0:
        time.sleep(seconds)
    return _finish(key, started)


def _finish(key: Any, started: dict[str, Any]) -> dict[str, Any]:
    return finished(key, square(key) if isinstance(key, int) else key, started)


def square(key: int) -> int:
    """The value a ``work`` task must return for ``key``."""
    return key * key + 1


# A lease that expires (its node died) does not use up retries, but a task
# fails once it has lost lease_losses of them (3 by default): that bounds a
# task that kills its node (see ``kill_node``). A nemesis that kills a node
# every half second hits some task three times in a few runs out of ten, so
# tasks that must survive it allow more losses than a real cluster would need.
@app.task(retries=20, backoff=0.05, max_backoff=0.1, lease_losses=20)
def work(key: Any, seconds: float = 0.0) -> dict[str, Any]:
    """Sleep ``seconds``; the recorded result names the attempt that made it."""
    return _run(key, seconds)


@app.task
def plain(key: Any, seconds: float = 0.0) -> dict[str, Any]:
    """``work`` with the default options (no retries)."""
    return _run(key, seconds)


@app.task
def burn(key: Any, seconds: float) -> dict[str, Any]:
    """Keep the CPU busy in pure Python for ``seconds`` (the GIL is released
    every few milliseconds, so a thread beside it still runs)."""
    started = record("start", key)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        for i in range(10_000):
            n += i * i
    return _finish(key, started)


@app.task
def hold_gil(key: Any, seconds: float) -> dict[str, Any]:
    """Sleep ``seconds`` inside one C call that keeps the GIL (``PyDLL`` does
    not release it), so no other thread of this process runs meanwhile."""
    started = record("start", key)
    libc = ctypes.PyDLL(None)
    libc.usleep(ctypes.c_uint(int(seconds * 1_000_000)))
    return _finish(key, started)


@app.task(retries=2, backoff=0.05, max_backoff=0.1)
def crash_exit(key: Any) -> None:
    """Poison: the slot process exits with status 1 on every attempt."""
    record("start", key)
    os._exit(1)


@app.task(retries=2, backoff=0.05, max_backoff=0.1)
def segfault(key: Any) -> None:
    """Poison: the slot process dies of SIGSEGV on every attempt."""
    record("start", key)
    ctypes.string_at(0)


@app.task
def kill_node(key: Any) -> None:
    """Poison: SIGKILL the node that runs this attempt, then exit."""
    record("start", key)
    os.kill(os.getppid(), signal.SIGKILL)
    os._exit(1)


@app.task(retries=20, backoff=0.05, max_backoff=0.1)
def gather(results: list[dict[str, Any]]) -> list[Any]:
    """The values of ``work`` results, in order."""
    return [r["value"] for r in results]


@app.workflow(retries=20, backoff=0.05, max_backoff=0.1)
def fan_out(n: int, seconds: float, batch: int = 50, pause: float = 0.05) -> accord.Handle[Any]:
    """Submit ``n`` ``work`` children in batches (slowly, so a fault can hit
    the parent half-way), then gather their values. A re-executed parent finds
    the children its earlier attempt made, so none is made twice."""
    record("start", "fan_out")
    handles: list[accord.Handle[dict[str, Any]]] = []
    for lo in range(0, n, batch):
        handles.extend(work.submit(k, seconds) for k in range(lo, min(n, lo + batch)))
        time.sleep(pause)
    return gather.submit(handles)
