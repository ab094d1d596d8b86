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

Other layers add their own value types as MessagePack extensions
(:func:`register_ext`: ``accord.data`` adds its ``ObjectRef``). Given an
:class:`Offload` (an app's object store), a value whose encoding is over its
inline limit, and any numpy array over it, is moved to the object store and
a claim to it stored in its place; :func:`loads` with the same offload
brings the value back.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec

_EXT_NDARRAY = 1
_EXT_TASKREF = 2
_EXT_CLAIM = 4  # an array moved to the object store; decoded through an Offload
_EXT_SPILLED = 5  # a whole encoding moved to the object store (only at the top)

# Value types other layers register: type -> (code, to bytes); code -> from bytes.
_ext_types: dict[type, tuple[int, Callable[[Any], bytes]]] = {}
_ext_codes: dict[int, Callable[[bytes], Any]] = {}


class Offload(Protocol):
    """Where values over the inline limit go, and come back from (an app's
    object store): ``stash`` stores bytes and ``stash_array`` an array, each
    returning the claim's bytes; ``fetch`` returns the array a claim stands
    for, ``fetch_bytes`` the bytes."""

    @property
    def inline_limit(self) -> int: ...

    def stash(self, data: bytes) -> bytes: ...

    def stash_array(self, array: Any) -> bytes: ...

    def fetch(self, claim: bytes) -> Any: ...

    def fetch_bytes(self, claim: bytes) -> bytes: ...


def register_ext(
    cls: type, code: int, encode: Callable[[Any], bytes], decode: Callable[[bytes], Any]
) -> None:
    """Serialise values of ``cls`` as extension ``code`` (10 to 127)."""
    if not 10 <= code <= 127 or (code in _ext_codes and _ext_types.get(cls, (None,))[0] != code):
        raise ValueError(f"extension code {code} is taken or out of range (10 to 127)")
    _ext_types[cls] = (code, encode)
    _ext_codes[code] = decode


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
    registered = _ext_types.get(type(obj))
    if registered is not None:
        return msgspec.msgpack.Ext(registered[0], registered[1](obj))
    encoded = _encode_numpy(obj)
    if encoded is not None:
        return encoded
    raise TypeError(f"values of type {type(obj).__qualname__} cannot be serialised")


def _base_ext_hook(code: int, data: memoryview) -> Any:
    if code == _EXT_NDARRAY:
        return _decode_numpy(data)
    decode = _ext_codes.get(code)
    if decode is not None:
        return decode(bytes(data))
    if code in (_EXT_CLAIM, _EXT_SPILLED):
        raise TypeError(
            "the value was moved to the object store (it is over the inline limit); "
            "read it through the app that wrote it (app.state, a handle, a mailbox)"
        )
    raise TypeError(f"unknown extension type {code} in a stored value")


_encoder = msgspec.msgpack.Encoder(enc_hook=_base_enc_hook)
_decoder = msgspec.msgpack.Decoder(ext_hook=_base_ext_hook)


def _offload_hooks(
    offload: Offload, base_enc: Callable[[Any], Any] = _base_enc_hook
) -> Callable[[Any], Any]:
    """An encoder hook that moves numpy arrays over the inline limit to ``offload``."""
    limit = offload.inline_limit

    def hook(obj: Any) -> Any:
        np = _numpy()
        if np is not None and isinstance(obj, np.ndarray) and obj.nbytes > limit:
            return msgspec.msgpack.Ext(_EXT_CLAIM, offload.stash_array(obj))
        return base_enc(obj)

    return hook


def _claims(
    offload: Offload | None, base_ext: Callable[[int, memoryview], Any] = _base_ext_hook
) -> Callable[[int, memoryview], Any]:
    def hook(code: int, data: memoryview) -> Any:
        if code == _EXT_CLAIM and offload is not None:
            return offload.fetch(bytes(data))
        return base_ext(code, data)

    return hook


def _spill(data: bytes, offload: Offload | None) -> bytes:
    """``data`` itself, or a claim to it if it is over the inline limit."""
    if offload is None or len(data) <= offload.inline_limit:
        return data
    return _plain_encoder.encode(msgspec.msgpack.Ext(_EXT_SPILLED, offload.stash(data)))


def _unspill(data: bytes | memoryview, offload: Offload | None) -> bytes | memoryview:
    """The encoding a claim made by :func:`_spill` stands for (else ``data``)."""
    if offload is None or len(data) < 3 or data[0] != 0xC7 or data[2] != _EXT_SPILLED:
        return data
    if len(data) != 3 + data[1]:
        return data
    return offload.fetch_bytes(bytes(data[3:]))


def _describe(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, RecursionError):
        return "it contains itself (a reference cycle) or is nested too deeply"
    if isinstance(exc, OverflowError) or "out of range" in text:
        return "an integer does not fit in 64 bits"
    return text


def dumps(value: Any, *, what: str = "value", offload: Offload | None = None) -> bytes:
    """Serialise ``value``; raise ``TypeError`` naming ``what`` if it cannot be.

    With ``offload``, what is over its inline limit goes there (see the module
    docstring)."""
    encoder = (
        _encoder if offload is None else msgspec.msgpack.Encoder(enc_hook=_offload_hooks(offload))
    )
    try:
        data = encoder.encode(value)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise TypeError(f"{what} cannot be serialised: {_describe(exc)}") from exc
    return _spill(data, offload)


def loads(data: bytes | memoryview | None, offload: Offload | None = None) -> Any:
    """Deserialise a value written by :func:`dumps` (``None`` stays ``None``),
    fetching what was moved to ``offload``."""
    if data is None:
        return None
    if offload is None:
        return _decoder.decode(data)
    return msgspec.msgpack.Decoder(ext_hook=_claims(offload)).decode(_unspill(data, offload))


def dumps_args(
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    is_ref: Callable[[Any], bool],
    ref_key: Callable[[Any], object],
    task_name: str,
    offload: Offload | None = None,
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
    encoder = msgspec.msgpack.Encoder(
        enc_hook=hook if offload is None else _offload_hooks(offload, hook)
    )
    try:
        return _spill(encoder.encode([list(args), kwargs]), offload), refs
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


def loads_args(
    data: bytes, dep_results: Sequence[Any], offload: Offload | None = None
) -> tuple[list[Any], dict[str, Any]]:
    """Deserialise arguments, putting each dependency's result in its place
    (and fetching what was moved to ``offload``)."""

    def hook(code: int, raw: memoryview) -> Any:
        if code == _EXT_TASKREF:
            return dep_results[int.from_bytes(raw, "big")]
        return _base_ext_hook(code, raw)

    decoder = msgspec.msgpack.Decoder(ext_hook=_claims(offload, hook))
    args, kwargs = decoder.decode(_unspill(data, offload))
    return args, kwargs
