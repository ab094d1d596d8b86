"""Mailboxes: messages sent to one receiver at a time, acknowledged or released.

A receive hides its messages for a visibility timeout; an ack or a release
names the delivery it settles, so a delivery that ended meanwhile is refused.
A message id sent twice is stored once (with another payload, refused)."""

from __future__ import annotations

from typing import Any

from accord.errors import (
    ConflictError,
)
from accord.store.records import (
    Fence,
    MailboxRow,
    MailboxStats,
    OutMessage,
)
from accord.store.sql.core import _Tx
from accord.store.sql.state_core import (
    StateBase,
)

_MAILBOX_READY = "FROM mailbox_messages WHERE mailbox = ? AND acked_at IS NULL AND visible_at <= ? "


class MailboxMixin(StateBase):
    """Sending, receiving and settling messages of mailboxes."""

    # -- mailboxes ----------------------------------------------------------
    def mailbox_send(
        self, mailbox: str, messages: list[OutMessage], *, fence: Fence = None
    ) -> list[tuple[int, bool]]:
        def body(tx: _Tx) -> list[tuple[int, bool]]:
            self._check_fence(tx.c, fence, "message")
            task_id = fence[0] if fence else None
            return [self._send_one(tx, mailbox, m, task_id) for m in messages]

        return self._write(body)

    def _send_one(
        self, tx: _Tx, mailbox: str, m: OutMessage, task_id: int | None
    ) -> tuple[int, bool]:
        c = tx.c
        while True:
            # A concurrent send of the same id makes this wait for its outcome.
            r = c.execute(
                "INSERT INTO mailbox_messages (mailbox, msg_id, payload, checksum, size, "
                "sent_at, visible_at, task_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (mailbox, msg_id) DO NOTHING RETURNING id",
                (mailbox, m.msg_id, m.payload, m.checksum, len(m.payload), tx.now, tx.now, task_id),
            ).fetchone()
            if r is not None:
                return r[0], False
            found = c.execute(
                "SELECT id, checksum FROM mailbox_messages WHERE mailbox = ? AND msg_id = ?",
                (mailbox, m.msg_id),
            ).fetchone()
            if found is None:
                continue  # purged since the insert looked: store it after all
            if bytes(found[1]) != m.checksum:
                raise ConflictError(
                    f"message id {m.msg_id!r} was already sent to mailbox {mailbox!r} "
                    "with another payload; use a new id for a new message. Nothing was "
                    "sent",
                    mailbox=mailbox,
                    msg_id=m.msg_id,
                )
            return found[0], True

    def mailbox_receive(
        self, mailbox: str, limit: int, visibility: float, *, fence: Fence = None
    ) -> tuple[list[MailboxRow], float | None]:
        # Look before writing: an idle receiver only reads (and on PostgreSQL
        # a write would also wake every waiting process).
        ready = self._read("SELECT 1 " + _MAILBOX_READY + "LIMIT 1", (mailbox, self.now()))
        rows: list[Any] = []
        if ready:

            def body(tx: _Tx) -> tuple[bool, list[Any]]:
                self._check_fence(tx.c, fence, "receive")
                # Messages another receiver holds are skipped, not waited for;
                # one it took meanwhile is re-checked (no longer visible) and left.
                taken = tx.c.execute(
                    "UPDATE mailbox_messages SET visible_at = ?, deliveries = deliveries + 1 "
                    "WHERE id IN (SELECT id "
                    + _MAILBOX_READY
                    + f"ORDER BY id LIMIT ?{self.skip_locked}) "
                    "RETURNING id, msg_id, payload, checksum, sent_at, deliveries",
                    (tx.now + visibility, mailbox, tx.now, limit),
                ).fetchall()
                return bool(taken), taken

            rows = self._write_if(body)
        if rows:
            rows.sort()
            return [MailboxRow(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows], None
        nxt = self._read(
            "SELECT min(visible_at) FROM mailbox_messages WHERE mailbox = ? AND acked_at IS NULL",
            (mailbox,),
        )[0][0]
        return [], nxt

    def mailbox_settle(
        self,
        mailbox: str,
        deliveries: list[tuple[int, int]],
        *,
        ack: bool,
        delay: float = 0.0,
        fence: Fence = None,
    ) -> list[bool]:
        # One conditional UPDATE per message: it re-checks the delivery count
        # on the row it locks, so a delivery that ended meanwhile is refused.
        if ack:
            sql = (
                "UPDATE mailbox_messages SET acked_at = ?, payload = NULL "
                "WHERE id = ? AND mailbox = ? AND deliveries = ? AND acked_at IS NULL "
                "RETURNING id"
            )
        else:
            sql = (
                "UPDATE mailbox_messages SET visible_at = ? "
                "WHERE id = ? AND mailbox = ? AND deliveries = ? AND acked_at IS NULL "
                "RETURNING id"
            )

        def body(tx: _Tx) -> tuple[bool, list[bool]]:
            self._check_fence(tx.c, fence, "acknowledgement" if ack else "release")
            at = tx.now if ack else tx.now + delay
            done = [
                tx.c.execute(sql, (at, seq, mailbox, delivery)).fetchone() is not None
                for seq, delivery in deliveries
            ]
            return any(done), done

        return self._write_if(body)

    def mailbox_stats(self, mailbox: str) -> MailboxStats:
        now = self.now()
        r = self._read(
            "SELECT "
            "count(*) FILTER (WHERE acked_at IS NULL AND visible_at <= ?), "
            "count(*) FILTER (WHERE acked_at IS NULL AND visible_at > ?), "
            "count(*) FILTER (WHERE acked_at IS NOT NULL), "
            "min(visible_at) FILTER (WHERE acked_at IS NULL AND visible_at > ?) "
            "FROM mailbox_messages WHERE mailbox = ?",
            (now, now, now, mailbox),
        )[0]
        return MailboxStats(r[0], r[1], r[2], r[3])

    def mailbox_purge(self, acked_before: float, *, fence: Fence = None) -> int:
        def body(tx: _Tx) -> int:
            self._check_fence(tx.c, fence, "purge")
            gone = tx.c.execute(
                "DELETE FROM mailbox_messages WHERE acked_at IS NOT NULL AND acked_at < ? "
                "RETURNING id",
                (acked_before,),
            ).fetchall()
            return len(gone)

        return self._write(body)
