"""``accord run``, ``runs``, ``tasks``, ``status``, ``cancel``, ``events``: runs and their tasks."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from accord.app import locate_task
from accord.cli.common import (
    JsonOpt,
    SinceOpt,
    StoreOpt,
    cli,
    cwd_on_path,
    err,
    existing_store,
    json_lines,
    out,
    parse_duration,
    parse_value,
    secs,
    user_errors,
    when,
)
from accord.cli.progress import (
    Interrupted,
    ended_badly,
    follow,
    interruptible,
    troubles,
    with_timeout,
)
from accord.cli.task import run_cause, task_tree
from accord.errors import ConfigError, TaskError
from accord.scheduling.report import live_nodes, unschedulable, unschedulable_reason
from accord.store import DEFAULT_URL
from accord.store.records import TERMINAL, RunInfo, TaskInfo, TaskState
from accord.tasks.registry import Runtime
from accord.worker.embedded import Embedded


@cli.command()
def run(
    target: Annotated[str, typer.Argument(help="module:workflow to start")],
    args: Annotated[list[str] | None, typer.Argument(help="arguments (JSON, else text)")] = None,
    store: StoreOpt = None,
    timeout: Annotated[float | None, typer.Option(help="give up after this many seconds")] = None,
    slots: Annotated[int | None, typer.Option(help="slots of the in-process node")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    detach: Annotated[
        bool, typer.Option("--detach", help="print the run's id and return; nodes run it")
    ] = False,
) -> None:
    """Start a workflow, wait for it and print its value.

    With no node of the app running, a node runs in this process. Exit
    status: 0 succeeded, 1 failed, 2 bad input, 3 timed out, 4 cancelled,
    130 interrupted (Ctrl-C or SIGTERM: the node here hands its running
    tasks back and the run goes on).
    """
    cwd_on_path()
    with user_errors():
        workflow = locate_task(target)
        runtime = workflow.runtime
        if store:
            runtime.use_store(store)
        values = [parse_value(a) for a in args or []]
        started = workflow.start(*values)
        err.print(f"run {started.id} started ({workflow.name})", highlight=False)
        if detach:
            err.print(_goes_on(runtime, started.id), highlight=False)
            typer.echo(started.id)
            return
        options = {"slots": slots} if slots else {}
        embedded = Embedded(runtime, options)
        try:
            with interruptible(), embedded:
                try:
                    value = with_timeout(
                        lambda: follow(
                            started, label=workflow.name, show=progress, check=embedded.check
                        ),
                        timeout,
                    )
                except (Interrupted, TimeoutError):
                    embedded.hand_back()
                    raise
        except Interrupted as exc:
            err.print(f"{exc}: {_goes_on(runtime, started.id)}", highlight=False)
            raise typer.Exit(130) from None
        except TimeoutError:
            err.print(
                f"[red]error:[/red] run {started.id} did not finish within {timeout} s; "
                + _goes_on(runtime, started.id),
                highlight=False,
            )
            raise typer.Exit(3) from None
        except TaskError as exc:
            raise ended_badly(started, exc) from None
        ended = started.info()
        if troubles(ended.counts, ""):
            err.print(
                f"run {started.id} succeeded, though {troubles(ended.counts, '')} of its "
                f"{sum(ended.counts.values())} tasks (the workflow went on without them): "
                f"accord tasks {started.id}",
                highlight=False,
            )
        out.print_json(json.dumps(value, default=repr))


def _goes_on(runtime: Runtime, run_id: int) -> str:
    """What becomes of a run its command stopped waiting for, and what to do."""
    follow_it = f"follow it with: accord watch {run_id}"
    live = Embedded.live_nodes(runtime)
    if live:
        return f"run {run_id} goes on, on {live} live node(s) of app {runtime.name}; {follow_it}"
    where = "" if runtime.store_url == DEFAULT_URL else f" --store {runtime.store_url}"
    return (
        f"run {run_id} goes on once a node serves app {runtime.name} (none is live now): "
        f"accord worker --app {runtime.locator()}{where}; {follow_it}"
    )


StateOpt = Annotated[
    str | None, typer.Option("--state", help="only in this state (running, succeeded, ...)")
]
NameOpt = Annotated[str | None, typer.Option("--name", help="only with this name")]


@cli.command()
def runs(
    store: StoreOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 20,
    state: StateOpt = None,
    name: NameOpt = None,
    since: SinceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List recent runs, newest first."""
    with existing_store(store) as s:
        after = None if since is None else s.now() - parse_duration(since, "--since")
        found = s.runs(limit, state=_state(state, RUN_STATES), name=name, since=after)
        if as_json:
            json_lines(found)
            return
        table = Table("run", "name", "app", "state", "tasks", "started", "took", "error")
        for r in found:
            total = sum(r.counts.values())
            done = r.counts.get("succeeded", 0)
            table.add_row(
                str(r.id),
                r.name,
                r.app,
                r.state,
                f"{done}/{total}" + troubles(r.counts, " "),
                when(r.created_at),
                secs(r.created_at, r.finished_at),
                (r.error or "")[:60],
            )
        out.print(table)


