"""What mailboxes and topics share: limits, payload encoding and checksums."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from accord import serde
from accord._checks import check_key
from accord.errors import ConfigError, CorruptedError, PayloadTooLargeError
from accord.store.records import OutMessage
from accord.store.state_base import StateStore

if TYPE_CHECKING:
    from accord.store.base import Store


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


def encode(payload: Any, where: str, limit: int, offload: serde.Offload | None = None) -> bytes:
    data = serde.dumps(payload, what=f"the payload for {where}", offload=offload)
    if len(data) > limit:
        raise PayloadTooLargeError(
            f"the payload for {where} takes {len(data)} bytes, over the limit of {limit}; "
            "put large data in the object store (app.objects.put) and send its reference: "
            "app.mailbox and app.topic do that by themselves for payloads over the app's "
            "inline_limit",
            size=len(data),
            limit=limit,
        )
    return data


def message_id(msg_id: object) -> str:
    if msg_id is None:
        return uuid.uuid4().hex
    return check_key(msg_id, "message id", limit=MAX_NAME_BYTES)


def decode(
    payload: bytes | None,
    digest: bytes,
    where: str,
    msg_id: str,
    offload: serde.Offload | None = None,
) -> Any:
    if payload is None or checksum(payload) != bytes(digest):
        raise CorruptedError(
            f"message {msg_id!r} in {where} does not match its checksum: the store's data "
            "is damaged; check the disk and restore the store from a backup",
            msg_id=msg_id,
        )
    return serde.loads(payload, offload)


def outgoing(
    payloads: Sequence[Any],
    ids: Sequence[str | None] | None,
    where: str,
    limit: int,
    offload: serde.Offload | None = None,
) -> list[OutMessage]:
    if ids is not None and len(ids) != len(payloads):
        raise ConfigError(f"got {len(payloads)} payloads but {len(ids)} ids; give one id each")
    if len(payloads) > MAX_BATCH:
        raise ConfigError(f"at most {MAX_BATCH} messages per call, not {len(payloads)}")
    out = []
    for i, payload in enumerate(payloads):
        data = encode(payload, where, limit, offload)
        out.append(OutMessage(message_id(ids[i] if ids else None), data, checksum(data)))
    return out


def wait_pause(pause: float) -> float:
    time.sleep(pause)
    return min(pause * 1.5, POLL_SLOW)


def state_store(store: Store | StateStore) -> StateStore:
    if not isinstance(store, StateStore):
        raise ConfigError(f"the store {store!r} does not support messaging")
    return store
