"""``accord logs TASK``: what a task's attempts printed and logged.

Lines come from :mod:`accord.worker.capture` through the store
(:mod:`accord.store.sql.logs`): each ``HH:MM:SS stream text``, the time in
the node's local clock, the stream ``stdout``, ``stderr`` or
``LEVEL:logger``; a header starts each attempt, and a line says how many
bytes of an attempt's oldest lines were dropped to keep it in its bound.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer

from accord.cli.common import StoreOpt, existing_store
from accord.store.base import LogLine, Store
from accord.store.records import TERMINAL

# How often --follow looks for new lines (a running attempt's lines reach the
# store every two seconds, accord.worker.capture.FLUSH_EVERY).
POLL = 0.5


def register(cli: typer.Typer) -> None:
    """Add ``accord logs`` to ``cli``."""
    cli.command("logs")(logs)


def logs(
    task_id: Annotated[int, typer.Argument(help="the task's id")],
    store: StoreOpt = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="wait for new lines until the task ends")
    ] = False,
    attempt: Annotated[
        int | None, typer.Option("--attempt", help="only this attempt (1 is the first)")
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="one JSON object a line: task_id, attempt, seq, at, stream, text "
            "(or attempt and dropped, the bytes of older lines dropped)",
        ),
    ] = False,
) -> None:
    """Show what a task printed and logged, attempt by attempt (its last 5, 64 KiB each)."""
    with existing_store(store) as s:
        s.task(task_id)  # a task that does not exist is an error
        shown = _Shown(task_id, as_json)
        try:
            while True:
                ended = not follow or s.task(task_id).state in TERMINAL
                shown.more(s, attempt)
                if ended:
                    break
                time.sleep(POLL)
        except KeyboardInterrupt:  # Ctrl-C ends following; the task goes on
            raise typer.Exit(130) from None
        if not shown.any:
            which = f" in attempt {attempt}" if attempt is not None else ""
            print(f"task {task_id} has no logs{which}", file=sys.stderr)


class _Shown:
    """What has been printed so far, so that following prints only what is new."""

    def __init__(self, task_id: int, as_json: bool) -> None:
        self.task_id = task_id
        self.as_json = as_json
        self.after: tuple[int, int] | None = None
        self.attempt: int | None = None  # the attempt whose lines were printed last
        self.dropped: dict[int, int] = {}  # bytes dropped per attempt, as said
        self.any = False

    def more(self, s: Store, attempt: int | None) -> None:
        lines, dropped = s.task_logs(self.task_id, attempt, self.after)
        for line in lines:
            if line.attempt != self.attempt:
                self.attempt = line.attempt
                self._header(line.attempt)
            self._drops(line.attempt, dropped.get(line.attempt, 0))
            self._line(line)
            self.after = (line.attempt, line.seq)
        if self.attempt is not None:
            self._drops(self.attempt, dropped.get(self.attempt, 0))
        sys.stdout.flush()

    def _header(self, attempt: int) -> None:
        self.any = True
        if not self.as_json:
            sys.stdout.write(f"-- attempt {attempt} --\n")

    def _drops(self, attempt: int, dropped: int) -> None:
        said = self.dropped.get(attempt, 0)
        if dropped <= said:
            return
        self.dropped[attempt] = dropped
        if self.as_json:
            sys.stdout.write(json.dumps({"attempt": attempt, "dropped": dropped}) + "\n")
        else:
            sys.stdout.write(
                f"-- {dropped - said} bytes of older lines dropped (the bound is 64 KiB) --\n"
            )

    def _line(self, line: LogLine) -> None:
        if self.as_json:
            fields = {"task_id": self.task_id, **line._asdict()}
            sys.stdout.write(json.dumps(fields) + "\n")
            return
        clock = time.strftime("%H:%M:%S", time.localtime(line.at))
        sys.stdout.write(f"{clock} {line.stream} {line.text}\n")
