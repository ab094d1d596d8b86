"""Messaging between agents: mailboxes (point-to-point) and topics (broadcast).

Both live in the store, so a message that was accepted survives a crash of
any process, and nodes never talk to each other directly.

- A **mailbox** delivers each message to one receiver at a time. The
  receiver acknowledges it with :meth:`Message.ack`; a message not
  acknowledged within its visibility timeout is delivered again (to any
  receiver). Delivery is at-least-once; an acknowledgement is accepted once
  per message (a late ack from a delivery that timed out is refused). Messages
  carry ids: a sender that retries with the same id stores the message once.
- A **topic** is an ordered log. Every subscriber receives every message
  published after it registered, in publish order, from the offset it asks
  for; its position is stored, so a restarted subscriber goes on where it
  stopped (at-least-once: messages after its last stored position come again).
- Payloads are serialised with :mod:`accord.serde`, limited in size (large
  data is kept outside, its path in the message) and checksummed: a payload that no longer
  matches its checksum raises :class:`~accord.CorruptedError`.

Names of mailboxes and topics are store-wide (not per app), so that agents of
different apps can talk; they follow the one rule for names
(:func:`accord._checks.check_name`).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from accord import _checks, context, serde
from accord.errors import ConfigError, CorruptedError, PayloadTooLargeError
from accord.state import _check_delay, _check_int, _check_seconds, _check_timeout, check_name
from accord.store.state_base import Fence, MailboxRow, OutMessage, StateStore, TopicRow

if TYPE_CHECKING:
    from accord.store.base import Store

__all__ = [
    "DEDUP_WINDOW",
    "DEFAULT_VISIBILITY",
    "MAX_PAYLOAD_BYTES",
    "Mailbox",
    "Message",
    "Subscription",
    "Topic",
    "TopicMessage",
]

MAX_PAYLOAD_BYTES = 1024 * 1024
"""Largest serialised payload; send a reference to larger data instead."""
DEFAULT_VISIBILITY = 30.0
"""Seconds a received message stays hidden from other receivers before it is
delivered again, unless acknowledged (or extended) first."""
DEDUP_WINDOW = 24 * 3600.0
"""Seconds an acknowledged message's id is remembered: a send with that id
in this window (or at any time before the ack) is not stored again."""
MAX_NAME_BYTES = 256
MAX_BATCH = 10_000
# Receivers and subscribers waiting for messages check the store's change
# counter this often at first, backing off to the slower pace.
POLL_FAST = 0.0002
POLL_SLOW = 0.005
# Acknowledged ids older than the window are forgotten every this many sends.
PURGE_EVERY = 1000


def checksum(payload: bytes) -> bytes:
    """The checksum stored with a payload (BLAKE2b, 128 bits)."""
    return hashlib.blake2b(payload, digest_size=16).digest()


def _encode(payload: Any, where: str, limit: int) -> bytes:
    data = serde.dumps(payload, what=f"the payload for {where}")
    if len(data) > limit:
        raise PayloadTooLargeError(
            f"the payload for {where} takes {len(data)} bytes, over the limit of {limit}; "
            "write large data where every receiver can read it (a shared file system or a "
            "bucket) and send its path",
            size=len(data),
            limit=limit,
        )
    return data


def _message_id(msg_id: object) -> str:
    if msg_id is None:
        return uuid.uuid4().hex
    return check_name(msg_id, "message id", limit=MAX_NAME_BYTES)


def _decode(payload: bytes | None, digest: bytes, where: str, msg_id: str) -> Any:
    if payload is None or checksum(payload) != bytes(digest):
        raise CorruptedError(
            f"message {msg_id!r} in {where} does not match its checksum: the store's data "
            "is damaged; check the disk and restore the store from a backup",
            msg_id=msg_id,
        )
    return serde.loads(payload)


def _outgoing(
    payloads: Sequence[Any], ids: Sequence[str | None] | None, where: str, limit: int
) -> list[OutMessage]:
    if ids is not None and len(ids) != len(payloads):
        raise ConfigError(f"got {len(payloads)} payloads but {len(ids)} ids; give one id each")
    if len(payloads) > MAX_BATCH:
        raise ConfigError(f"at most {MAX_BATCH} messages per call, not {len(payloads)}")
    out = []
    for i, payload in enumerate(payloads):
        data = _encode(payload, where, limit)
        out.append(OutMessage(_message_id(ids[i] if ids else None), data, checksum(data)))
    return out


def _wait_pause(pause: float) -> float:
    time.sleep(pause)
    return min(pause * 1.5, POLL_SLOW)


def _state_store(store: Store | StateStore) -> StateStore:
    if not isinstance(store, StateStore):
        raise ConfigError(f"the store {store!r} does not support messaging")
    return store


@dataclass(slots=True)
class Message:
    """A message taken from a mailbox. ``deliveries`` counts deliveries
    (more than 1: an earlier receiver did not acknowledge it in time)."""

    payload: Any
    id: str
    seq: int
    deliveries: int
    sent_at: float
    mailbox: Mailbox = field(repr=False)

    def ack(self) -> bool:
        """Acknowledge: the message will not be delivered again.

        ``False`` if this delivery is no longer current (its visibility timed
        out and another receiver took the message, or it was acknowledged).
        """
        return self.mailbox.ack([self])[0]

    def nack(self, delay: float = 0.0) -> bool:
        """Hand the message back for delivery after ``delay`` seconds."""
        return self.mailbox._settle([self], ack=False, delay=delay)[0]

    def extend(self, seconds: float) -> bool:
        """Keep the message hidden for ``seconds`` more from now (long work)."""
        return self.mailbox._settle([self], ack=False, delay=_check_seconds(seconds, "seconds"))[0]


class Mailbox:
    """A point-to-point mailbox (see the module docstring); ``app.mailbox(name)``."""

    def __init__(
        self, store: Store | StateStore, name: str, *, max_payload: int = MAX_PAYLOAD_BYTES
    ) -> None:
        self._store = _state_store(store)
        self.name = _checks.check_name(name, "mailbox name")
        self.max_payload = max_payload
        self._sends = 0

    def __repr__(self) -> str:
        return f"<Mailbox {self.name!r}>"

    def _fence(self) -> Fence:
        return context.fence_for(self._store.url)

    def send(self, payload: Any, id: str | None = None) -> str:
        """Store a message durably; return its id.

        ``id`` (default: a new UUID) makes a retried send idempotent: a message
        with an id already stored is not stored again, and the same id with
        another payload raises :class:`~accord.ConflictError`.
        """
        return self.send_many([payload], [id])[0]

    def send_many(
        self, payloads: Sequence[Any], ids: Sequence[str | None] | None = None
    ) -> list[str]:
        """Send several messages in one commit (in this order); return their ids."""
        out = _outgoing(payloads, ids, f"mailbox {self.name!r}", self.max_payload)
        if not out:
            return []
        self._store.mailbox_send(self.name, out, fence=self._fence())
        self._sends += len(out)
        if self._sends >= PURGE_EVERY:
            self._sends = 0
            self.purge_acked()
        return [m.msg_id for m in out]

    def receive(
        self, timeout: float | None = None, *, visibility: float = DEFAULT_VISIBILITY
    ) -> Message | None:
        """Take the next message, waiting at most ``timeout`` seconds (``None``:
        no limit, 0: do not wait); ``None`` if none came.

        The message stays hidden from other receivers for ``visibility``
        seconds; acknowledge it before, or it is delivered again.
        """
        got = self.receive_many(1, timeout, visibility=visibility)
        return got[0] if got else None

    def receive_many(
        self,
        max_messages: int = 100,
        timeout: float | None = None,
        *,
        visibility: float = DEFAULT_VISIBILITY,
    ) -> list[Message]:
        """Take up to ``max_messages`` messages in one commit (oldest first),
        waiting at most ``timeout`` seconds for the first."""
        limit = _check_int(max_messages, "max_messages", minimum=1)
        hide = _check_seconds(visibility, "visibility")
        wait = _check_timeout(timeout)
        deadline = None if wait is None else time.monotonic() + wait
        store = self._store
        while True:
            store.changed()
            rows, next_visible = store.mailbox_receive(
                self.name, min(limit, MAX_BATCH), hide, fence=self._fence()
            )
            if rows:
                return [self._message(r) for r in rows]
            pause = POLL_FAST
            while not store.changed():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return []
                if next_visible is not None and store.now() >= next_visible:
                    break  # a message's visibility ran out: it can be delivered again
                pause = _wait_pause(
                    pause if deadline is None else min(pause, max(0.0, deadline - now))
                )

    def _message(self, row: MailboxRow) -> Message:
        where = f"mailbox {self.name!r}"
        return Message(
            _decode(row.payload, row.checksum, where, row.msg_id),
            row.msg_id,
            row.seq,
            row.deliveries,
            row.sent_at,
            self,
        )

    def ack(self, messages: Iterable[Message]) -> list[bool]:
        """Acknowledge several messages in one commit (see :meth:`Message.ack`)."""
        return self._settle(list(messages), ack=True)

    def _settle(self, messages: list[Message], *, ack: bool, delay: float = 0.0) -> list[bool]:
        for m in messages:
            if m.mailbox.name != self.name:
                raise ConfigError(f"message {m.id!r} came from {m.mailbox!r}, not from {self!r}")
        pause = _check_delay(delay, "delay")
        if not messages:
            return []
        return self._store.mailbox_settle(
            self.name,
            [(m.seq, m.deliveries) for m in messages],
            ack=ack,
            delay=pause,
            fence=self._fence(),
        )

    def stats(self) -> dict[str, Any]:
        """Counts of ``ready``, ``in_flight`` and ``acked`` (still remembered) messages."""
        s = self._store.mailbox_stats(self.name)
        return {
            "ready": s.ready,
            "in_flight": s.in_flight,
            "acked": s.acked,
            "next_visible_at": s.next_visible_at,
        }

    def purge_acked(self, older_than: float = DEDUP_WINDOW) -> int:
        """Forget acknowledged messages acknowledged more than ``older_than``
        seconds ago (store-wide); return how many."""
        before = self._store.now() - _check_delay(older_than, "older_than")
        return self._store.mailbox_purge(before, fence=self._fence())


@dataclass(slots=True, frozen=True)
class TopicMessage:
    """A message of a topic at its ``offset`` (0, 1, 2, ... in publish order)."""

    offset: int
    id: str
    payload: Any
    published_at: float


class Topic:
    """A broadcast topic (see the module docstring); ``app.topic(name)``."""

    def __init__(
        self, store: Store | StateStore, name: str, *, max_payload: int = MAX_PAYLOAD_BYTES
    ) -> None:
        self._store = _state_store(store)
        self.name = _checks.check_name(name, "topic name")
        self.max_payload = max_payload

    def __repr__(self) -> str:
        return f"<Topic {self.name!r}>"

    def _fence(self) -> Fence:
        return context.fence_for(self._store.url)

    def publish(self, payload: Any, id: str | None = None) -> int:
        """Append a message durably; return its offset. ``id`` as in
        :meth:`Mailbox.send` (a retried publish returns the first offset)."""
        return self.publish_many([payload], [id])[0]

    def publish_many(
        self, payloads: Sequence[Any], ids: Sequence[str | None] | None = None
    ) -> list[int]:
        """Publish several messages in one commit, in this order; return their offsets."""
        out = _outgoing(payloads, ids, f"topic {self.name!r}", self.max_payload)
        if not out:
            return []
        return [
            offset for offset, _ in self._store.topic_publish(self.name, out, fence=self._fence())
        ]

    def _row(self, row: TopicRow) -> TopicMessage:
        payload = _decode(row.payload, row.checksum, f"topic {self.name!r}", row.msg_id)
        return TopicMessage(row.offset, row.msg_id, payload, row.published_at)

    def read(self, from_offset: int = 0, limit: int = 100) -> list[TopicMessage]:
        """Messages from ``from_offset`` on, without subscribing (a peek)."""
        page = self._store.topic_read(
            self.name,
            _check_int(from_offset, "from_offset"),
            min(_check_int(limit, "limit", minimum=1), MAX_BATCH),
        )
        return [self._row(r) for r in page.rows]

    def subscribe(
        self, subscriber: str, from_offset: int | None = None, *, batch: int = 100
    ) -> Subscription:
        """Register ``subscriber`` and iterate over its messages.

        ``from_offset``: start there (0: from the oldest kept message). Without
        it, a known subscriber goes on from its stored position and a new one
        starts at the end: it receives what is published from now on.
        """
        name = check_name(subscriber, "subscriber name", limit=MAX_NAME_BYTES)
        start = None if from_offset is None else _check_int(from_offset, "from_offset")
        offset = self._store.topic_subscribe(self.name, name, start, fence=self._fence())
        return Subscription(self, name, offset, _check_int(batch, "batch", minimum=1))

    def unsubscribe(self, subscriber: str) -> bool:
        """Forget a subscriber's position (it no longer holds back :meth:`trim`)."""
        name = check_name(subscriber, "subscriber name", limit=MAX_NAME_BYTES)
        return self._store.topic_unsubscribe(self.name, name, fence=self._fence())

    def subscribers(self) -> dict[str, int]:
        """Each registered subscriber's next offset."""
        return {s.subscriber: s.next_offset for s in self._store.topic_subscribers(self.name)}

    def offsets(self) -> tuple[int, int]:
        """``(first kept offset, next offset to be published)``."""
        return self._store.topic_offsets(self.name)

    def trim(self, before: int | None = None, *, force: bool = False) -> int:
        """Drop messages before ``before`` (default: every message all
        registered subscribers have passed); never past the slowest
        subscriber unless ``force``. Return the first offset kept."""
        if before is not None:
            _check_int(before, "before")
        return self._store.topic_trim(self.name, before, force=force, fence=self._fence())


