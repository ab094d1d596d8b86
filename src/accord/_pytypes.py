"""Python values that msgpack has no type for, and those msgspec would write
as another type: finding them in a value, packing them as extensions, and
refusing, with what to pass instead, what cannot come back as itself.

:mod:`accord.serde` encodes through this; the module holds the registry of
extension types other layers add (``serde.register_ext``), since a value is
prepared for the encoder with it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import gc
import struct
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

# (accord.serde numbers the other extension codes.)
_EXT_PYTHON = 6  # a Python value msgpack has no type for: a tag byte, then its data

# The tags of _EXT_PYTHON.
_TAG_DECIMAL = b"D"  # str(value), ASCII
_TAG_UUID = b"U"  # the 16 bytes
_TAG_DATE = b"d"  # ISO 8601
_TAG_TIME = b"t"  # fold (one byte), then ISO 8601 (with the offset if aware)
_TAG_DATETIME = b"n"  # a naive datetime: fold (one byte), then ISO 8601
_TAG_TIMEDELTA = b"r"  # days, seconds, microseconds
_TAG_BYTEARRAY = b"b"  # the bytes
_TIMEDELTA = struct.Struct(">iII")

# Value types other layers register: type -> (code, to bytes); code -> from bytes.
_ext_types: dict[type, tuple[int, Callable[[Any], bytes]]] = {}
_ext_codes: dict[int, Callable[[bytes], Any]] = {}


def _encode_decimal(value: decimal.Decimal) -> msgspec.msgpack.Ext:
    # msgspec calls this for each Decimal (its own format would be a string).
    return msgspec.msgpack.Ext(_EXT_PYTHON, _TAG_DECIMAL + str(value).encode("ascii"))


# -- finding what msgspec would convert ---------------------------------------

# Types msgspec encodes as themselves (Decimal through _encode_decimal).
_LEAVES = frozenset({str, int, float, bool, type(None), bytes, decimal.Decimal})
_CONTAINERS = frozenset({list, dict, tuple, set, frozenset})
_PLAIN = _LEAVES | _CONTAINERS
# Types msgspec encodes itself, as another type (the enc_hook never sees them):
# these exact types, and any subclass of these bases (it checks subclasses).
_CONVERTED = frozenset({dt.date, dt.time, dt.datetime, dt.timedelta, bytearray, memoryview})
_CONVERTED_BASES = (uuid.UUID, enum.Enum, msgspec.Struct, list, tuple, dict, set, frozenset)
_CENSUS_LIMIT = 1 << 22  # items looked into before leaving it to _prepare
_CENSUS_LEVELS = range(1000)  # as deep as msgspec goes (the default recursion limit)


def _converted(cls: type) -> bool:
    """Whether msgspec would encode values of ``cls`` (not a plain type) as another type."""
    return (
        cls in _CONVERTED
        or issubclass(cls, _CONVERTED_BASES)
        or hasattr(cls, "__dataclass_fields__")
        or hasattr(cls, "__attrs_attrs__")
    )


def _needs_care(value: Any) -> bool:
    """Whether ``value`` holds anything msgspec would encode as another type.

    Breadth first, a level at a time, in C: the types at a level, then
    ``gc.get_referents`` for the items of its containers (the built-in
    containers' traversal yields exactly their items, dict keys included).
    Other objects (numpy arrays, handles) go to the encoder's hook and are not
    looked into. Too deep (a cycle) or too many containers (shared ones seen
    again and again): answer yes, and let :func:`_prepare` decide.
    """
    level: list[Any] = value if type(value) is list else [value]
    budget = _CENSUS_LIMIT
    for _ in _CENSUS_LEVELS:
        if _LEAVES.issuperset(map(type, level)):
            return False
        if not _PLAIN.issuperset(map(type, level)):
            if any(map(_converted, set(map(type, level)) - _PLAIN)):
                return True
            level = [item for item in level if type(item) in _CONTAINERS]
        budget -= len(level)
        if budget < 0:
            return True
        level = gc.get_referents(*level)
    return True


class _Packed:
    """An extension value that can also be a dict key (``Ext`` is not
    hashable); the encoder's hook unwraps it."""

    __slots__ = ("ext",)

    def __init__(self, code: int, data: bytes) -> None:
        self.ext = msgspec.msgpack.Ext(code, data)


def _python(tag: bytes, data: bytes) -> _Packed:
    return _Packed(_EXT_PYTHON, tag + data)


def _prepare(obj: Any) -> Any:
    """``obj`` with what msgspec would convert replaced by extensions (a copy
    of the containers on the way); raise ``TypeError`` for what is refused."""
    cls = type(obj)
    if cls in _LEAVES:
        return obj
    if cls is list:
        if _LEAVES.issuperset(map(type, obj)):
            return obj
        return [_prepare(item) for item in obj]
    if cls is dict:
        if _LEAVES.issuperset(map(type, obj)) and _LEAVES.issuperset(map(type, obj.values())):
            return obj
        return {_prepare(key): _prepare(item) for key, item in obj.items()}
    if cls is tuple or cls is set or cls is frozenset:
        # Encoded as an array all the same; a tuple stays hashable as a key.
        return tuple([_prepare(item) for item in obj])
    if cls is dt.datetime:
        return _prepare_datetime(obj)
    if cls is dt.date:
        return _python(_TAG_DATE, obj.isoformat().encode())
    if cls is dt.time:
        if obj.tzinfo is not None and obj.utcoffset() is None:
            raise TypeError(
                f"the time {obj} has a tzinfo ({obj.tzinfo!r}) that gives no UTC offset "
                "without a date: attach a fixed offset (datetime.timezone) or pass a datetime"
            )
        return _python(_TAG_TIME, bytes([obj.fold]) + obj.isoformat().encode())
    if cls is dt.timedelta:
        return _python(_TAG_TIMEDELTA, _TIMEDELTA.pack(obj.days, obj.seconds, obj.microseconds))
    if cls is bytearray:
        return _python(_TAG_BYTEARRAY, bytes(obj))
    if cls is uuid.UUID:
        return _python(_TAG_UUID, obj.bytes)
    if _converted(cls):
        registered = _ext_types.get(cls)
        if registered is not None:
            return _Packed(registered[0], registered[1](obj))
        raise TypeError(_refusal(obj))
    return obj  # for the encoder's hook (numpy, handles, registered types) or refused there


def _prepare_datetime(value: dt.datetime) -> Any:
    if value.tzinfo is None:
        return _python(_TAG_DATETIME, bytes([value.fold]) + value.isoformat().encode())
    if value.utcoffset() is None:
        raise TypeError(
            f"the datetime {value} has a tzinfo ({value.tzinfo!r}) that gives no UTC offset: "
            "attach a timezone that does, or pass a naive datetime"
        )
    try:
        value.astimezone(dt.UTC)
    except OverflowError:
        # msgspec would write it, and reading it back would fail.
        raise TypeError(
            f"the datetime {value} is outside years 1 to 9999 in UTC, which it comes back in"
        ) from None
    return value  # msgspec's timestamp extension: the same instant, in UTC


def _refusal(obj: Any) -> str:
    """Why ``obj`` (of a type msgspec would convert) is refused, and what to pass instead."""
    cls = type(obj)
    name = cls.__qualname__
    rebuild = "rebuild it in the task (decoding never imports a class by name)"
    if isinstance(obj, enum.Enum):
        return (
            f"{obj!r} is an enum member: pass its .value (or .name) and rebuild it in the task, "
            f"{name}(value) (or {name}[name]); members are not serialised, as decoding one would "
            "import its class by name"
        )
    if isinstance(obj, msgspec.Struct):
        return f"{name} is a msgspec Struct: pass msgspec.structs.asdict(value) and {rebuild}"
    if dataclasses.is_dataclass(obj):
        return f"{name} is a dataclass: pass dataclasses.asdict(value) and {rebuild}"
    if hasattr(cls, "__attrs_attrs__"):
        return f"{name} is an attrs class: pass attrs.asdict(value) and {rebuild}"
    if isinstance(obj, tuple) and hasattr(cls, "_fields"):
        return (
            f"{name} is a named tuple: pass value._asdict() or tuple(value) (which comes back "
            f"as a list) and {rebuild}"
        )
    if isinstance(obj, uuid.UUID):
        return f"{name} is a subclass of uuid.UUID: pass uuid.UUID(int=value.int)"
    if cls is memoryview:
        return "memoryviews are not serialised: pass bytes(value) (or bytearray(value))"
    for base in (dict, list, tuple, set, frozenset):
        if isinstance(obj, base):
            return (
                f"{name} is a subclass of {base.__name__}, and would come back as a plain "
                f"{'dict' if base is dict else 'list'}: pass {base.__name__}(value)"
            )
    return f"values of type {name} cannot be serialised"


def _decode_python(data: bytes) -> Any:
    tag, body = data[:1], data[1:]
    if tag == _TAG_DECIMAL:
        return decimal.Decimal(body.decode("ascii"))
    if tag == _TAG_UUID:
        return uuid.UUID(bytes=body)
    if tag == _TAG_DATE:
        return dt.date.fromisoformat(body.decode())
    if tag == _TAG_TIME:
        return dt.time.fromisoformat(body[1:].decode()).replace(fold=body[0])
    if tag == _TAG_DATETIME:
        return dt.datetime.fromisoformat(body[1:].decode()).replace(fold=body[0])
    if tag == _TAG_TIMEDELTA:
        return dt.timedelta(*_TIMEDELTA.unpack(body))
    if tag == _TAG_BYTEARRAY:
        return bytearray(body)
    raise TypeError(f"unknown value tag {tag!r} in a stored value")
