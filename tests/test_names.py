"""One rule for names, the same on both backends (issue "Hardening the
kernel", items 6 and 13).

Apps, tasks, queues, limit keys, mailboxes and topics take what users write
(``my-app``, ``billing.v2``, letters of any script) and refuse, at the first
call and before anything is written, what a store cannot hold or what would
be ambiguous. Strings given to the API (idempotency keys, node names,
capabilities) are refused on both backends when either store could not hold
them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import accord
from apps import flows as f

Counts = Callable[[], dict[str, int]]

ACCEPTED = [
    "my-app",
    "billing.v2",
    "café",
    "ns:worker",
    "_private",
    "2024-orders",
    "数据",
    "x" * 200,
]
REFUSED = [
    ("", "is empty"),
    ("has space", "contains a space at position 3"),
    ("a/b", "contains '/' (U+002F) at position 1"),
    ("a,b", "contains ',' (U+002C)"),
    ("tab\t", "contains '\\t' (U+0009)"),
    ("-x", "starts with '-'"),
    (".hidden", "starts with '.'"),
    ("a\x00b", "contains a NUL character"),
    ("caf\udce9", "lone surrogate"),
    ("x" * 201, "201 characters long, over the limit of 200"),
]


def _noop() -> None:
    return None


@pytest.fixture
def opened(flows: accord.App) -> Iterator[accord.App]:
    f.square.submit(1)  # the store exists and holds a task
    yield flows


@pytest.mark.parametrize("name", ACCEPTED)
def test_names_users_write_are_accepted_everywhere(store_url: str, name: str) -> None:
    with accord.App(name, store=store_url) as app:
        task = app.task(name=name)(_noop)
        limited = app.task(name=f"{name[:150]}.limited", concurrency=2, limit_key=name)(_noop)
        handle = task.submit()
        info = handle.info()
        assert (info.name, info.queue) == (name, name)
        assert limited.submit().info().queue == name
        app.mailbox(name).send("hello")
        message = app.mailbox(name).receive(timeout=5)
        assert message is not None and message.payload == "hello"
        assert message.ack()
        app.topic(name).publish("news")
        assert [m.payload for m in app.topic(name).read(0)] == ["news"]
        app.state.put("k", 1)
        assert app.state.value("k") == 1
        # A node serves the app's queue under that name.
        with app.embedded_node(mode="thread", slots=1):
            assert handle.result(timeout=30) is None


@pytest.mark.parametrize(("name", "why"), REFUSED, ids=repr)
def test_names_a_store_cannot_hold_are_refused_first(
    opened: accord.App, row_counts: Counts, name: str, why: str
) -> None:
    before = row_counts()
    calls: list[tuple[str, Callable[[], object]]] = [
        ("app name", lambda: accord.App(name)),
        ("task name", lambda: opened.task(name=name)(_noop)),
        ("limit_key", lambda: opened.task(name="lk", concurrency=1, limit_key=name)(_noop)),
        ("mailbox name", lambda: opened.mailbox(name)),
        ("topic name", lambda: opened.topic(name)),
    ]
    for what, call in calls:
        with pytest.raises(accord.ConfigError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith(f"{what} "), message
        assert why in message, message
        assert caught.value.argument == what  # type: ignore[attr-defined]
        if "NUL" not in why and "surrogate" not in why:
            # What to do: the rule, with examples.
            assert "for example 'my-app', 'billing.v2'" in message
    assert row_counts() == before
    assert "lk" not in opened.tasks


def test_names_that_are_not_strings(opened: accord.App) -> None:
    for bad in (None, 3, b"bytes"):
        with pytest.raises(accord.ConfigError, match="it must be a string"):
            accord.App(bad)  # type: ignore[arg-type]
        with pytest.raises(accord.ConfigError, match="it must be a string"):
            opened.mailbox(bad)  # type: ignore[arg-type]


# -- strings given to the API (item 6) ---------------------------------------------


@pytest.mark.parametrize(
    ("key", "why"),
    [("order-\udce9", "lone surrogate"), ("a\x00b", "NUL")],
    ids=["surrogate", "nul"],
)
def test_bad_idempotency_keys_are_config_errors(
    opened: accord.App, row_counts: Counts, key: str, why: str
) -> None:
    before = row_counts()
    with pytest.raises(accord.ConfigError, match=why):
        f.square.with_options(idempotency_key=key).submit(2)
    assert row_counts() == before


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"name": "node-\udce9"}, "node name 'node-\\\\udce9' is not valid text"),
        ({"name": "a\x00b"}, "node name 'a\\\\x00b' contains a NUL"),
        ({"name": ""}, "node name is empty"),
        ({"capabilities": ["gpu\x00"]}, "capability 'gpu\\\\x00' contains a NUL"),
        ({"capabilities": ["caf\udce9"]}, "capability .* lone surrogate"),
    ],
)
def test_bad_node_strings_are_config_errors(
    opened: accord.App, row_counts: Counts, options: dict[str, object], why: str
) -> None:
    before = row_counts()
    with pytest.raises(accord.ConfigError, match=why):
        opened.node(mode="thread", slots=1, **options)
    assert row_counts() == before
    assert opened.store.nodes(include_stopped=True) == []


@pytest.mark.parametrize("requires", [["gpu\x00"], ["caf\udce9"]], ids=["nul", "surrogate"])
def test_requirements_no_store_can_hold_are_refused(
    opened: accord.App, row_counts: Counts, requires: list[str]
) -> None:
    before = row_counts()
    with pytest.raises(accord.ConfigError, match="requires"):
        opened.task(name="needs", requires=requires)(_noop)
    with pytest.raises(accord.ConfigError, match="requires"):
        f.square.with_options(requires=requires).submit(3)
    assert row_counts() == before
