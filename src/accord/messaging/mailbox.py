"""Mailboxes: point-to-point messages, at-least-once, acknowledged."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from accord import _attempt, _checks, serde
from accord._checks import check_delay, check_int, check_seconds, check_timeout
from accord.errors import ConfigError
from accord.messaging.common import (
    DEDUP_WINDOW,
    DEFAULT_VISIBILITY,
    MAX_BATCH,
    MAX_PAYLOAD_BYTES,
    POLL_FAST,
    PURGE_EVERY,
    decode,
    outgoing,
    state_store,
    wait_pause,
)
from accord.store.records import Fence, MailboxRow
from accord.store.state_base import StateStore

if TYPE_CHECKING:
    from accord.store.base import Store


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
        return self.mailbox._settle([self], ack=False, delay=check_seconds(seconds, "seconds"))[0]


class Mailbox:
    """A point-to-point mailbox (see the module docstring); ``app.mailbox(name)``."""

    def __init__(
        self,
        store: Store | StateStore,
        name: str,
        *,
        max_payload: int = MAX_PAYLOAD_BYTES,
        offload: serde.Offload | None = None,
    ) -> None:
        self._store = state_store(store)
        self.name = _checks.check_name(name, "mailbox name")
        self.max_payload = max_payload
        self.offload = offload  # where payloads over the inline limit go
        self._sends = 0

    def __repr__(self) -> str:
        return f"<Mailbox {self.name!r}>"

    def _fence(self) -> Fence:
        return _attempt.fence_for(self._store.url)

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
        out = outgoing(payloads, ids, f"mailbox {self.name!r}", self.max_payload, self.offload)
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
        limit = check_int(max_messages, "max_messages", minimum=1)
        hide = check_seconds(visibility, "visibility")
        wait = check_timeout(timeout)
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
                pause = wait_pause(
                    pause if deadline is None else min(pause, max(0.0, deadline - now))
                )

    def _message(self, row: MailboxRow) -> Message:
        where = f"mailbox {self.name!r}"
        return Message(
            decode(row.payload, row.checksum, where, row.msg_id, self.offload),
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
        pause = check_delay(delay, "delay")
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
        before = self._store.now() - check_delay(older_than, "older_than")
        return self._store.mailbox_purge(before, fence=self._fence())
