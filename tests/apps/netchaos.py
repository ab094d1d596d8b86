"""The app of tests/netchaos: a DAG step and a side-effecting long task, both recorded.

Worker processes get the store from ``ACCORD_STORE`` (each host its own URL); the
test binds the app to the database's Unix socket. Every attempt is recorded by
``support.recorder.record`` (``start`` before anything, ``end`` when it returns), so the
queue checker (``support.checker.account``) applies unchanged.
"""

from __future__ import annotations

import time
from typing import Any

import accord
from support.recorder import finished, record

app = accord.App("netchaos")


def square(key: int) -> int:
    """The value a ``step`` must return for ``key``."""
    return key * key + 1


@app.task(retries=20, backoff=0.05, max_backoff=0.1)
def step(key: int, seconds: float, deps: list[dict[str, Any]]) -> dict[str, Any]:
    """One node of the DAG: check the results it depends on, sleep ``seconds``."""
    started = record("start", key)
    for dep in deps:
        if dep["value"] != square(dep["key"]):
            raise ValueError(f"step {key}: dependency {dep['key']} carries {dep['value']!r}")
    if seconds > 0:
        time.sleep(seconds)
    return finished(key, square(key), started)


@app.task(retries=20, backoff=0.05, max_backoff=0.1)
def ticker(key: Any, seconds: float, every: float = 0.05) -> dict[str, Any]:
    """A long task with a side effect every ``every`` seconds (a ``tick`` line in the
    recorder): the ticks of a fenced attempt must stop before another attempt starts."""
    started = record("start", key)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        record("tick", key, n=n)
        n += 1
        time.sleep(every)
    return finished(key, key, started)
