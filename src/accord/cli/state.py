"""``accord state ...``, ``accord mailbox ...`` and ``accord topic ...``: the state
store and messaging from the shell, through the public API.

Keys are full keys (``pipeline/config/lr``) unless ``--app``, ``--run`` or
``--agent`` names a namespace. Values are given and printed as JSON (a value
that is not JSON is taken as a string). Errors a user can cause print one line
and exit with 2; a key that is absent exits with 1.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from accord.cli.common import (
    StoreOpt,
    command_group,
    err,
    existing_store,
    out,
    parse_value,
)
from accord.data import Objects
from accord.errors import ConfigError
from accord.messaging import Mailbox, Topic
from accord.state import Change, Entry, State
from accord.store import Store

state_cli = command_group("state", "Read, write and watch the state store.")
mailbox_cli = command_group("mailbox", "Look into mailboxes; send a message.")
topic_cli = command_group("topic", "Look into topics; publish a message.")

AppOpt = Annotated[
    str | None, typer.Option("--app", envvar="ACCORD_APP_NAME", help="the app's namespace")
]
RunOpt = Annotated[int | None, typer.Option("--run", help="the namespace of this run")]
AgentOpt = Annotated[str | None, typer.Option("--agent", help="the namespace of this agent")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON lines")]


def register(cli: typer.Typer) -> None:
    """Add the ``state``, ``mailbox`` and ``topic`` command groups to ``cli``."""
    cli.add_typer(state_cli, name="state")
    cli.add_typer(mailbox_cli, name="mailbox")
    cli.add_typer(topic_cli, name="topic")


def _namespace(store: Store, app: str | None, run: int | None, agent: str | None) -> State:
    state = State(store, offload=Objects(store))
    if run is not None:
        if app is None:
            app = store.run(run).app
        return state.scope(app).run(run)
    if agent is not None:
        if app is None:
            raise ConfigError("--agent needs --app (agents live in an app's namespace)")
        return state.scope(app).agent(agent)
    if app is not None:
        return state.scope(app)
    return state


def _json(value: Any) -> str:
    return json.dumps(value, default=repr, ensure_ascii=False)


def _entry(e: Entry) -> dict[str, Any]:
    return {
        "key": e.key,
        "value": e.value,
        "revision": e.revision,
        "version": e.version,
        "lease": e.lease,
    }


def _change(c: Change) -> dict[str, Any]:
    return {
        "kind": c.kind.value,
        "key": c.key,
        "value": c.value,
        "revision": c.revision,
        "version": c.version,
        "at": c.at,
    }


@state_cli.command("get")
def get(
    key: Annotated[str, typer.Argument(help="the key")],
    store: StoreOpt = None,
    app: AppOpt = None,
    run: RunOpt = None,
    agent: AgentOpt = None,
    revision: Annotated[int | None, typer.Option(help="read at this revision")] = None,
) -> None:
    """Print a key's entry as JSON (exit 1 if it is absent)."""
    with existing_store(store) as s:
        entry = _namespace(s, app, run, agent).get(key, revision=revision)
        if entry is None:
            err.print(f"[red]error:[/red] key {key!r} is absent", highlight=False)
            raise typer.Exit(1)
        out.print(_json(_entry(entry)), soft_wrap=True)


@state_cli.command("put")
def put(
    key: Annotated[str, typer.Argument(help="the key")],
    value: Annotated[str, typer.Argument(help="the value (JSON, else text)")],
    store: StoreOpt = None,
    app: AppOpt = None,
    run: RunOpt = None,
    agent: AgentOpt = None,
    expect_version: Annotated[
        int | None, typer.Option(help="write only if the key is at this version (0: absent)")
    ] = None,
) -> None:
    """Write a key; print the new revision."""
    with existing_store(store, create=True) as s:
        state = _namespace(s, app, run, agent)
        out.print(state.put(key, parse_value(value), expect_version=expect_version))


@state_cli.command("delete")
def delete(
    key: Annotated[str, typer.Argument(help="the key")],
    store: StoreOpt = None,
    app: AppOpt = None,
    run: RunOpt = None,
    agent: AgentOpt = None,
    prefix: Annotated[bool, typer.Option(help="delete every key under KEY")] = False,
) -> None:
    """Delete a key (or a prefix); print how many keys went."""
    with existing_store(store) as s:
        state = _namespace(s, app, run, agent)
        out.print(state.delete_prefix(key) if prefix else int(state.delete(key)))


