"""Following a run from the shell: a progress bar of its tasks, a time limit,
interrupts."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer

from accord.cli.common import err
from accord.tasks import Run, progress
from accord.tasks.progress import troubles

__all__ = ["Interrupted", "ended_badly", "follow", "interruptible", "troubles", "with_timeout"]


def follow(
    run: Run,
    *,
    label: str,
    show: bool = True,
    check: Callable[[], None] | None = None,
) -> Any:
    """:func:`accord.tasks.progress.follow` on the commands' stderr console."""
    return progress.follow(run, label=label, show=show, check=check, console=err)


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


def ended_badly(run: Run, exc: BaseException) -> typer.Exit:
    """Say how a waited-on run ended without a value; the exit to raise:
    4 when it was cancelled and nothing failed, else 1 (a run whose workflow
    waited on a task that failed ends through a cancelled wait: it failed)."""
    ended = run.info()
    if ended.state == "cancelled" and not ended.counts.get("failed"):
        err.print(
            f"[yellow]run {run.id} was cancelled:[/yellow] {getattr(exc, 'reason', None) or exc}"
        )
        return typer.Exit(4)
    err.print(f"[red]run {run.id} failed:[/red] {exc}", highlight=False)
    return typer.Exit(1)
