"""What every ``accord`` command shares: consoles, the store option, errors, values."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console

from accord.errors import AccordError

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
def user_errors() -> Iterator[None]:
    """Errors a user can cause: one line on stderr, exit 2 (3 for a timeout)."""
    try:
        yield
    except AccordError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except TimeoutError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(3) from None


def parse_value(text: str) -> Any:
    """A command-line value: JSON if it parses, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text