@cli.command()
def tasks(
    run_id: Annotated[int, typer.Argument(help="the run's id")],
    store: StoreOpt = None,
    state: StateOpt = None,
    name: NameOpt = None,
    node: Annotated[str | None, typer.Option("--node", help="only run by this node")] = None,
    since: SinceOpt = None,
    tree: Annotated[bool, typer.Option("--tree", help="as a tree of parents and inputs")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show each task of a run: state, node, attempts, timings, error."""
    with existing_store(store) as s:
        info = s.run(run_id)
        wanted = _state(state, [t.value for t in TaskState])
        after = None if since is None else s.now() - parse_duration(since, "--since")
        every = s.tasks(run_id)
        found = [
            t
            for t in every
            if (wanted is None or t.state.value == wanted)
            and (name is None or t.name == name)
            and (node is None or t.node_name == node)
            and (after is None or t.created_at >= after)
        ]
        if as_json:
            json_lines(found)
            return
        if tree:
            out.print(task_tree(info, found, s.dependencies(run_id)))
            return
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
            title=f"run {info.id} ({info.name}): {info.state}" + _cause_of(info, every),
        )
        for t in found:
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
                f"{t.attempts}/{t.max_attempts}"
                + (f" +{t.losses}/{t.max_losses} lost" if t.losses else ""),
                secs(t.created_at, t.started_at),
                secs(t.started_at, t.finished_at),
                note[:100],
            )
        out.print(table)


@cli.command()
def status(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """Queues, live nodes, and ready tasks that no live node can run."""
    with existing_store(store) as s:
        nodes_now = s.nodes()
        classes = s.ready_classes()
        queues = sorted({c[0] for c in classes} | {n.queue for n in nodes_now})
        stuck = unschedulable(classes, nodes_now)
        if as_json:
            apps = []
            for queue in queues:
                live = live_nodes(nodes_now, queue)
                apps.append(
                    {
                        "app": queue,
                        "ready": sum(c[3] for c in classes if c[0] == queue),
                        "live_nodes": len(live),
                        "slots": sum(n.slots for n in live),
                        "running": sum(n.running for n in live),
                    }
                )
            keys = ("app", "requires", "resources", "tasks", "why")
            document = {
                "store": s.url,
                "apps": apps,
                "unschedulable": [dict(zip(keys, row, strict=True)) for row in stuck],
            }
            typer.echo(json.dumps(document))
            return
        out.print(f"store: {s.url}", highlight=False)
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
    with existing_store(store) as s:
        before = s.run(run_id)
        if before.state != "running":
            err.print(
                f"[red]error:[/red] run {run_id} has already ended ({before.state}); "
                "nothing to cancel",
                highlight=False,
            )
            raise typer.Exit(1)
        count = s.cancel_run(run_id, "cancelled from the command line")
        out.print(f"run {run_id}: {count} task(s) cancelled")


@cli.command()
def events(
    run_id: Annotated[int | None, typer.Argument(help="only this run")] = None,
    store: StoreOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 50,
    kind: Annotated[str | None, typer.Option("--kind", help="only events of this kind")] = None,
    task: Annotated[int | None, typer.Option("--task", help="only of this task")] = None,
    since: SinceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the event log: failures, retries, lease expiries, node starts and stops."""
    with existing_store(store) as s:
        if run_id is not None:
            s.run(run_id)  # NotFoundError: no such run
        if task is not None and run_id is None:
            run_id = s.task(task).run_id  # (and NotFoundError: no such task)
        after = None if since is None else s.now() - parse_duration(since, "--since")
        found = s.events(run_id, limit, task_id=task, kind=kind, since=after)
        if as_json:
            json_lines(found)
            return
        table = Table("at", "kind", "run", "task", "node", "detail")
        for e in found:
            table.add_row(
                when(e.at),
                e.kind,
                str(e.run_id or "-"),
                str(e.task_id or "-"),
                str(e.node_id or "-"),
                (e.detail or "")[:100],
            )
        out.print(table)


RUN_STATES = ["running", *TERMINAL]


def _state(state: str | None, known: list[str]) -> str | None:
    if state is not None and state not in known:
        raise ConfigError(f"--state {state!r} is not a state; use one of {', '.join(known)}")
    return state


def _cause_of(run: RunInfo, tasks: list[TaskInfo]) -> str:
    if run.state != "failed":
        return ""
    cause = run_cause(tasks)
    if cause is None:
        return ""
    kind = f"{cause.error_type}: " if cause.error_type else ""
    return f", through task {cause.id} ({cause.name}): {kind}{(cause.error or '')[:80]}"