class Subscription:
    """A subscriber's iterator of :class:`TopicMessage` s.

    Asking for the next message marks the ones handed out before as
    processed; so does :meth:`commit`. The processed position is stored every
    ``batch`` messages, whenever the subscription waits for new messages, and
    on :meth:`commit`/:meth:`close`. A subscriber that crashed, or closed
    while handling a message, gets that message again (at-least-once).
    """

    def __init__(self, topic: Topic, subscriber: str, offset: int, batch: int) -> None:
        self.topic = topic
        self.subscriber = subscriber
        self.offset = offset  # the next offset to hand out
        self.processed = offset  # every message before it was handled
        self.committed = offset  # the position stored in the store
        self._batch = batch
        self._buffer: deque[TopicMessage] = deque()
        self._read_from = offset
        self._closed = False

    def __repr__(self) -> str:
        return f"<Subscription {self.subscriber!r} to {self.topic.name!r} at {self.offset}>"

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> TopicMessage:
        message = self.get(None)
        if message is None:
            raise StopIteration
        return message

    def get(self, timeout: float | None = None) -> TopicMessage | None:
        """The next message, waiting at most ``timeout`` seconds (``None``: no limit)."""
        wait = _check_timeout(timeout)
        deadline = None if wait is None else time.monotonic() + wait
        store = self.topic._store
        self.processed = self.offset
        if self.processed - self.committed >= self._batch:
            self._store_position()
        while not self._closed:
            if self._buffer:
                message = self._buffer.popleft()
                self.offset = message.offset + 1
                return message
            store.changed()
            page = store.topic_read(self.topic.name, self._read_from, self._batch)
            if page.rows:
                self._buffer.extend(self.topic._row(r) for r in page.rows)
                self._read_from = page.rows[-1].offset + 1
                continue
            self._store_position()  # caught up: store the position before waiting
            pause = POLL_FAST
            while not store.changed():
                now = time.monotonic()
                if self._closed or (deadline is not None and now >= deadline):
                    return None
                pause = _wait_pause(
                    pause if deadline is None else min(pause, max(0.0, deadline - now))
                )
        return None

    def commit(self) -> None:
        """Mark every message handed out as processed and store the position."""
        self.processed = self.offset
        self._store_position()

    def _store_position(self) -> None:
        if self.processed != self.committed:
            self.topic._store.topic_commit(
                self.topic.name, self.subscriber, self.processed, fence=self.topic._fence()
            )
            self.committed = self.processed

    def close(self) -> None:
        """Store the processed position and stop; iteration ends."""
        if not self._closed:
            self._closed = True
            self._store_position()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
