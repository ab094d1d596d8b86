"""``accord task``, ``watch``, ``retry``, ``rerun``: one task whole, following
a run, running again what failed."""

from __future__ import annotations

import json
import reprlib
from collections import defaultdict
from typing import Annotated

import typer
from rich.table import Table
from rich.tree import Tree

from accord import serde
from accord.cli.common import (
    JsonOpt,
    StoreOpt,
    cli,
    err,
    existing_store,
    json_lines,
    out,
    plain,
    secs,
    when,
)
from accord.cli.progress import Interrupted, ended_badly, follow, interruptible
from accord.data import Objects
from accord.errors import TaskError
from accord.store import Store
from accord.store.records import RunInfo, TaskInfo, TaskState
from accord.tasks import Run
from accord.tasks.registry import Runtime

Deps = list[tuple[int, int, int]]  # (task, position, dependency); position -1: forwarded

_short = reprlib.Repr()
_short.maxstring = 160
_short.maxother = 60
_short.maxlist = _short.maxtuple = _short.maxdict = 6
_short.maxlevel = 3


class _Input:
    """Where a dependency's result goes in a task's arguments."""

    def __init__(self, task_id: int) -> None:
        self.task_id = task_id

    def __repr__(self) -> str:
        return f"<result of task {self.task_id}>"


def arguments(store: Store, task: TaskInfo, deps: Deps) -> str:
    """A short rendering of the task's arguments: ``(1, 'a', key=[...])``."""
    inputs = [_Input(dep) for t, pos, dep in sorted(deps) if t == task.id and pos >= 0]
    try:
        args, kwargs = serde.loads_args(store.task_args(task.id), inputs, Objects(store))
    except Exception as exc:  # an object gone, a value this process cannot decode
        return f"(cannot be shown: {exc})"
    shown = [_short.repr(a) for a in args] + [f"{k}={_short.repr(v)}" for k, v in kwargs.items()]
    return "(" + ", ".join(shown) + ")"


def root_cause(task: TaskInfo, by_id: dict[int, TaskInfo], deps: Deps) -> TaskInfo | None:
    """The failed task that a cancelled (or forwarded) task ended through."""
    inputs: dict[int, list[int]] = defaultdict(list)
    for t, _, dep in deps:
        inputs[t].append(dep)
    seen = {task.id}
    current = task
    while current.state in (TaskState.CANCELLED, TaskState.FAILED):
        ended = [
            by_id[d]
            for d in inputs.get(current.id, [])
            if d in by_id and by_id[d].state in (TaskState.FAILED, TaskState.CANCELLED)
        ]
        if not ended:
            break
        ended.sort(key=lambda t: t.state is not TaskState.FAILED)
        current = ended[0]
        if current.id in seen:
            break
        seen.add(current.id)
    if current is task or current.state is not TaskState.FAILED:
        return None
    return current


def _what(t: TaskInfo) -> str:
    return f"task {t.id} ({t.name})"


def _error(t: TaskInfo) -> str:
    return f"{t.error_type + ': ' if t.error_type else ''}{t.error or ''}"


