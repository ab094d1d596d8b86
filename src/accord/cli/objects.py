"""``accord objects ...``: the object store from the shell, through :class:`~accord.data.Objects`.

An object is named by its digest as ``ls`` prints it (64 hex digits; a
``sha256:`` prefix is allowed). Errors a user can cause print one line and
exit with 2; ``verify`` exits with 1 when it finds a damaged or missing object.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from accord.cli.common import StoreOpt, command_group, err, existing_store, out, when
from accord.data import ObjectRef, Objects
from accord.data.collect import DEFAULT_GRACE
from accord.errors import ConfigError
from accord.store.records import ObjectRow

objects_cli = command_group("objects", "List, read, put, check and collect stored objects.")

RefArg = Annotated[
    str, typer.Argument(help="the object's digest (as `accord objects ls` prints it)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON lines")]
CHUNK = 1024 * 1024


def register(cli: typer.Typer) -> None:
    """Add the ``objects`` command group to ``cli``."""
    cli.add_typer(objects_cli, name="objects")


@contextmanager
def _objects(url: str | None, *, create: bool = False) -> Iterator[Objects]:
    with existing_store(url, create=create) as store:
        yield Objects(store)


def _size(n: int) -> str:
    """``n`` bytes for people: 512 B, 1.5 KiB, 3.0 MiB."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _row(row: ObjectRow) -> dict[str, Any]:
    return {
        "digest": row.digest,
        "size": row.size,
        "kind": row.kind,
        "location": row.location,
        "created_at": row.created_at,
        "touched_at": row.touched_at,
        "pinned": row.pinned,
    }


def _json(value: Any) -> str:
    return json.dumps(value, default=repr, ensure_ascii=False)


@objects_cli.command("ls")
def ls(
    store: StoreOpt = None,
    run: Annotated[
        int | None, typer.Option("--run", help="only the objects this run's tasks reference")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the stored objects: digest, size, kind, pinned, created."""
    with _objects(store) as objects:
        if run is not None:
            objects.store.run(run)  # a run that does not exist is an error, not an empty list
        rows = objects.ls(run)
        if as_json:
            for row in rows:
                out.print(_json(_row(row)), soft_wrap=True, markup=False, highlight=False)
            return
        table = Table("digest", "size", "kind", "pinned", "created")
        for row in rows:
            table.add_row(
                row.digest,
                _size(row.size),
                row.kind,
                "yes" if row.pinned else "no",
                when(row.created_at),
            )
        out.print(table)


@objects_cli.command("get")
def get(
    ref: RefArg,
    store: StoreOpt = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="write to this file (default: stdout)")
    ] = None,
) -> None:
    """Write an object's bytes, verified, to a file (whole or not at all) or to stdout."""
    with _objects(store) as objects:
        found = objects.ref(ref)
        if output is None:
            _to_stdout(objects, found)
            return
        _check_writable(output)
        try:
            objects.get_file(found, output)
        except OSError as exc:  # one get_file let through (its cleanup failing too)
            raise ConfigError(
                f"cannot write the object to {output}: {exc.strerror}", path=str(output)
            ) from None
        err.print(
            f"wrote {found.digest} ({_size(found.size)}) to {output}", markup=False, highlight=False
        )


def _to_stdout(objects: Objects, ref: ObjectRef) -> None:
    try:
        with objects.open(ref) as source:
            shutil.copyfileobj(source, sys.stdout.buffer, CHUNK)
        sys.stdout.buffer.flush()
    except BrokenPipeError:  # `| head`: the reader has gone; so do we, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(1) from None


def _check_writable(path: Path) -> None:
    """A clear error now for a target that cannot be written, rather than the
    object store's error for a failed write."""
    where = f"cannot write the object to {path}"
    try:
        if path.is_dir():
            raise ConfigError(f"{where}: it is a directory", path=str(path))
        parent = path.parent
        if not parent.is_dir():
            raise ConfigError(f"{where}: {parent} is not a directory", path=str(path))
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{where}: {parent} is not writable", path=str(path))
    except OSError as exc:  # a name too long, a loop of links
        raise ConfigError(f"{where}: {exc.strerror}", path=str(path)) from None


@objects_cli.command("put")
def put(
    file: Annotated[Path, typer.Argument(help="the file to store")],
    store: StoreOpt = None,
) -> None:
    """Store a file's bytes; print the object's digest."""
    with _objects(store, create=True) as objects:
        out.print(objects.put_file(file).digest, highlight=False)


@objects_cli.command("gc")
def gc(
    store: StoreOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="only list what would be collected")
    ] = False,
    grace: Annotated[
        float, typer.Option("--grace", help="keep objects put in the last GRACE seconds")
    ] = DEFAULT_GRACE,
) -> None:
    """Remove the objects nothing references (no run, state, message or pin)."""
    with _objects(store) as objects:
        report = objects.gc(dry_run=dry_run, grace=grace)
        verb = "would collect" if dry_run else "collected"
        for row in report.collected:
            out.print(f"{verb} {row.digest} ({_size(row.size)})", highlight=False)
        out.print(
            f"{verb} {len(report.collected)} object(s), {_size(report.freed_bytes)} "
            f"({report.freed_bytes} bytes); kept {report.kept}, referenced {report.referenced}",
            highlight=False,
        )


@objects_cli.command("verify")
def verify(store: StoreOpt = None) -> None:
    """Re-hash every object; print each damaged or missing one (exit 1 if any)."""
    with _objects(store) as objects:
        problems = objects.verify()
        for p in problems:
            out.print(
                f"{p.digest} at {p.location}: {p.problem}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        if problems:
            err.print(f"{len(problems)} object(s) damaged or missing", highlight=False)
            raise typer.Exit(1)
        out.print("every object is intact")


@objects_cli.command("pin")
def pin(ref: RefArg, store: StoreOpt = None) -> None:
    """Keep an object whatever references it (until `accord objects unpin`)."""
    with _objects(store) as objects:
        found = objects.ref(ref)
        objects.pin(found)
        out.print(f"pinned {found.digest}", highlight=False)


@objects_cli.command("unpin")
def unpin(ref: RefArg, store: StoreOpt = None) -> None:
    """Let the collector take an object again once nothing references it."""
    with _objects(store) as objects:
        found = objects.ref(ref)
        objects.unpin(found)
        out.print(f"unpinned {found.digest}", highlight=False)
