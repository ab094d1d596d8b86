"""Mailboxes and topics (G6): delivery, acknowledgement, redelivery, ids,
integrity, offsets, and bad input."""

from __future__ import annotations

import threading
import time

import pytest

import accord
from accord.messaging import MAX_PAYLOAD_BYTES
from support.common import sql


def test_send_receive_ack_in_order(app: accord.App) -> None:
    box = app.mailbox("jobs")
    ids = [box.send({"n": i}) for i in range(3)]
    assert len(set(ids)) == 3
    assert box.stats()["ready"] == 3
    got = [box.receive(timeout=1) for _ in range(3)]
    assert [m.payload["n"] for m in got if m] == [0, 1, 2]
    assert [m.id for m in got if m] == ids
    assert box.stats() == {
        "ready": 0,
        "in_flight": 3,
        "acked": 0,
        "next_visible_at": pytest.approx(time.time() + 30, abs=5),
    }
    assert box.ack([m for m in got if m]) == [True, True, True]
    assert box.receive(timeout=0) is None
    assert box.stats()["acked"] == 3 and box.stats()["in_flight"] == 0


def test_receive_many_and_send_many(app: accord.App) -> None:
    box = app.mailbox("batch")
    box.send_many(list(range(250)))
    first = box.receive_many(100, timeout=1)
    second = box.receive_many(1000, timeout=1)
    assert [m.payload for m in first + second] == list(range(250))
    assert all(box.ack(first + second))


def test_ids_make_sends_idempotent(app: accord.App) -> None:
    box = app.mailbox("dedup")
    assert box.send("hello", id="m-1") == "m-1"
    assert box.send("hello", id="m-1") == "m-1"  # a retry: stored once
    box.send_many(["a", "b", "a"], ids=["x", "y", "x"])
    assert box.stats()["ready"] == 3
    with pytest.raises(accord.ConflictError, match="another payload"):
        box.send_many(["new", "different"], ids=["z", "m-1"])
    assert box.stats()["ready"] == 3  # the whole batch was refused
    message = box.receive(timeout=1)
    assert message is not None and message.ack()
    assert box.send("hello", id="m-1") == "m-1"  # still remembered after the ack
    assert box.stats()["ready"] == 2
    assert box.purge_acked(older_than=0) == 1
    box.send("hello", id="m-1")  # forgotten after the window: a new message
    assert box.stats()["ready"] == 3


def test_unacked_messages_come_back_and_late_acks_are_refused(app: accord.App) -> None:
    box = app.mailbox("vis")
    box.send("work")
    first = box.receive(timeout=1, visibility=0.2)
    assert first is not None and first.deliveries == 1
    assert box.receive(timeout=0) is None  # hidden while the first receiver has it
    started = time.monotonic()
    second = box.receive(timeout=5, visibility=30)
    assert second is not None and second.id == first.id and second.deliveries == 2
    assert 0.1 < time.monotonic() - started < 2
    assert first.ack() is False  # its delivery is over: another receiver has it
    assert second.ack() is True
    assert second.ack() is False  # acknowledged exactly once
    assert box.stats()["acked"] == 1


def test_nack_and_extend(app: accord.App) -> None:
    box = app.mailbox("nack")
    box.send("a")
    m = box.receive(timeout=1, visibility=0.2)
    assert m is not None and m.extend(30)
    time.sleep(0.3)
    assert box.receive(timeout=0) is None  # extended: still hidden
    assert m.nack()
    again = box.receive(timeout=1)
    assert again is not None and again.deliveries == 2 and again.ack()
    with pytest.raises(accord.ConfigError):
        m.extend(0)


def test_a_waiting_receiver_wakes_on_send(app: accord.App) -> None:
    box = app.mailbox("wake")
    got: list[accord.Message] = []
    t = threading.Thread(target=lambda: got.append(box.receive(timeout=10)))  # type: ignore[arg-type]
    t.start()
    time.sleep(0.2)
    sent = time.monotonic()
    box.send("ping")
    t.join(10)
    assert got and got[0].payload == "ping"
    assert time.monotonic() - sent < 0.5
    start = time.monotonic()
    assert box.receive(timeout=0.2) is None
    assert 0.15 < time.monotonic() - start < 1


