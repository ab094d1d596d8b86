"""Serialisation of arguments, results and values: MessagePack via msgspec.

These come back as the same type and an equal value:

- ``None``, ``bool``, ``int`` (64-bit), ``float``, ``str``, ``bytes``,
  ``bytearray``, lists and dicts (also as dict keys, where hashable);
- ``decimal.Decimal`` (digits and exponent kept), ``uuid.UUID``,
  ``datetime.date``, naive ``datetime.datetime``, ``datetime.time`` (naive,
  or aware with a UTC offset: it comes back with a fixed offset,
  ``datetime.timezone``) and ``datetime.timedelta``;
- timezone-aware datetimes, as the same instant in UTC (the zone is not kept);
- numpy arrays (dtype, shape and values) and numpy scalars of the kinds
  msgpack has no type for (datetime64, timedelta64, complex, long double,
  void). Numpy bool, integer, float (up to 64-bit), str and bytes scalars
  come back as the equal Python ``bool``, ``int``, ``float``, ``str`` or
  ``bytes``.

Tuples and sets (frozensets too) come back as lists (as dict keys, tuples).
Nothing else is converted: enum members, dataclasses, msgspec Structs and
attrs instances (decoding never imports a class by name: pass ``.value`` or
a dict and rebuild it in the task), subclasses of the built-in containers
(named tuples, ``OrderedDict``, ``defaultdict``, ``Counter``), memoryviews,
times and datetimes whose tzinfo gives no UTC offset, aware datetimes
outside years 1 to 9999 in UTC, and anything else are refused with a
``TypeError`` that names the value's place and what to pass instead.

Task handles inside arguments become references to the handle's task; the
node replaces each reference with that task's result before the call.

Other layers add their own value types as MessagePack extensions
(:func:`register_ext`: ``accord.data`` adds its ``ObjectRef``). Given an
:class:`Offload` (an app's object store), a value whose encoding is over its
inline limit, and any numpy array over it, is moved to the object store and
a claim to it stored in its place; :func:`loads` with the same offload
brings the value back.

msgspec writes dates, UUIDs, enums, dataclasses and the like itself, as
strings, values or dicts, without asking the encoder's hook. So before
encoding, :func:`_needs_care` looks over the value's containers, a level at a
time (the types at each level, then ``gc.get_referents``: no Python code per
item); only if it finds such a type is the value rebuilt with extensions in
their place (:func:`_prepare`), or refused. A value of ``None``, ``bool``,
``int``, ``float``, ``str``, ``bytes``, ``Decimal``, lists, dicts, tuples and
sets, however nested, goes to msgspec as it is. Decoding is msgspec's alone.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec

from accord._pytypes import (
    _EXT_PYTHON,
    _LEAVES,
    _decode_python,
    _encode_decimal,
    _ext_codes,
    _ext_types,
    _needs_care,
    _Packed,
    _prepare,
)

_EXT_NDARRAY = 1
_EXT_TASKREF = 2
# 3: never used, left free.
_EXT_CLAIM = 4  # an array moved to the object store; decoded through an Offload
_EXT_SPILLED = 5  # a whole encoding moved to the object store (only at the top)
# 6: a Python value msgpack has no type for (accord._pytypes)
_EXT_NUMPY_SCALAR = 7  # a numpy scalar, as the 0-d array of _EXT_NDARRAY


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


def _new_encoder(enc_hook: Callable[[Any], Any] | None) -> msgspec.msgpack.Encoder:
    return msgspec.msgpack.Encoder(enc_hook=enc_hook, decimal_format=_encode_decimal)


_plain_encoder = msgspec.msgpack.Encoder()
_plain_decoder = msgspec.msgpack.Decoder()


# -- numpy ----------------------------------------------------------------------


def _numpy() -> Any:
    # numpy is optional: only look for it if a value could be one.
    return sys.modules.get("numpy")


def _array_data(array: Any) -> bytes:
    if array.dtype.hasobject:
        raise TypeError("numpy arrays of Python objects cannot be serialised")
    if array.dtype.names is not None:
        # dtype.str of a structured dtype is a bare '|V<n>': the fields would be lost.
        raise TypeError("numpy structured arrays (with named fields) cannot be serialised")
    # tobytes() is in C order whatever the layout; the shape is the array's own
    # (np.ascontiguousarray would turn a 0-d array into a 1-d one).
    return _plain_encoder.encode([array.dtype.str, list(array.shape), array.tobytes()])


def _encode_numpy(obj: Any) -> Any:
    np = _numpy()
    if np is None:
        return None
    if isinstance(obj, np.ndarray):
        return msgspec.msgpack.Ext(_EXT_NDARRAY, _array_data(obj))
    if isinstance(obj, np.generic):
        kind = obj.dtype.kind
        if kind in "biuUS" or (kind == "f" and obj.dtype.itemsize <= 8):
            return obj.item()  # the equal Python bool, int, float, str or bytes
        # datetime64, timedelta64, complex, long double, void: .item() would be
        # a string, an int, or refused; the scalar itself comes back instead.
        return msgspec.msgpack.Ext(_EXT_NUMPY_SCALAR, _array_data(np.asarray(obj)))
    return None


def _decode_numpy(data: memoryview | bytes) -> Any:
    import numpy as np

    dtype, shape, raw = _plain_decoder.decode(data)
    return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()


# -- hooks ------------------------------------------------------------------------


def _base_enc_hook(obj: Any) -> Any:
    if type(obj) is _Packed:
        return obj.ext
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
    if code == _EXT_PYTHON:
        return _decode_python(bytes(data))
    if code == _EXT_NUMPY_SCALAR:
        return _decode_numpy(data)[()]
    decode = _ext_codes.get(code)
    if decode is not None:
        return decode(bytes(data))
    if code in (_EXT_CLAIM, _EXT_SPILLED):
        raise TypeError(
            "the value was moved to the object store (it is over the inline limit); "
            "read it through the app that wrote it (app.state, a handle, a mailbox)"
        )
    raise TypeError(f"unknown extension type {code} in a stored value")


_encoder = _new_encoder(_base_enc_hook)
_decoder = msgspec.msgpack.Decoder(ext_hook=_base_ext_hook)


# -- entry points ----------------------------------------------------------------


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


def _encode(encoder: msgspec.msgpack.Encoder, value: Any) -> bytes:
    """``value`` encoded, with what msgspec would convert made extensions (or refused)."""
    if type(value) not in _LEAVES and _needs_care(value):
        value = _prepare(value)
    return encoder.encode(value)


def dumps(value: Any, *, what: str = "value", offload: Offload | None = None) -> bytes:
    """Serialise ``value``; raise ``TypeError`` naming ``what`` if it cannot be.

    With ``offload``, what is over its inline limit goes there (see the module
    docstring)."""
    encoder = _encoder if offload is None else _new_encoder(_offload_hooks(offload))
    try:
        data = _encode(encoder, value)
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
    encoder = _new_encoder(hook if offload is None else _offload_hooks(offload, hook))
    try:
        return _spill(_encode(encoder, [list(args), kwargs]), offload), refs
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        # Find the argument at fault, so that the message names it.
        for position, arg in enumerate(args):
            _check(encoder, arg, f"argument {position} of {task_name}()")
        for name, arg in kwargs.items():
            _check(encoder, arg, f"argument {name!r} of {task_name}()")
        raise TypeError(f"the arguments of {task_name}() cannot be serialised: {exc}") from exc


def _check(encoder: msgspec.msgpack.Encoder, value: Any, what: str) -> None:
    try:
        _encode(encoder, value)
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
