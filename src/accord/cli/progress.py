"""Following a run from the shell: a progress bar of its tasks, a time limit,
interrupts."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from accord.cli.common import err
from accord.store.records import TERMINAL
from accord.tasks import Run


def follow(
    run: Run,
    *,
    label: str,
    show: bool = True,
    check: Callable[[], None] | None = None,
) -> Any:
    """Wait for ``run`` while showing a progress bar of its tasks; ``check``
    raises if the in-process node stopped on an error."""
    if not show:
        while True:
            try:
                return run.wait(0.5)
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
    with Progress(*columns, console=err, transient=False) as progress:
        bar = progress.add_task(label, total=1, detail="")
        while True:
            info = run.info()
            total = sum(info.counts.values())
            ended = sum(info.counts.get(s, 0) for s in TERMINAL)
            detail = f"{info.counts.get('running', 0)} running" + troubles(info.counts, ", ")
            progress.update(bar, total=max(total, 1), completed=ended, detail=detail)
            if info.state != "running":
                break
            if check is not None:
                check()
            time.sleep(0.1)
    return run.wait()


def troubles(counts: Mapping[str, int], lead: str) -> str:
    """``lead`` and "2 failed, 1 cancelled", or "" when no task of a run
    failed or was cancelled (a run can succeed with both: its workflow
    caught the failures)."""
    parts = [f"{counts[s]} {s}" for s in ("failed", "cancelled") if counts.get(s)]
    return lead + ", ".join(parts) if parts else ""


def with_timeout(fn: Callable[[], Any], timeout: float | None) -> Any:
    if timeout is None:
        return fn()
    import threading

    box: list[Any] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"the run did not finish within {timeout} s")
    if failure:
        raise failure[0]
    return box[0]


class Interrupted(Exception):
    """The waiting command got SIGINT (Ctrl-C) or SIGTERM."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` in the main thread
    while the block runs (a second signal during the clean-up is ignored:
    the clean-up hands work back and is short)."""

    def on_signal(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