def test_bad_messages_are_refused(app: accord.App) -> None:
    box = app.mailbox("bad")
    # Without an object store to move it to, a large payload is refused.
    with pytest.raises(accord.PayloadTooLargeError, match="object store"):
        accord.Mailbox(app.store, "bad").send(b"x" * (MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(TypeError, match="cannot be serialised"):
        box.send(object())
    for name in ("", "a\x00b", "x" * 300, 3):
        with pytest.raises(accord.ConfigError):
            app.mailbox(name)  # type: ignore[arg-type]
        with pytest.raises(accord.ConfigError):
            app.topic(name)  # type: ignore[arg-type]
    with pytest.raises(accord.ConfigError):
        box.send("x", id="")
    with pytest.raises(accord.ConfigError):
        box.send_many(["a", "b"], ids=["1"])
    with pytest.raises(accord.ConfigError):
        box.receive_many(0)
    with pytest.raises(accord.ConfigError):
        box.receive(timeout=-1)
    with pytest.raises(accord.ConfigError):
        box.receive(visibility=0)
    with pytest.raises(accord.PayloadTooLargeError):
        accord.Topic(app.store, "t").publish("y" * (MAX_PAYLOAD_BYTES + 10))
    assert box.stats()["ready"] == 0 and app.topic("t").offsets() == (0, 0)


def test_corrupted_payloads_are_detected(app: accord.App, store_url: str) -> None:
    box, topic = app.mailbox("c"), app.topic("c")
    box.send({"amount": 100})
    topic.publish({"amount": 100})
    damaged = bytes.fromhex("81a6616d6f756e74cd03e7")
    sql(store_url, "UPDATE mailbox_messages SET payload = ?", (damaged,))
    sql(store_url, "UPDATE topic_messages SET payload = ?", (damaged,))
    with pytest.raises(accord.CorruptedError, match="checksum"):
        box.receive(timeout=1)
    with pytest.raises(accord.CorruptedError):
        topic.read(0)


def test_topic_every_subscriber_sees_the_same_sequence(app: accord.App) -> None:
    topic = app.topic("news")
    subs = [topic.subscribe(f"s{i}") for i in range(3)]
    seen: dict[int, list[object]] = {i: [] for i in range(3)}

    def read(i: int) -> None:
        for message in subs[i]:
            seen[i].append(message.payload)
            if len(seen[i]) == 200:
                return

    def publish(tag: str) -> None:
        for i in range(100):
            topic.publish(f"{tag}{i}")

    readers = [threading.Thread(target=read, args=(i,)) for i in range(3)]
    writers = [threading.Thread(target=publish, args=(tag,)) for tag in "ab"]
    for t in readers + writers:
        t.start()
    for t in readers + writers:
        t.join(60)
    assert seen[0] == seen[1] == seen[2] and len(seen[0]) == 200
    for tag in "ab":  # each publisher's order is kept
        mine = [p for p in seen[0] if str(p).startswith(tag)]
        assert mine == [f"{tag}{i}" for i in range(100)]
    assert [m.payload for m in topic.read(0, 1000)] == seen[0]


def test_topic_offsets_late_joiners_and_resume(app: accord.App) -> None:
    topic = app.topic("log")
    assert topic.publish("before") == 0
    late = topic.subscribe("late")  # a new subscriber starts at the end
    full = topic.subscribe("full", from_offset=0)
    assert topic.publish_many(["m1", "m2", "m3"]) == [1, 2, 3]
    assert [late.get(1).payload for _ in range(3)] == ["m1", "m2", "m3"]  # type: ignore[union-attr]
    first = full.get(1)
    assert first is not None and (first.offset, first.payload) == (0, "before")
    second = full.get(1)
    assert second is not None and second.offset == 1
    full.close()  # "m1" was handed out but not confirmed: it comes again
    assert topic.subscribers()["full"] == 1
    again = topic.subscribe("full")
    assert [m.payload for m in [again.get(1), again.get(1), again.get(1)] if m] == [
        "m1",
        "m2",
        "m3",
    ]
    again.commit()
    assert topic.subscribers()["full"] == 4
    assert topic.publish("m4", id="once") == 4 and topic.publish("m4", id="once") == 4
    assert topic.offsets() == (0, 5)


def test_topic_trim_respects_subscribers(app: accord.App) -> None:
    topic = app.topic("trim")
    slow = topic.subscribe("slow")
    topic.publish_many(list(range(10)))
    fast = topic.subscribe("fast", from_offset=0)
    for _ in range(8):
        fast.get(1)
    fast.commit()
    for _ in range(3):
        slow.get(1)
    slow.commit()
    assert topic.trim() == 3  # the slowest registered subscriber is at 3
    assert topic.offsets() == (3, 10)
    assert topic.trim(9) == 3  # never past a registered subscriber ...
    assert topic.trim(9, force=True) == 9  # ... unless forced
    assert slow.get(1).offset == 3  # type: ignore[union-attr]  # read before the trim
    slow.close()
    with pytest.raises(accord.CompactedError):  # resumes at 4: trimmed, never a silent gap
        topic.subscribe("slow").get(1)
    with pytest.raises(accord.CompactedError):
        topic.subscribe("new", from_offset=2)
    with pytest.raises(accord.ConfigError):
        topic.subscribe("new", from_offset=11)
    assert topic.unsubscribe("slow") and not topic.unsubscribe("slow")
    assert topic.read(9)[0].payload == 9
