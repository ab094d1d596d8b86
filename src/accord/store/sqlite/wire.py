"""How group-commit requests and outcomes travel between processes (msgpack).

A request is a :class:`~accord.store.sql.state_core._TxnRequest`; an outcome
is a :class:`~accord.store.records.TxnOutcome` or the accord error the
request raised, raised again in the writer's process.
"""

from __future__ import annotations

from typing import Any

import msgspec

from accord import errors
from accord.errors import AccordError, StoreError
from accord.store.records import KvCompare, KvDelete, KvOp, KvPut, TxnOutcome
from accord.store.sql.state_core import _TxnRequest

# Requests and outcomes of group commit travel between processes as msgpack.
_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder().decode


def _encode_ops(ops: list[KvOp]) -> list[Any]:
    return [
        [op.key, op.value, op.lease_id] if isinstance(op, KvPut) else [op.key, op.prefix]
        for op in ops
    ]


def _decode_ops(raw: list[Any]) -> list[KvOp]:
    return [KvPut(r[0], r[1], r[2]) if len(r) == 3 else KvDelete(r[0], r[1]) for r in raw]


def _encode_request(req: _TxnRequest) -> bytes:
    return _pack(
        [
            [[c.key, c.target, c.op, c.operand] for c in req.compares],
            _encode_ops(req.then),
            _encode_ops(req.orelse),
            list(req.fence) if req.fence else None,
            req.task_id,
        ]
    )


def _decode_request(data: bytes) -> _TxnRequest:
    compares, then, orelse, fence, task_id = _unpack(data)
    return _TxnRequest(
        [KvCompare(*c) for c in compares],
        _decode_ops(then),
        _decode_ops(orelse),
        (fence[0], fence[1]) if fence else None,
        task_id,
    )


def _encode_outcome(outcome: TxnOutcome) -> bytes:
    failed = [[c.key, c.target, c.op, seen] for c, seen in outcome.failed]
    return _pack([0, outcome.succeeded, outcome.revision, outcome.changed, failed])


def _encode_error(exc: AccordError) -> bytes:
    try:
        return _pack([1, type(exc).__name__, exc.message, exc.details])
    except (TypeError, ValueError):
        return _pack([1, type(exc).__name__, exc.message, {}])


def _decode_outcome(data: bytes, compares: list[KvCompare]) -> TxnOutcome:
    raw = _unpack(data)
    if raw[0] == 1:
        cls = getattr(errors, raw[1], None)
        if not (isinstance(cls, type) and issubclass(cls, AccordError)):
            cls = StoreError
        raise cls(raw[2], **raw[3])
    _, succeeded, revision, changed, failed = raw
    by_id = {(c.key, c.target, c.op): c for c in compares}
    return TxnOutcome(
        succeeded,
        revision,
        changed,
        tuple((by_id[(k, t, o)], seen) for k, t, o, seen in failed),
    )


def _encode_list(items: list[bytes]) -> bytes:
    return _pack(items)


def _decode_list(data: bytes) -> list[bytes]:
    items: list[bytes] = _unpack(data)
    return items
