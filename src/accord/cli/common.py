"""What every ``accord`` command shares: the root command, consoles, the store
option, errors, values, times."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from accord.errors import AccordError, ConfigError
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


JsonOpt = Annotated[
    bool, typer.Option("--json", help="print JSON: one object per line, fields as documented")
]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="only since this long ago: 90s, 30m, 12h, 7d, 2w")
]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str, option: str) -> float:
    """Seconds from ``90s``, ``30m``, ``12h``, ``7d`` or ``2w`` (more than 0)."""
    number, unit = text.strip()[:-1], text.strip()[-1:].lower()
    try:
        seconds = float(number) * _UNITS[unit]
    except (KeyError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(
            f"{option} {text!r} is not a duration: give a number and a unit, "
            "s, m, h, d or w (for example 90s, 30m, 12h, 7d, 2w), more than 0"
        )
    return seconds


def json_lines(rows: Iterable[Any]) -> None:
    """Print records (accord's dataclasses) as JSON, one object per line."""
    for row in rows:
        typer.echo(json.dumps(plain(row), default=str))


def plain(value: Any) -> Any:
    """A record as JSON-ready values: dataclasses as dicts, enums as values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


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
