"""Topics: ordered logs that every subscriber reads from its own offset."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from accord import _attempt, _checks, serde
from accord._checks import check_int, check_key, check_timeout
from accord.messaging.common import (
    MAX_BATCH,
    MAX_NAME_BYTES,
    MAX_PAYLOAD_BYTES,
    POLL_FAST,
    decode,
    outgoing,
    state_store,
    wait_pause,
)
from accord.store.records import Fence, TopicRow
from accord.store.state_base import StateStore

if TYPE_CHECKING:
    from accord.store.base import Store


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
        self,
        store: Store | StateStore,
        name: str,
        *,
        max_payload: int = MAX_PAYLOAD_BYTES,
        offload: serde.Offload | None = None,
    ) -> None:
        self._store = state_store(store)
        self.name = _checks.check_name(name, "topic name")
        self.max_payload = max_payload
        self.offload = offload  # where payloads over the inline limit go

    def __repr__(self) -> str:
        return f"<Topic {self.name!r}>"

    def _fence(self) -> Fence:
        return _attempt.fence_for(self._store.url)

    def publish(self, payload: Any, id: str | None = None) -> int:
        """Append a message durably; return its offset. ``id`` as in
        :meth:`Mailbox.send` (a retried publish returns the first offset)."""
        return self.publish_many([payload], [id])[0]

    def publish_many(
        self, payloads: Sequence[Any], ids: Sequence[str | None] | None = None
    ) -> list[int]:
        """Publish several messages in one commit, in this order; return their offsets."""
        out = outgoing(payloads, ids, f"topic {self.name!r}", self.max_payload, self.offload)
        if not out:
            return []
        return [
            offset for offset, _ in self._store.topic_publish(self.name, out, fence=self._fence())
        ]

    def _row(self, row: TopicRow) -> TopicMessage:
        payload = decode(
            row.payload, row.checksum, f"topic {self.name!r}", row.msg_id, self.offload
        )
        return TopicMessage(row.offset, row.msg_id, payload, row.published_at)

    def read(self, from_offset: int = 0, limit: int = 100) -> list[TopicMessage]:
        """Messages from ``from_offset`` on, without subscribing (a peek)."""
        page = self._store.topic_read(
            self.name,
            check_int(from_offset, "from_offset"),
            min(check_int(limit, "limit", minimum=1), MAX_BATCH),
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
        name = check_key(subscriber, "subscriber name", limit=MAX_NAME_BYTES)
        start = None if from_offset is None else check_int(from_offset, "from_offset")
        offset = self._store.topic_subscribe(self.name, name, start, fence=self._fence())
        return Subscription(self, name, offset, check_int(batch, "batch", minimum=1))

    def unsubscribe(self, subscriber: str) -> bool:
        """Forget a subscriber's position (it no longer holds back :meth:`trim`)."""
        name = check_key(subscriber, "subscriber name", limit=MAX_NAME_BYTES)
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
            check_int(before, "before")
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
        wait = check_timeout(timeout)
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
                pause = wait_pause(
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
