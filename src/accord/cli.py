"""The ``accord`` command: a thin shell over the public API.

Every option has an environment default under ``ACCORD_`` (the store URL is
``ACCORD_STORE``). Errors a user can cause print one line and exit with 2.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from accord.app import App, locate, locate_task
from accord.cli_common import StoreOpt, err, out, parse_value, user_errors
from accord.cli_state import register as register_state_commands
from accord.errors import ConfigError, TaskError
from accord.handles import Run
from accord.scheduling.report import live_nodes, unschedulable, unschedulable_reason
from accord.store import open_store
from accord.store.base import TERMINAL

cli = typer.Typer(
    name="accord",
    help="Run and inspect accord workflows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_errors = user_errors


def _cwd_on_path() -> None:
    # Like `python -m`, find user modules in the current directory.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def _secs(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return "-"
    return f"{end - start:.3f}s"


def follow(
    app: App,
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
            running = info.counts.get("running", 0)
            progress.update(bar, total=max(total, 1), completed=ended, detail=f"{running} running")
            if info.state != "running":
                break
            if check is not None:
                check()
            time.sleep(0.1)
    return run.wait()


@cli.command()
def run(
    target: Annotated[str, typer.Argument(help="module:workflow to start")],
    args: Annotated[list[str] | None, typer.Argument(help="arguments (JSON, else text)")] = None,
    store: StoreOpt = None,
    timeout: Annotated[float | None, typer.Option(help="give up after this many seconds")] = None,
    slots: Annotated[int | None, typer.Option(help="slots of the in-process node")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Start a workflow, wait for it and print its value.

    With no node of the app running, a node runs in this process.
    """
    _cwd_on_path()
    with _errors():
        workflow = locate_task(target)
        app = workflow.app
        if store:
            app._url = store
        values = [parse_value(a) for a in args or []]
        started = app.start(workflow, *values)
        err.print(f"run {started.id} started ({workflow.name})", highlight=False)
        options = {"slots": slots} if slots else {}
        embedded = app.embedded_node(**options)
        with embedded:
            try:
                value = _with_timeout(
                    lambda: follow(
                        app, started, label=workflow.name, show=progress, check=embedded.check
                    ),
                    timeout,
                )
            except TaskError as exc:
                err.print(f"[red]run {started.id} failed:[/red] {exc}", highlight=False)
                raise typer.Exit(1) from None
        out.print_json(json.dumps(value, default=repr))


def _with_timeout(fn: Callable[[], Any], timeout: float | None) -> Any:
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
        raise TimeoutError(f"the run did not finish within {timeout} s (it goes on)")
    if failure:
        raise failure[0]
    return box[0]


@cli.command()
def worker(
    app_spec: Annotated[str, typer.Option("--app", envvar="ACCORD_APP", help="module:app")],
    store: StoreOpt = None,
    slots: Annotated[int | None, typer.Option(envvar="ACCORD_SLOTS")] = None,
    mode: Annotated[str, typer.Option(envvar="ACCORD_MODE", help="process or thread")] = "process",
    lease: Annotated[float, typer.Option(envvar="ACCORD_LEASE", help="lease seconds")] = 15.0,
    grace: Annotated[float, typer.Option(envvar="ACCORD_GRACE")] = 30.0,
    name: Annotated[str | None, typer.Option(envvar="ACCORD_NODE_NAME")] = None,
    capability: Annotated[list[str] | None, typer.Option(help="capability label")] = None,
    resource: Annotated[
        list[str] | None, typer.Option(help="capacity as KIND=AMOUNT (cpu, gpu, memory in MB)")
    ] = None,
    speed: Annotated[float, typer.Option(envvar="ACCORD_SPEED", help="initial speed v")] = 1.0,
) -> None:
    """Run a node: claim and run the app's tasks until SIGTERM or Ctrl-C."""
    _cwd_on_path()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with _errors():
        app = locate(app_spec)
        if store:
            app._url = store
        node = app.node(
            slots=slots,
            mode=mode,
            lease_ttl=lease,
            grace=grace,
            name=name,
            capabilities=capability or [],
            resources=_resources(resource or []),
            speed=speed,
        )
        node.install_signal_handlers()
        node.run()


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
def runs(
    store: StoreOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 20,
) -> None:
    """List recent runs."""
    with _errors(), open_store(store) as s:
        table = Table("run", "name", "app", "state", "tasks", "started", "took", "error")
        for r in s.runs(limit):
            total = sum(r.counts.values())
            done = r.counts.get("succeeded", 0)
            table.add_row(
                str(r.id),
                r.name,
                r.app,
                r.state,
                f"{done}/{total}",
                _when(r.created_at),
                _secs(r.created_at, r.finished_at),
                (r.error or "")[:60],
            )
        out.print(table)


