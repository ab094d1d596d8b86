"""Serialisation of arguments, results and values: MessagePack via msgspec.

Values round-trip as MessagePack types: ``None``, ``bool``, ``int`` (64-bit),
``float``, ``str``, ``bytes``, lists, dicts, and numpy arrays and scalars
(when numpy is installed). Tuples and sets come back as lists. Timezone-aware
datetimes come back as UTC datetimes; naive datetimes, dates and times come
back as ISO 8601 strings (a naive datetime names no instant: attach a
timezone). Anything else is refused with a ``TypeError`` that names the
value's place.

Task handles inside arguments become references to the handle's task; the
node replaces each reference with that task's result before the call.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

_EXT_NDARRAY = 1
_EXT_TASKREF = 2

_plain_encoder = msgspec.msgpack.Encoder()
_plain_decoder = msgspec.msgpack.Decoder()


def _numpy() -> Any:
    # numpy is optional: only look for it if a value could be one.
    return sys.modules.get("numpy")


def _encode_numpy(obj: Any) -> msgspec.msgpack.Ext | None:
    np = _numpy()
    if np is None:
        return None
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("numpy arrays of Python objects cannot be serialised")
        if obj.dtype.names is not None:
            # dtype.str of a structured dtype is a bare '|V<n>': the fields would be lost.
            raise TypeError("numpy structured arrays (with named fields) cannot be serialised")
        # tobytes() is in C order whatever the layout; the shape is the array's own
        # (np.ascontiguousarray would turn a 0-d array into a 1-d one).
        return msgspec.msgpack.Ext(
            _EXT_NDARRAY,
            _plain_encoder.encode([obj.dtype.str, list(obj.shape), obj.tobytes()]),
        )
    if isinstance(obj, np.generic):
        return obj.item()  # type: ignore[no-any-return]
    return None


def _decode_numpy(data: memoryview | bytes) -> Any:
    import numpy as np

    dtype, shape, raw = _plain_decoder.decode(data)
    return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()


def _base_enc_hook(obj: Any) -> Any:
    encoded = _encode_numpy(obj)
    if encoded is not None:
        return encoded
    raise TypeError(f"values of type {type(obj).__qualname__} cannot be serialised")


def _base_ext_hook(code: int, data: memoryview) -> Any:
    if code == _EXT_NDARRAY:
        return _decode_numpy(data)
    raise TypeError(f"unknown extension type {code} in a stored value")


_encoder = msgspec.msgpack.Encoder(enc_hook=_base_enc_hook)
_decoder = msgspec.msgpack.Decoder(ext_hook=_base_ext_hook)


def _describe(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, RecursionError):
        return "it contains itself (a reference cycle) or is nested too deeply"
    if isinstance(exc, OverflowError) or "out of range" in text:
        return "an integer does not fit in 64 bits"
    return text


def dumps(value: Any, *, what: str = "value") -> bytes:
    """Serialise ``value``; raise ``TypeError`` naming ``what`` if it cannot be."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise TypeError(f"{what} cannot be serialised: {_describe(exc)}") from exc


def loads(data: bytes | memoryview | None) -> Any:
    """Deserialise a value written by :func:`dumps` (``None`` stays ``None``)."""
    if data is None:
        return None
    return _decoder.decode(data)


def dumps_args(
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    is_ref: Callable[[Any], bool],
    ref_key: Callable[[Any], object],
    task_name: str,
) -> tuple[bytes, list[Any]]:
    """Serialise a call's arguments, turning task handles into references.

    Returns the bytes and the distinct handles found, in first-seen order; a
    reference stores the handle's index in that list.
    """
    refs: list[Any] = []
    index: dict[object, int] = {}

    def hook(obj: Any) -> Any:
        if is_ref(obj):
            key = ref_key(obj)
            pos = index.get(key)
            if pos is None:
                pos = index[key] = len(refs)
                refs.append(obj)
            return msgspec.msgpack.Ext(_EXT_TASKREF, pos.to_bytes(4, "big"))
        return _base_enc_hook(obj)

    for name in kwargs:
        if not isinstance(name, str):
            raise TypeError(f"keyword names of {task_name}() must be strings")
    encoder = msgspec.msgpack.Encoder(enc_hook=hook)
    try:
        return encoder.encode([list(args), kwargs]), refs
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        # Find the argument at fault, so that the message names it.
        for position, arg in enumerate(args):
            _check(encoder, arg, f"argument {position} of {task_name}()")
        for name, arg in kwargs.items():
            _check(encoder, arg, f"argument {name!r} of {task_name}()")
        raise TypeError(f"the arguments of {task_name}() cannot be serialised: {exc}") from exc


def _check(encoder: msgspec.msgpack.Encoder, value: Any, what: str) -> None:
    try:
        encoder.encode(value)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise TypeError(f"{what} cannot be serialised: {_describe(exc)}") from exc


def loads_args(data: bytes, dep_results: Sequence[Any]) -> tuple[list[Any], dict[str, Any]]:
    """Deserialise arguments, putting each dependency's result in its place."""

    def hook(code: int, raw: memoryview) -> Any:
        if code == _EXT_TASKREF:
            return dep_results[int.from_bytes(raw, "big")]
        return _base_ext_hook(code, raw)

    args, kwargs = msgspec.msgpack.Decoder(ext_hook=hook).decode(data)
    return args, kwargs
