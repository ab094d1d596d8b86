"""A run's progress bar: its tasks ended of all, how many run, what failed.

Drawn by rich, which draws in a terminal and in a notebook alike; used by
``run.wait(progress=True)`` and the ``accord`` commands that follow a run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from accord.store.records import TERMINAL

if TYPE_CHECKING:
    from accord.tasks.handles import Run


def follow(
    run: Run,
    *,
    label: str,
    show: bool = True,
    check: Callable[[], None] | None = None,
    timeout: float | None = None,
    console: Console | None = None,
) -> Any:
    """Wait for ``run`` (up to ``timeout`` seconds) while showing a progress
    bar of its tasks on ``console`` (stderr by default); ``check`` raises if
    something the wait depends on stopped (an in-process node)."""
    deadline = None if timeout is None else time.monotonic() + timeout

    def left() -> float:
        if deadline is None:
            return 0.5
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"run {run.id} did not finish within {timeout} s")
        return min(0.5, remaining)

    if not show:
        while True:
            try:
                return run.wait(left())
            except TimeoutError:
                if check is not None:
                    check()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console or Console(stderr=True), transient=False) as bar:
        line = bar.add_task(label, total=1, detail="")
        while True:
            info = run.info()
            total = sum(info.counts.values())
            ended = sum(info.counts.get(s, 0) for s in TERMINAL)
            detail = f"{info.counts.get('running', 0)} running" + troubles(info.counts, ", ")
            bar.update(line, total=max(total, 1), completed=ended, detail=detail)
            if info.state != "running":
                break
            if check is not None:
                check()
            time.sleep(min(0.1, left()))
    return run.wait()


def troubles(counts: Mapping[str, int], lead: str) -> str:
    """``lead`` and "2 failed, 1 cancelled", or "" when no task of a run
    failed or was cancelled (a run can succeed with both: its workflow
    caught the failures)."""
    parts = [f"{counts[s]} {s}" for s in ("failed", "cancelled") if counts.get(s)]
    return lead + ", ".join(parts) if parts else ""