@cli.command()
def tasks(
    run_id: Annotated[int, typer.Argument(help="the run's id")],
    store: StoreOpt = None,
) -> None:
    """Show each task of a run: state, node, attempts, timings, error."""
    with _errors(), open_store(store) as s:
        info = s.run(run_id)
        nodes_now = s.nodes()
        table = Table(
            "task",
            "name",
            "state",
            "node",
            "attempts",
            "queued",
            "ran",
            "error",
            title=f"run {info.id} ({info.name}): {info.state}",
        )
        for t in s.tasks(run_id):
            note = t.error or ""
            if t.state.value == "ready":
                why = unschedulable_reason(t.queue, t.requires, t.resources, nodes_now)
                if why is not None:
                    note = f"unschedulable: {why}"
            table.add_row(
                str(t.id),
                t.name,
                t.state.value,
                t.node_name or "-",
                f"{t.attempts}/{t.max_attempts}" + (f" +{t.losses} lost" if t.losses else ""),
                _secs(t.created_at, t.started_at),
                _secs(t.started_at, t.finished_at),
                note[:100],
            )
        out.print(table)


@cli.command()
def status(store: StoreOpt = None) -> None:
    """Queues, live nodes, and ready tasks that no live node can run."""
    with _errors(), open_store(store) as s:
        nodes_now = s.nodes()
        classes = s.ready_classes()
        queues = sorted({c[0] for c in classes} | {n.queue for n in nodes_now})
        table = Table("app", "ready", "live nodes", "slots", "running")
        for queue in queues:
            ready = sum(c[3] for c in classes if c[0] == queue)
            live = live_nodes(nodes_now, queue)
            table.add_row(
                queue,
                str(ready),
                str(len(live)),
                str(sum(n.slots for n in live)),
                str(sum(n.running for n in live)),
            )
        out.print(table)
        stuck = unschedulable(classes, nodes_now)
        if stuck:
            bad = Table("app", "requires", "resources", "tasks", "why", title="unschedulable")
            for queue, requires, resources, count, reason in stuck:
                bad.add_row(queue, requires or "-", resources or "-", str(count), reason)
            out.print(bad)
        else:
            out.print("every ready task can run on a live node")


@cli.command()
def cancel(
    run_id: Annotated[int, typer.Argument(help="the run's id")],
    store: StoreOpt = None,
) -> None:
    """Cancel every open task of a run."""
    with _errors(), open_store(store) as s:
        count = s.cancel_run(run_id, "cancelled from the command line")
        out.print(f"run {run_id}: {count} task(s) cancelled")


@cli.command()
def nodes(
    store: StoreOpt = None,
    all_nodes: Annotated[bool, typer.Option("--all", help="include stopped nodes")] = False,
) -> None:
    """List nodes with their slots, load and last heartbeat."""
    with _errors(), open_store(store) as s:
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
                f"{n.speed:.3g}",
                str(n.running),
                str(n.completed),
                n.state,
                f"{now - n.heartbeat_at:.1f}s ago",
            )
        out.print(table)


@cli.command()
def events(
    run_id: Annotated[int | None, typer.Argument(help="only this run")] = None,
    store: StoreOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 50,
) -> None:
    """Show the event log: failures, retries, lease expiries, node starts and stops."""
    with _errors(), open_store(store) as s:
        table = Table("at", "kind", "run", "task", "node", "detail")
        for e in s.events(run_id, limit):
            table.add_row(
                _when(e.at),
                e.kind,
                str(e.run_id or "-"),
                str(e.task_id or "-"),
                str(e.node_id or "-"),
                (e.detail or "")[:100],
            )
        out.print(table)


@cli.command()
def migrate(store: StoreOpt = None) -> None:
    """Create or upgrade the store's schema."""
    with _errors(), open_store(store) as s:
        out.print(f"{s.url}: schema up to date")


@cli.command()
def demo(
    store: StoreOpt = None,
    slots: Annotated[int | None, typer.Option(help="slots of the in-process node")] = None,
    seed: Annotated[int, typer.Option(help="random seed of the data split")] = 0,
) -> None:
    """Run the demo pipeline: load data, train models in parallel, pick the best."""
    try:
        from accord import demo as demo_module
    except ImportError as exc:
        err.print(
            f"[red]error:[/red] the demo needs scikit-learn ({exc}); "
            "install it with: pip install 'accord[demo]'"
        )
        raise typer.Exit(2) from None
    with _errors():
        demo_module.main(store=store, slots=slots, seed=seed, console=out, progress=err)


register_state_commands(cli)  # accord state | mailbox | topic ...


def main() -> None:
    cli()
