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

from accord.messaging.common import DEDUP_WINDOW, DEFAULT_VISIBILITY, MAX_PAYLOAD_BYTES
from accord.messaging.mailbox import Mailbox, Message
from accord.messaging.topic import Subscription, Topic, TopicMessage

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
