"""``accord worker``, ``nodes`` and ``migrate``: serving an app, the nodes, the schema."""

from __future__ import annotations

import json
import logging
import os
from importlib.metadata import version
from typing import Annotated

import typer
from rich.table import Table

from accord.app import locate
from accord.cli.common import (
    JsonOpt,
    StoreOpt,
    cli,
    cwd_on_path,
    existing_store,
    json_lines,
    out,
    parse_duration,
    user_errors,
)
from accord.data import Objects
from accord.data.cache import parse_size
from accord.errors import ConfigError
from accord.store import open_store


@cli.command()
def worker(
    app_spec: Annotated[str, typer.Option("--app", envvar="ACCORD_APP", help="module:app")],
    store: StoreOpt = None,
    slots: Annotated[
        int | None,
        typer.Option(envvar="ACCORD_SLOTS", help="tasks run at once (default: CPU count)"),
    ] = None,
    mode: Annotated[str, typer.Option(envvar="ACCORD_MODE", help="process or thread")] = "process",
    lease: Annotated[float, typer.Option(envvar="ACCORD_LEASE", help="lease seconds")] = 15.0,
    grace: Annotated[
        float,
        typer.Option(
            envvar="ACCORD_GRACE",
            help="seconds running tasks may finish in after SIGTERM before they are handed back",
        ),
    ] = 30.0,
    name: Annotated[
        str | None,
        typer.Option(envvar="ACCORD_NODE_NAME", help="the node's name (default: HOST:PID)"),
    ] = None,
    capability: Annotated[list[str] | None, typer.Option(help="capability label")] = None,
    resource: Annotated[
        list[str] | None, typer.Option(help="capacity as KIND=AMOUNT (cpu, gpu, memory in MB)")
    ] = None,
    speed: Annotated[float, typer.Option(envvar="ACCORD_SPEED", help="initial speed v")] = 1.0,
    cache_size: Annotated[
        str | None,
        typer.Option(
            envvar="ACCORD_CACHE_SIZE",
            help="bound of this host's cache of remote objects (4G, 512M; 0: none)",
        ),
    ] = None,
    cache_dir: Annotated[
        str | None,
        typer.Option(envvar="ACCORD_CACHE_DIR", help="where the cache of remote objects lives"),
    ] = None,
    retention: Annotated[
        str | None,
        typer.Option(
            envvar="ACCORD_RETENTION",
            help="hourly, remove the app's runs that ended longer ago than this (7d, 12h)",
        ),
    ] = None,
    log_level: Annotated[
        str,
        typer.Option(
            envvar="ACCORD_LOG_LEVEL",
            help="what the node logs: debug, info, warning or error (one line each)",
        ),
    ] = "info",
) -> None:
    """Run a node: claim and run the app's tasks until SIGTERM or Ctrl-C."""
    cwd_on_path()
    with user_errors():
        _logging(log_level)
        # Through the environment, so the node's slot processes read them too.
        if cache_size is not None:
            os.environ["ACCORD_CACHE_SIZE"] = str(parse_size(cache_size, "--cache-size"))
        if cache_dir is not None:
            os.environ["ACCORD_CACHE_DIR"] = cache_dir
        keep = None if retention is None else parse_duration(retention, "--retention")
        app = locate(app_spec)
        if store:
            app.use_store(store)
        node = app.node(
            slots=slots,
            mode=mode,
            lease_ttl=lease,
            grace=grace,
            name=name,
            capabilities=capability or [],
            resources=_resources(resource or []),
            speed=speed,
            retention=keep,
        )
        node.install_signal_handlers()
        node.run()


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


def _logging(name: str) -> None:
    """The node's console shows records at ``name`` and up; the root logger
    lets INFO through, so that thread slots capture a task's INFO records for
    ``accord logs`` (accord.worker.capture) without showing them here."""
    level = _LEVELS.get(name.strip().lower())
    if level is None:
        raise ConfigError(f"--log-level must be one of {', '.join(_LEVELS)}, not {name!r}")
    logging.basicConfig(
        level=min(level, logging.INFO), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)


def _resources(items: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        kind, sep, amount = item.partition("=")
        try:
            out[kind.strip()] = float(amount)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"--resource {item!r} must look like KIND=AMOUNT, e.g. gpu=1")
    return out


@cli.command()
def nodes(
    store: StoreOpt = None,
    all_nodes: Annotated[bool, typer.Option("--all", help="include stopped nodes")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List nodes with their slots, load and last heartbeat."""
    with existing_store(store) as s:
        if as_json:
            json_lines(s.nodes(include_stopped=all_nodes))
            return
        table = Table(
            "node",
            "name",
            "host",
            "app",
            "slots",
            "mode",
            "capabilities",
            "resources",
            "speed",
            "running",
            "completed",
            "state",
            "heartbeat",
        )
        now = s.now()  # heartbeats are stamped by the store's clock
        for n in s.nodes(include_stopped=all_nodes):
            table.add_row(
                str(n.id),
                n.name,
                n.host,
                n.queue,
                str(n.slots),
                n.mode,
                ",".join(n.capabilities) or "-",
                " ".join(f"{k}={v:g}" for k, v in sorted(n.resources.items())) or "-",
                f"{n.speed:,.0f} size/s" if n.speed >= 100 else f"{n.speed:.3g} size/s",
                str(n.running),
                str(n.completed),
                n.state,
                f"{now - n.heartbeat_at:.1f}s ago",
            )
        out.print(table)


@cli.command()
def migrate(store: StoreOpt = None) -> None:
    """Create the store, or upgrade its schema to this accord's."""
    with user_errors(), open_store(store) as s:
        now = s.schema_version()
        found = s.found_version
        if found == 0:
            done = f"created (schema {now})"
        elif found is not None and found < now:
            done = f"upgraded from schema {found} to {now}"
        else:
            done = f"schema {now}, up to date"
        out.print(f"{s.url}: {done}", highlight=False)


@cli.command()
def info(
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON document")] = False,
) -> None:
    """Show the store the commands use, its schema, objects and live nodes.

    The store is ``--store``, else ``ACCORD_STORE``, else ./.accord/accord.db.
    """
    with existing_store(store) as s:
        live = [n for n in s.nodes() if n.state == "running"]
        recent = s.runs(1)
        facts = {
            "accord": version("accord"),
            "store": s.url,
            "backend": type(s).__name__.removesuffix("Store").lower().replace("pg", "postgresql"),
            "schema": s.schema_version(),
            "objects": Objects(s).location,
            "live_nodes": len(live),
            "apps": sorted({n.queue for n in live}),
            "last_run": recent[0].id if recent else None,
        }
    if as_json:
        out.print_json(json.dumps(facts))
        return
    for key, value in facts.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        out.print(f"{key + ':':<12}{'-' if shown in (None, '') else shown}", highlight=False)
