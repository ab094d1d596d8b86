"""``accord schedules``: the periodic tasks the store holds; pause and resume.

A schedule is written to the store when a node of its app starts
(``@app.schedule``); the store fires it (:mod:`accord.store.sql.schedules`).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.table import Table

from accord.cli.common import JsonOpt, StoreOpt, existing_store, json_lines, out
from accord.errors import NotFoundError

group = typer.Typer(
    name="schedules",
    help="The periodic tasks (@app.schedule) the store holds.",
    add_completion=False,
    pretty_exceptions_enable=False,
)

AppOpt = Annotated[str, typer.Option("--app", help="the app whose schedule it is")]


def register(cli: typer.Typer) -> None:
    """Add ``accord schedules`` (and ``pause``/``resume``) to ``cli``."""
    cli.add_typer(group)


@group.callback(invoke_without_command=True)
def schedules(
    ctx: typer.Context,
    store: StoreOpt = None,
    app: Annotated[str | None, typer.Option("--app", help="only this app's schedules")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the schedules: rule (cron in UTC), policy, next and last firing, state.

    State: active; paused (accord schedules pause); orphaned (the app's nodes
    no longer define it, so it does not fire).
    """
    if ctx.invoked_subcommand is not None:
        return
    with existing_store(store) as s:
        rows = s.schedules(app)
        if as_json:
            json_lines(rows)
            return
        now = s.now()
        table = Table("name", "app", "rule", "catch up", "next fire", "last fired", "run", "state")
        for r in rows:
            upcoming = f"{_utc(r.next_fire_at)} ({_in(r.next_fire_at - now)})"
            table.add_row(
                r.name,
                r.app,
                r.rule,
                r.catch_up,
                upcoming if r.state == "active" else "-",
                "-" if r.last_fired_at is None else _utc(r.last_fired_at),
                "-" if r.last_run_id is None else str(r.last_run_id),
                r.state,
            )
        out.print(table)


@group.command()
def pause(name: str, app: AppOpt, store: StoreOpt = None) -> None:
    """Stop a schedule firing until it is resumed."""
    _enable(store, app, name, False)


@group.command()
def resume(name: str, app: AppOpt, store: StoreOpt = None) -> None:
    """Let a paused schedule fire again, from its next slot (missed ones are not made up)."""
    _enable(store, app, name, True)


def _enable(store: str | None, app: str, name: str, enabled: bool) -> None:
    with existing_store(store) as s:
        if not s.set_schedule_enabled(app, name, enabled):
            raise NotFoundError(f"app {app!r} has no schedule {name!r} (see accord schedules)")
        out.print(f"{name} of {app}: {'resumed' if enabled else 'paused'}", highlight=False)


def _utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _in(seconds: float) -> str:
    """``in 42s``, ``in 5m``, ``in 3h``, ``in 2d``; ``due`` when it passed."""
    if seconds <= 0:
        return "due"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"in {seconds // size:.0f}{unit}"
    return f"in {seconds:.0f}s"