@cli.command()
def task(
    task_id: Annotated[int, typer.Argument(help="the task's id")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one task whole: arguments, attempts, error and traceback, events,
    inputs and children, and the root cause of a task that ended through
    another's failure."""
    with existing_store(store) as s:
        t = s.task(task_id)
        run = s.run(t.run_id)
        tasks = s.tasks(t.run_id)
        by_id = {x.id: x for x in tasks}
        deps = s.dependencies(t.run_id)
        inputs = [by_id[d] for x, pos, d in deps if x == t.id and d in by_id]
        children = [x for x in tasks if x.parent_id == t.id]
        cause = root_cause(t, by_id, deps)
        events = s.events(t.run_id, 1000, task_id=t.id)
        shown_args = arguments(s, t, deps)
    if as_json:
        document = {
            "task": plain(t),
            "run": {"id": run.id, "name": run.name, "state": run.state},
            "arguments": shown_args,
            "inputs": [{"id": x.id, "name": x.name, "state": x.state.value} for x in inputs],
            "children": [{"id": x.id, "name": x.name, "state": x.state.value} for x in children],
            "root_cause": None if cause is None else plain(cause),
            "events": plain(events),
        }
        typer.echo(json.dumps(document, default=str))
        return
    rows: list[tuple[str, str]] = [
        ("run", f"{run.id} ({run.name}): {run.state}"),
        ("state", t.state.value),
        ("node", t.node_name or "-"),
        (
            "attempts",
            f"{t.attempts} of {t.max_attempts}; leases lost {t.losses} of {t.max_losses}",
        ),
        (
            "times",
            f"queued {when(t.created_at)}, started {when(t.started_at)}, "
            f"finished {when(t.finished_at)} (ran {secs(t.started_at, t.finished_at)})",
        ),
        ("arguments", shown_args),
        ("parent", "-" if t.parent_id is None else _what(by_id[t.parent_id])),
        ("inputs", ", ".join(f"{_what(x)}: {x.state.value}" for x in inputs) or "-"),
        ("children", ", ".join(f"{_what(x)}: {x.state.value}" for x in children) or "-"),
    ]
    if t.error or t.error_type:
        rows.append(("error", _error(t)))
    if cause is not None:
        rows.append(("root cause", f"{_what(cause)} failed: {_error(cause)}"))
    out.print(f"[bold]task {t.id} ({t.name})[/bold]")
    for key, value in rows:
        out.print(f"  {key + ':':<12}{value}", highlight=False, markup=False)
    if t.traceback:
        out.print("  traceback:", highlight=False)
        out.print(t.traceback.rstrip(), highlight=False, markup=False)
    if cause is not None and cause.traceback:
        out.print(f"  traceback of task {cause.id}:", highlight=False)
        out.print(cause.traceback.rstrip(), highlight=False, markup=False)
    if not events:
        out.print("  events:     -", highlight=False)
        return
    table = Table("at", "kind", "node", "detail", title="events")
    for e in events:
        table.add_row(when(e.at), e.kind, str(e.node_id or "-"), (e.detail or "")[:120])
    out.print(table)


def task_tree(run: RunInfo, tasks: list[TaskInfo], deps: Deps) -> Tree:
    """The run's tasks as a tree of parents (children below the task that
    submitted them), each with the tasks whose results it takes."""
    by_id = {t.id: t for t in tasks}
    kids: dict[int | None, list[TaskInfo]] = defaultdict(list)
    for t in tasks:
        kids[t.parent_id if t.parent_id in by_id else None].append(t)
    inputs: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for t_id, pos, dep in deps:
        inputs[t_id].append((pos, dep))
    colour = {
        TaskState.SUCCEEDED: "green",
        TaskState.FAILED: "red",
        TaskState.CANCELLED: "yellow",
        TaskState.RUNNING: "cyan",
    }

    def label(t: TaskInfo) -> str:
        text = f"[{colour.get(t.state, 'white')}]{t.id} {t.name}: {t.state.value}[/]"
        fed = inputs.get(t.id, [])
        takes = [str(dep) for pos, dep in sorted(fed) if pos >= 0]
        forwarded = [str(dep) for pos, dep in fed if pos < 0]
        if takes:
            text += f" [dim]<- {', '.join(takes)}[/dim]"
        if forwarded:
            text += f" [dim]= {', '.join(forwarded)}[/dim]"
        if t.state in (TaskState.FAILED, TaskState.CANCELLED) and t.error:
            text += f" [dim]({t.error[:80]})[/dim]"
        return text

    tree = Tree(f"[bold]run {run.id} ({run.name}): {run.state}[/bold]")

    def grow(branch: Tree, parent: int | None) -> None:
        for t in kids.get(parent, []):
            grow(branch.add(label(t)), t.id)

    grow(tree, None)
    return tree


@cli.command()
def watch(
    run_id: Annotated[int, typer.Argument(help="the run's id")],
    store: StoreOpt = None,
) -> None:
    """Follow a run's progress until it ends, then print its summary.

    Exit status as ``accord run``'s: 0 succeeded, 1 failed, 4 cancelled,
    130 interrupted (the run goes on)."""
    with existing_store(store) as s:
        info = s.run(run_id)
        run = Run(Runtime(info.app, s), run_id)
        try:
            with interruptible():
                value = follow(run, label=f"run {run_id} ({info.name})")
        except Interrupted:
            err.print(f"stopped watching run {run_id}; it goes on", highlight=False)
            raise typer.Exit(130) from None
        except TaskError as exc:
            raise ended_badly(run, exc) from None
        out.print_json(json.dumps(value, default=repr))


@cli.command()
def retry(
    task_id: Annotated[int, typer.Argument(help="a failed or cancelled task")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a failed or cancelled task again, with the tasks its end cancelled.

    Its attempts start from zero; its run is open again until they end."""
    with existing_store(store) as s:
        reopened = s.retry_task(task_id)
        tasks = {t.id: t for t in s.tasks(s.task(task_id).run_id)}
    if as_json:
        json_lines(tasks[i] for i in reopened)
        return
    others = ", ".join(_what(tasks[i]) for i in reopened[1:]) or "no other task"
    out.print(f"{_what(tasks[task_id])} runs again; with it: {others}", highlight=False)


@cli.command()
def rerun(
    run_id: Annotated[int, typer.Argument(help="the run to start again")],
    store: StoreOpt = None,
) -> None:
    """Start a new run with the same workflow (or tasks) and arguments."""
    with existing_store(store) as s:
        new = s.rerun(run_id)
    out.print(f"run {new} started (a rerun of run {run_id}): accord watch {new}")


def run_cause(tasks: list[TaskInfo]) -> TaskInfo | None:
    """The failure a failed run ended through: its first failed task."""
    failed = [t for t in tasks if t.state is TaskState.FAILED]
    return min(failed, key=lambda t: (t.finished_at or 0.0, t.id)) if failed else None
