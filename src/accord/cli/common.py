"""What every ``accord`` command shares: the root command, consoles, the store
option, errors, values, times."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from accord.errors import AccordError
from accord.store import Store, open_store


def command_group(name: str, help: str) -> typer.Typer:
    """A command (or group of subcommands) that prints its help when called bare."""
    return typer.Typer(
        name=name,
        help=help,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )


cli = command_group("accord", "Run and inspect accord workflows.")


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"accord {version('accord')}")
        raise typer.Exit()


@cli.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """Run and inspect accord workflows."""


out = Console()
if not out.is_terminal:
    # Piped or captured: do not cut table cells to 80 columns.
    out = Console(width=240)
err = Console(stderr=True, soft_wrap=True)

StoreOpt = Annotated[
    str | None,
    typer.Option("--store", envvar="ACCORD_STORE", help="Store URL (sqlite:///path.db)."),
]


@contextmanager
def existing_store(url: str | None, *, create: bool = False) -> Iterator[Store]:
    """The store at ``url``, which must exist unless ``create``: commands that
    read, or change what is there, never create a store (a mistyped path is
    an error, not a new empty store). Those that start work or add data do."""
    with user_errors(), open_store(url, create=create) as store:
        yield store


@contextmanager
def user_errors() -> Iterator[None]:
    """Errors a user can cause: one line on stderr, exit 2 (3 for a timeout)."""
    try:
        yield
    except AccordError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    except TimeoutError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(3) from None


def parse_value(text: str) -> Any:
    """A command-line value: JSON if it parses, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def cwd_on_path() -> None:
    # Like `python -m`, find user modules in the current directory.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def secs(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return "-"
    return f"{end - start:.3f}s"
