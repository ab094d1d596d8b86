"""Topics: an append-only log per topic, read from offsets, with subscribers.

Publishing takes offsets in order under the topic's row lock; subscribers'
offsets are kept in ``topic_offsets``; a trim never passes the slowest
subscriber unless forced."""

from __future__ import annotations

from typing import Any

from accord.errors import (
    CompactedError,
    ConfigError,
    ConflictError,
)
from accord.store.records import (
    Fence,
    OutMessage,
    SubscriberRow,
    TopicPage,
    TopicRow,
)
from accord.store.sql.core import Conn, _Tx
from accord.store.sql.state_core import (
    StateBase,
)

_OFFSET_UPSERT = (
    "INSERT INTO topic_offsets (topic, subscriber, next_offset, updated_at) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (topic, subscriber) DO UPDATE SET "
    "next_offset = excluded.next_offset, updated_at = excluded.updated_at"
)
_TOPIC_CREATE = (
    "INSERT INTO topics (name, next_offset, first_offset) VALUES (?, 0, 0) "
    "ON CONFLICT (name) DO NOTHING"
)


def _trimmed(topic: str, offset: int, first: int, advice: str) -> CompactedError:
    return CompactedError(
        f"topic {topic!r} was trimmed: offsets before {first} are gone{advice}",
        topic=topic,
        offset=offset,
        first_offset=first,
    )


