"""``accord prune``: removing finished runs, and giving SQLite's file space back.

The rules of what goes and what stays are in :mod:`accord.store.sql.prune`;
``docs/guide.md`` ("Housekeeping") says what keeping a run costs.
"""

from __future__ import annotations

from typing import Annotated

import typer

from accord.cli.common import StoreOpt, err, existing_store, out, parse_duration, user_errors
from accord.errors import ConfigError
from accord.store.sql.prune import ENDED, PruneMixin


def register(cli: typer.Typer) -> None:
    """Add ``accord prune`` to ``cli``."""
    cli.command("prune")(prune)


def _size(n: int) -> str:
    """``n`` bytes for people: 512 B, 1.5 KiB, 3.0 MiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # not reached


def _what(counts: dict[str, int]) -> str:
    states = ", ".join(f"{counts[s]} {s}" for s in ENDED if counts[s])
    keys = counts["state_keys"]
    return (
        f"{counts['runs']} run(s){f' ({states})' if states else ''}, {counts['tasks']} task(s), "
        f"{counts['deps']} dependency row(s), {counts['events']} event(s), "
        f"{counts['log_lines']} log line(s), {keys} state key(s) of their namespaces"
    )


def prune(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            help="remove runs that ended longer ago than this: 90s, 30m, 12h, 7d, 2w",
            show_default=False,
        ),
    ],
    store: StoreOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="only count what would be removed")
    ] = False,
    state: Annotated[
        list[str] | None,
        typer.Option("--state", help="only runs that ended so: succeeded, failed, cancelled"),
    ] = None,
    app: Annotated[str | None, typer.Option("--app", help="only the runs of this app")] = None,
    vacuum: Annotated[
        bool,
        typer.Option("--vacuum", help="SQLite: then shrink the file (VACUUM; locks the store)"),
    ] = False,
    batch: Annotated[int, typer.Option("--batch", min=1, max=10_000, help="runs per commit")] = 500,
) -> None:
    """Remove finished runs with their tasks, results, events and run state.

    Only runs that succeeded, failed or were cancelled longer ago than
    --older-than go, in batches of one transaction each; running runs, and
    old runs whose results an open task still needs, stay.
    """
    with user_errors():
        seconds = parse_duration(older_than, "--older-than")
        for name in state or []:
            if name not in ENDED:
                raise ConfigError(
                    f"--state {name!r} is not how a run ends: give succeeded, failed or cancelled"
                )
    with existing_store(store) as s:
        counts = s.prune(seconds, dry_run=dry_run, batch=batch, states=state, app=app)
        verb = "would remove" if dry_run else "removed"
        out.print(f"{verb} {_what(counts)}", highlight=False)
        if counts["kept"]:
            out.print(
                f"kept {counts['kept']} old run(s) whose results open tasks still need "
                "(or, on PostgreSQL, that another transaction held); a later prune takes them",
                highlight=False,
            )
        if dry_run:
            out.print("nothing was changed (--dry-run)", highlight=False)
            return
        if not isinstance(s, PruneMixin):
            return
        if vacuum:
            shrunk = s.vacuum()
            if shrunk is None:
                out.print(
                    "--vacuum: nothing to do on PostgreSQL; autovacuum makes the space of "
                    "deleted rows reusable by itself",
                    highlight=False,
                )
            else:
                out.print(
                    f"vacuumed: the store file went from {_size(shrunk[0])} to {_size(shrunk[1])}",
                    highlight=False,
                )
            return
        space = s.file_space()
        if space is not None and space[1]:
            err.print(
                f"the store file keeps its size ({_size(space[0])}): {_size(space[1])} of it "
                "is now free for new rows; --vacuum gives it back to the file system",
                highlight=False,
            )