@state_cli.command("list")
def list_keys(
    prefix: Annotated[str, typer.Argument(help="only keys under this prefix")] = "",
    store: StoreOpt = None,
    app: AppOpt = None,
    run: RunOpt = None,
    agent: AgentOpt = None,
    revision: Annotated[int | None, typer.Option(help="list at this revision")] = None,
    limit: Annotated[int | None, typer.Option(min=1)] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the keys under a prefix with their values, revisions and versions."""
    with existing_store(store) as s:
        entries = _namespace(s, app, run, agent).get_prefix(prefix, revision=revision, limit=limit)
        if as_json:
            for e in entries:
                out.print(_json(_entry(e)), soft_wrap=True)
            return
        table = Table("key", "value", "revision", "version", "lease")
        for e in entries:
            table.add_row(
                e.key, _json(e.value)[:80], str(e.revision), str(e.version), str(e.lease or "")
            )
        out.print(table)


@state_cli.command("watch")
def watch(
    prefix: Annotated[str, typer.Argument(help="watch keys under this prefix")] = "",
    store: StoreOpt = None,
    app: AppOpt = None,
    run: RunOpt = None,
    agent: AgentOpt = None,
    from_revision: Annotated[
        int | None, typer.Option(help="start at this revision (default: changes from now)")
    ] = None,
    exact: Annotated[bool, typer.Option(help="watch the one key PREFIX")] = False,
    count: Annotated[int | None, typer.Option(min=1, help="stop after this many")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="stop after this many seconds without a change")
    ] = None,
) -> None:
    """Print every change as a JSON line, in revision order."""
    with existing_store(store) as s:
        state = _namespace(s, app, run, agent)
        seen = 0
        with state.watch(prefix, start_revision=from_revision, exact=exact) as w:
            while count is None or seen < count:
                change = w.get(timeout)
                if change is None:
                    break
                out.print(_json(_change(change)), soft_wrap=True)
                sys.stdout.flush()
                seen += 1


@state_cli.command("history")
def history(
    key: Annotated[str, typer.Argument(help="the key")],
    store: StoreOpt = None,
    app: AppOpt = None,
    run: RunOpt = None,
    agent: AgentOpt = None,
    prefix: Annotated[bool, typer.Option(help="every key under KEY")] = False,
    limit: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Print the kept changes of a key (or prefix) as JSON lines, oldest first."""
    with existing_store(store) as s:
        for c in _namespace(s, app, run, agent).history(key, prefix=prefix, limit=limit):
            out.print(_json(_change(c)), soft_wrap=True)


@state_cli.command("snapshot")
def snapshot(
    name: Annotated[str, typer.Argument(help="the snapshot's name")],
    store: StoreOpt = None,
    app: AppOpt = None,
    run: RunOpt = None,
    agent: AgentOpt = None,
) -> None:
    """Name the current revision; print it."""
    with existing_store(store) as s:
        out.print(_namespace(s, app, run, agent).snapshot(name))


@state_cli.command("snapshots")
def snapshots(
    store: StoreOpt = None,
    app: AppOpt = None,
    run: RunOpt = None,
    agent: AgentOpt = None,
) -> None:
    """List the namespace's snapshots."""
    with existing_store(store) as s:
        table = Table("name", "revision")
        for snap in _namespace(s, app, run, agent).snapshots():
            table.add_row(snap.name, str(snap.revision))
        out.print(table)


@state_cli.command("rollback")
def rollback(
    prefix: Annotated[str, typer.Argument(help="roll back the keys under this prefix")] = "",
    to: Annotated[str, typer.Option(help="a snapshot name, or a revision number")] = "",
    store: StoreOpt = None,
    app: AppOpt = None,
    run: RunOpt = None,
    agent: AgentOpt = None,
) -> None:
    """Make the keys under a prefix what they were at a snapshot or revision."""
    with existing_store(store) as s:
        if not to:
            raise ConfigError("rollback needs --to SNAPSHOT or --to REVISION")
        target: str | int = int(to) if to.isdigit() else to
        out.print(_namespace(s, app, run, agent).rollback(prefix, to=target))


@state_cli.command("compact")
def compact(
    store: StoreOpt = None,
    revision: Annotated[int | None, typer.Option(help="drop history before this revision")] = None,
    keep: Annotated[int | None, typer.Option(help="keep the last KEEP revisions")] = None,
) -> None:
    """Drop old history (store-wide); print the compaction point reached."""
    with existing_store(store) as s:
        out.print(State(s).compact(revision, keep=keep))


@mailbox_cli.command("stats")
def mailbox_stats(
    name: Annotated[str, typer.Argument(help="the mailbox")],
    store: StoreOpt = None,
) -> None:
    """Print how many messages are ready, in flight and acknowledged."""
    with existing_store(store) as s:
        out.print(_json(Mailbox(s, name).stats()))


@mailbox_cli.command("send")
def mailbox_send(
    name: Annotated[str, typer.Argument(help="the mailbox")],
    payload: Annotated[str, typer.Argument(help="the payload (JSON, else text)")],
    store: StoreOpt = None,
    msg_id: Annotated[str | None, typer.Option("--id", help="message id (dedup)")] = None,
) -> None:
    """Send one message; print its id."""
    with existing_store(store, create=True) as s:
        out.print(Mailbox(s, name, offload=Objects(s)).send(parse_value(payload), id=msg_id))


@topic_cli.command("publish")
def topic_publish(
    name: Annotated[str, typer.Argument(help="the topic")],
    payload: Annotated[str, typer.Argument(help="the payload (JSON, else text)")],
    store: StoreOpt = None,
    msg_id: Annotated[str | None, typer.Option("--id", help="message id (dedup)")] = None,
) -> None:
    """Publish one message; print its offset."""
    with existing_store(store, create=True) as s:
        topic = Topic(s, name, offload=Objects(s))
        out.print(topic.publish(parse_value(payload), id=msg_id))


@topic_cli.command("tail")
def topic_tail(
    name: Annotated[str, typer.Argument(help="the topic")],
    store: StoreOpt = None,
    from_offset: Annotated[int | None, typer.Option(help="first offset (default: last 10)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 10,
) -> None:
    """Print messages of a topic as JSON lines, without subscribing."""
    with existing_store(store) as s:
        topic = Topic(s, name, offload=Objects(s))
        first, nxt = topic.offsets()
        start = max(first, nxt - limit) if from_offset is None else from_offset
        for m in topic.read(start, limit):
            line = {"offset": m.offset, "id": m.id, "payload": m.payload, "at": m.published_at}
            out.print(_json(line), soft_wrap=True)


@topic_cli.command("info")
def topic_info(
    name: Annotated[str, typer.Argument(help="the topic")],
    store: StoreOpt = None,
) -> None:
    """Print the topic's offsets and its subscribers' positions."""
    with existing_store(store) as s:
        topic = Topic(s, name, offload=Objects(s))
        first, nxt = topic.offsets()
        info = {"first_offset": first, "next_offset": nxt, "subscribers": topic.subscribers()}
        out.print(_json(info), soft_wrap=True)