class TopicMixin(StateBase):
    """Publishing, reading, subscribing and trimming topics."""

    # -- topics -------------------------------------------------------------
    def topic_publish(
        self, topic: str, messages: list[OutMessage], *, fence: Fence = None
    ) -> list[tuple[int, bool]]:
        def body(tx: _Tx) -> list[tuple[int, bool]]:
            c = tx.c
            self._check_fence(c, fence, "publish")
            task_id = fence[0] if fence else None
            c.execute(_TOPIC_CREATE, (topic,))
            # The topic's lock: offsets are taken, and become visible, in order.
            offset = c.execute(
                f"SELECT next_offset FROM topics WHERE name = ?{self.lock}", (topic,)
            ).fetchone()[0]
            out: list[tuple[int, bool]] = []
            fresh: dict[str, tuple[int, bytes]] = {}
            rows: list[tuple[Any, ...]] = []
            for m in messages:
                known = fresh.get(m.msg_id)
                if known is None:
                    r = c.execute(
                        "SELECT seq, checksum FROM topic_messages WHERE topic = ? AND msg_id = ?",
                        (topic, m.msg_id),
                    ).fetchone()
                    known = None if r is None else (r[0], bytes(r[1]))
                if known is not None:
                    if known[1] != m.checksum:
                        raise ConflictError(
                            f"message id {m.msg_id!r} was already published to topic "
                            f"{topic!r} with another payload; use a new id for a new message. "
                            "Nothing was published",
                            topic=topic,
                            msg_id=m.msg_id,
                        )
                    out.append((known[0], True))
                    continue
                fresh[m.msg_id] = (offset, m.checksum)
                rows.append((topic, offset, m.msg_id, m.payload, m.checksum, tx.now, task_id))
                out.append((offset, False))
                offset += 1
            if rows:
                c.executemany(
                    "INSERT INTO topic_messages (topic, seq, msg_id, payload, checksum, "
                    "published_at, task_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                c.execute("UPDATE topics SET next_offset = ? WHERE name = ?", (offset, topic))
            return out

        return self._write(body)

    def _topic_bounds(self, c: Conn, topic: str, lock: str = "") -> tuple[int, int]:
        r = c.execute(
            f"SELECT first_offset, next_offset FROM topics WHERE name = ?{lock}", (topic,)
        ).fetchone()
        return (0, 0) if r is None else (r[0], r[1])

    def topic_read(self, topic: str, from_offset: int, limit: int) -> TopicPage:
        def read(c: Conn) -> TopicPage:
            first, nxt = self._topic_bounds(c, topic)
            if from_offset < first:
                raise _trimmed(
                    topic,
                    from_offset,
                    first,
                    f", so reading from {from_offset} would miss messages; resubscribe from "
                    f"offset {first} or later",
                )
            rows = c.execute(
                "SELECT seq, msg_id, payload, checksum, published_at FROM topic_messages "
                "WHERE topic = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (topic, from_offset, limit),
            ).fetchall()
            return TopicPage([TopicRow(*r) for r in rows], first, nxt)

        return self._snap(read)

    def topic_subscribe(
        self, topic: str, subscriber: str, from_offset: int | None, *, fence: Fence = None
    ) -> int:
        def body(tx: _Tx) -> int:
            c = tx.c
            self._check_fence(c, fence, "subscription")
            c.execute(_TOPIC_CREATE, (topic,))
            # Shared with publishers' reads, exclusive of a trim (see topic_trim).
            first, nxt = self._topic_bounds(c, topic, self.share)
            if from_offset is None:
                r = c.execute(
                    "SELECT next_offset FROM topic_offsets WHERE topic = ? AND subscriber = ?",
                    (topic, subscriber),
                ).fetchone()
                if r is not None:
                    return int(r[0])
                start = nxt
            else:
                if from_offset > nxt:
                    raise ConfigError(
                        f"offset {from_offset} is past the end of topic {topic!r} (next offset "
                        f"{nxt}); subscribe from an offset up to {nxt}",
                        topic=topic,
                        offset=from_offset,
                    )
                if from_offset < first:
                    raise _trimmed(
                        topic, from_offset, first, f"; subscribe from offset {first} or later"
                    )
                start = from_offset
            c.execute(_OFFSET_UPSERT, (topic, subscriber, start, tx.now))
            return start

        return self._write(body)

    def topic_commit(
        self, topic: str, subscriber: str, next_offset: int, *, fence: Fence = None
    ) -> None:
        def body(tx: _Tx) -> None:
            self._check_fence(tx.c, fence, "offset commit")
            tx.c.execute(_OFFSET_UPSERT, (topic, subscriber, next_offset, tx.now))

        self._write(body)

    def topic_unsubscribe(self, topic: str, subscriber: str, *, fence: Fence = None) -> bool:
        def body(tx: _Tx) -> bool:
            self._check_fence(tx.c, fence, "unsubscription")
            gone = tx.c.execute(
                "DELETE FROM topic_offsets WHERE topic = ? AND subscriber = ? RETURNING topic",
                (topic, subscriber),
            ).fetchone()
            return gone is not None

        return self._write(body)

    def topic_subscribers(self, topic: str) -> list[SubscriberRow]:
        rows = self._read(
            "SELECT subscriber, next_offset, updated_at FROM topic_offsets WHERE topic = ? "
            "ORDER BY subscriber",
            (topic,),
        )
        return [SubscriberRow(*r) for r in rows]

    def topic_trim(
        self, topic: str, before: int | None, *, force: bool = False, fence: Fence = None
    ) -> int:
        def body(tx: _Tx) -> tuple[bool, int]:
            c = tx.c
            self._check_fence(c, fence, "trim")
            # The topic's lock keeps subscribers from registering meanwhile, and
            # the subscribers' rows are locked so that none moves back under us.
            first, nxt = self._topic_bounds(c, topic, self.lock)
            positions = [
                r[0]
                for r in c.execute(
                    f"SELECT next_offset FROM topic_offsets WHERE topic = ?{self.lock}", (topic,)
                )
            ]
            slowest = min(positions, default=None)
            if before is None:
                target = first if slowest is None else slowest
            else:
                target = before if force or slowest is None else min(before, slowest)
            target = min(target, nxt)
            if target <= first:
                return False, first
            c.execute("DELETE FROM topic_messages WHERE topic = ? AND seq < ?", (topic, target))
            c.execute("UPDATE topics SET first_offset = ? WHERE name = ?", (target, topic))
            return True, target

        return self._write_if(body)

    def topic_offsets(self, topic: str) -> tuple[int, int]:
        return self._snap(lambda c: self._topic_bounds(c, topic))
