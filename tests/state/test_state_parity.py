"""Bad input gets the same answer on SQLite and PostgreSQL (G9).

PostgreSQL's text cannot hold NUL and SQLite's can; PostgreSQL stores NaN
(and orders it above every number) where SQLite stores NULL. Such input is
refused before it reaches the store, with the same error on both backends,
and nothing is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import accord

NUL = "a\x00b"


@pytest.fixture
def used(app: accord.App, row_counts: Callable[[], dict[str, int]]) -> Iterator[accord.App]:
    """The app with a little of everything stored; nothing may change after."""
    app.state.put("k", 1)
    app.state.snapshot("s")
    app.mailbox("box").send("m", id="m")
    app.topic("t").publish("p")
    app.topic("t").subscribe("reader")
    before = row_counts()
    yield app
    assert row_counts() == before


def _nul_calls(app: accord.App) -> list[tuple[str, Callable[[], Any]]]:
    state, box, topic = app.state, app.mailbox("box"), app.topic("t")
    return [
        ("key", lambda: state.put(NUL, 1)),
        ("key", lambda: state.get(NUL)),
        ("key", lambda: state.delete(NUL)),
        ("key", lambda: state.history(NUL)),
        ("key", lambda: state.txn().compare(NUL, "version", "==", 0)),
        ("key", lambda: state.txn().then_delete(NUL)),
        ("prefix", lambda: state.get_prefix(NUL)),
        ("prefix", lambda: state.history(NUL, prefix=True)),
        ("prefix", lambda: state.delete_prefix(NUL)),
        ("prefix", lambda: state.watch(NUL)),
        ("prefix", lambda: state.rollback(NUL, to="s")),
        ("watched key", lambda: state.watch(NUL, exact=True)),
        ("snapshot name", lambda: state.snapshot(NUL)),
        ("snapshot name", lambda: state.delete_snapshot(NUL)),
        ("snapshot name", lambda: state.rollback("", to=NUL)),
        ("namespace", lambda: state.scope(NUL)),
        ("namespace", lambda: accord.State(app.store, NUL)),
        ("agent name", lambda: state.agent(NUL)),
        ("lock name", lambda: state.lock(NUL)),
        ("election name", lambda: state.election(NUL)),
        ("mailbox name", lambda: app.mailbox(NUL)),
        ("topic name", lambda: app.topic(NUL)),
        ("message id", lambda: box.send("x", id=NUL)),
        ("message id", lambda: box.send_many(["x", "y"], ids=["fine", NUL])),
        ("message id", lambda: topic.publish("x", id=NUL)),
        ("subscriber name", lambda: topic.subscribe(NUL)),
        ("subscriber name", lambda: topic.unsubscribe(NUL)),
    ]


def test_nul_in_names_is_refused_and_changes_nothing(used: accord.App) -> None:
    for argument, call in _nul_calls(used):
        with pytest.raises(accord.ConfigError) as caught:
            call()
        error = caught.value
        assert isinstance(error, ValueError)
        assert error.argument == argument, argument  # type: ignore[attr-defined]
        assert f"{argument} 'a\\x00b' contains a NUL character" in str(error)
        assert "remove it" in str(error)


def test_nul_in_values_and_payloads_is_kept(app: accord.App) -> None:
    """Values and payloads are bytes: NUL is data there, on both backends."""
    app.state.put("nul", {NUL: NUL})
    assert app.state.value("nul") == {NUL: NUL}
    app.mailbox("box").send(NUL)
    message = app.mailbox("box").receive(timeout=1)
    assert message is not None and message.payload == NUL
    app.topic("t").publish(NUL)
    assert app.topic("t").read(0)[0].payload == NUL


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0, "1", True], ids=repr)
def test_delays_must_be_finite_numbers(used: accord.App, bad: Any) -> None:
    box = used.mailbox("box")
    message = box.receive(timeout=1)
    assert message is not None
    with pytest.raises(accord.ConfigError, match="finite number of seconds"):
        message.nack(bad)
    with pytest.raises(accord.ConfigError, match="finite number of seconds"):
        box.purge_acked(older_than=bad)
    assert message.nack(0)  # the message was still held: nothing had changed


@pytest.mark.parametrize("bad", [math.nan, -1, "1", True], ids=repr)
def test_timeouts_must_be_numbers_not_nan(used: accord.App, bad: Any) -> None:
    state = used.state
    waits: list[Callable[[], Any]] = [
        lambda: used.mailbox("box").receive(timeout=bad),
        lambda: state.watch("").get(timeout=bad),
        lambda: state.watch("").poll(timeout=bad),
        lambda: used.topic("t").subscribe("reader").get(timeout=bad),
        lambda: state.lock("l").acquire(timeout=bad),
        lambda: state.election("e").campaign("me", timeout=bad),
    ]
    for wait in waits:
        with pytest.raises(accord.ConfigError, match="timeout"):
            wait()


@pytest.mark.parametrize("huge", [1 << 62, 1 << 63, 10**30], ids=["2^62", "2^63", "10^30"])
def test_integers_past_the_stores_range_are_refused(used: accord.App, huge: int) -> None:
    state, topic = used.state, used.topic("t")
    calls: list[Callable[[], Any]] = [
        lambda: state.get("k", revision=huge),
        lambda: state.get_prefix("", revision=huge),
        lambda: state.get_prefix("", limit=huge),
        lambda: state.history("k", start_revision=huge),
        lambda: state.put("k", 2, expect_version=huge),
        lambda: state.txn().compare("k", "revision", "<", huge),
        lambda: state.put("k", 2, lease=huge),
        lambda: state.watch("", start_revision=huge),
        lambda: state.rollback("", to=huge),
        lambda: state.compact(revision=huge),
        lambda: state.run(huge),
        lambda: topic.read(huge),
        lambda: topic.subscribe("reader", from_offset=huge),
        lambda: topic.trim(huge),
        lambda: used.mailbox("box").receive_many(huge),
    ]
    for call in calls:
        with pytest.raises(accord.ConfigError, match="too large"):
            call()


def test_numbers_in_values_round_trip(app: accord.App) -> None:
    """Values are serialised before the store: the limits are serde's, the same
    everywhere, and a NaN value is stored as it is."""
    state = app.state
    for value in [(1 << 63) - 1, -(1 << 63), 1 << 63, (1 << 64) - 1, math.inf, 1e308]:
        state.put("n", value)
        assert state.value("n") == value
    state.put("n", math.nan)
    assert math.isnan(state.value("n"))
    with pytest.raises(TypeError, match="64 bits"):
        state.put("n", 1 << 64)
