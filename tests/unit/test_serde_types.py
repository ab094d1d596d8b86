"""The Python types msgspec would encode as another type (a date as a string,
an enum as its value): each comes back as the same type and an equal value,
or is refused at dumps/submit with a message that names its place and what to
pass instead. Plain values are in tests/unit/test_serde.py."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import typing
import uuid
import zoneinfo
from typing import Any

import msgspec
import numpy as np
import pytest

from accord import _pytypes, serde

PLUS_2 = dt.timezone(dt.timedelta(hours=2))
ODD_OFFSET = dt.timezone(dt.timedelta(hours=-3, minutes=-30, seconds=-15, microseconds=-7))

EXACT: dict[str, Any] = {
    "decimal": decimal.Decimal("1.5"),
    "decimal, trailing zero kept": decimal.Decimal("1.50"),
    "decimal, exponent": decimal.Decimal("-1.2345E+400"),
    "decimal, negative zero": decimal.Decimal("-0"),
    "decimal, infinity": decimal.Decimal("-Infinity"),
    "decimal, many digits": decimal.Decimal("3.14159265358979323846264338327950288419716939937510"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "uuid, nil": uuid.UUID(int=0),
    "uuid, max": uuid.UUID(int=2**128 - 1),
    "date": dt.date(2024, 5, 6),
    "date, min": dt.date.min,
    "date, max": dt.date.max,
    "naive datetime": dt.datetime(2024, 5, 6, 7, 8, 9),
    "naive datetime, microseconds": dt.datetime(2024, 5, 6, 7, 8, 9, 123456),
    "naive datetime, min": dt.datetime.min,
    "naive datetime, max": dt.datetime.max,
    "naive time": dt.time(7, 8, 9),
    "naive time, microseconds": dt.time(23, 59, 59, 999999),
    "time, midnight": dt.time(),
    "aware time": dt.time(7, 8, 9, 10, tzinfo=PLUS_2),
    "aware time, UTC": dt.time(7, 8, tzinfo=dt.UTC),
    "aware time, odd offset": dt.time(7, 8, tzinfo=ODD_OFFSET),
    "timedelta": dt.timedelta(days=1, seconds=3, microseconds=4),
    "timedelta, negative": dt.timedelta(microseconds=-1),
    "timedelta, min": dt.timedelta.min,
    "timedelta, max": dt.timedelta.max,
    "bytearray": bytearray(b"\x00\xffab"),
    "bytearray, empty": bytearray(),
}


def same(back: Any, value: Any) -> None:
    assert type(back) is type(value), (back, value)
    assert back == value, (back, value)
    if isinstance(value, dt.time | dt.datetime):
        assert back.fold == value.fold
        assert back.utcoffset() == value.utcoffset()
    if isinstance(value, decimal.Decimal):
        assert str(back) == str(value)  # digits and exponent, not only the value


@pytest.mark.parametrize("name", list(EXACT))
def test_the_value_comes_back_as_itself(name: str) -> None:
    value = EXACT[name]
    same(serde.loads(serde.dumps(value)), value)


@pytest.mark.parametrize("name", list(EXACT))
def test_inside_lists_dicts_and_as_keys(name: str) -> None:
    value = EXACT[name]
    nested = {"list": [1, value, [value]], "dict": {"k": {"deeper": value}}, "tuple": (value,)}
    back = serde.loads(serde.dumps(nested))
    same(back["list"][1], value)
    same(back["list"][2][0], value)
    same(back["dict"]["k"]["deeper"], value)
    same(back["tuple"][0], value)  # the tuple is a list, as documented; its item itself
    if isinstance(value, bytearray):
        return  # not hashable
    keyed = serde.loads(serde.dumps({value: "v", (1, value): "in a tuple key"}))
    (key, tuple_key) = keyed
    same(key, value)
    assert type(tuple_key) is tuple
    same(tuple_key[1], value)


@pytest.mark.parametrize("name", list(EXACT))
def test_as_task_arguments_beside_a_dependency(name: str) -> None:
    value = EXACT[name]
    marker = object()
    data, refs = serde.dumps_args(
        [value, [marker, value]],
        {"k": {"v": value}, "dep": marker},
        is_ref=lambda o: o is marker,
        ref_key=id,
        task_name="t",
    )
    assert refs == [marker]
    args, kwargs = serde.loads_args(data, ["result"])
    same(args[0], value)
    assert args[1][0] == "result"
    same(args[1][1], value)
    same(kwargs["k"]["v"], value)
    assert kwargs["dep"] == "result"


def test_aware_datetimes_come_back_as_the_same_instant_in_utc() -> None:
    """Unchanged (msgspec's timestamp extension): equal, the same instant."""
    for when in (
        dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=PLUS_2),
        dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
        dt.datetime(1900, 1, 1, tzinfo=ODD_OFFSET),
    ):
        back = serde.loads(serde.dumps([when]))[0]
        assert type(back) is dt.datetime and back == when
        assert back.tzinfo is dt.UTC and back.timestamp() == when.timestamp()


def test_fold_is_kept() -> None:
    for value in (dt.datetime(2024, 10, 27, 2, 30, fold=1), dt.time(2, 30, fold=1)):
        back = serde.loads(serde.dumps(value))
        assert back == value and back.fold == 1


def test_decimal_nan_comes_back_as_nan() -> None:
    for text in ("NaN", "-NaN", "sNaN", "NaN123"):
        back = serde.loads(serde.dumps([decimal.Decimal(text)]))[0]
        assert type(back) is decimal.Decimal and str(back) == text


def test_through_an_offload() -> None:
    """The encoders made for an offload write these types the same way."""

    class Store:
        inline_limit = 64

        def __init__(self) -> None:
            self.items: dict[bytes, Any] = {}

        def stash(self, data: bytes) -> bytes:
            key = f"claim {len(self.items):04}".encode()  # as a real claim: not fixext-sized
            self.items[key] = data
            return key

        stash_array = stash

        def fetch(self, claim: bytes) -> Any:
            return self.items[claim]

        fetch_bytes = fetch

    store = Store()
    value = {"big": "x" * 100, "all": list(EXACT.values())}
    back = serde.loads(serde.dumps(value, offload=store), offload=store)
    assert store.items  # it went through the offload
    for got, want in zip(back["all"], EXACT.values(), strict=True):
        same(got, want)
    data, _ = serde.dumps_args(
        [value], {}, is_ref=lambda o: False, ref_key=id, task_name="t", offload=store
    )
    (arg,), _ = serde.loads_args(data, [], store)
    for got, want in zip(arg["all"], EXACT.values(), strict=True):
        same(got, want)


NUMPY_SCALARS = {
    "datetime64[D]": np.datetime64("2024-01-01"),
    "datetime64[ns]": np.datetime64("2024-01-01T01:02:03.123456789"),
    "datetime64 NaT": np.datetime64("NaT"),
    "timedelta64[s]": np.timedelta64(3, "s"),
    "timedelta64[ns]": np.timedelta64(3, "ns"),
    "complex64": np.complex64(1 + 2j),
    "complex128": np.complex128(-3j),
    "longdouble": np.longdouble("1.5"),
    "void": np.void(b"ab"),
}


@pytest.mark.parametrize("name", list(NUMPY_SCALARS))
def test_numpy_scalars_msgpack_has_no_type_for_come_back_as_themselves(name: str) -> None:
    """.item() would have made a string, an int or an error of them."""
    value = NUMPY_SCALARS[name]
    back = serde.loads(serde.dumps({"v": [value]}))["v"][0]
    assert type(back) is type(value) and back.dtype == value.dtype
    if value.dtype.kind in "mM" and np.isnat(value):
        assert np.isnat(back)
    else:
        assert back == value


class Colour(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    LOW = 1


class Mode(enum.StrEnum):
    FAST = "fast"


class Perm(enum.IntFlag):
    R = 4
    W = 2


@pytest.mark.parametrize("member", [Colour.RED, Level.LOW, Mode.FAST, Perm.R | Perm.W])
def test_enum_members_are_refused_naming_the_place_and_the_fix(member: enum.Enum) -> None:
    name = type(member).__qualname__
    fix = f"pass its .value (or .name) and rebuild it in the task, {name}(value) (or {name}[name])"

    def refused(args: list[Any], kwargs: dict[str, Any]) -> str:
        with pytest.raises(TypeError) as caught:
            serde.dumps_args(args, kwargs, is_ref=lambda o: False, ref_key=id, task_name="f")
        return str(caught.value)

    message = refused([1, member], {})
    assert message.startswith("argument 1 of f() cannot be serialised: ")
    assert repr(member) in message and fix in message
    assert refused([1, 2], {"x": [{"deep": member}]}).startswith(
        "argument 'x' of f() cannot be serialised: "
    )
    assert refused([{member: 1}], {}).startswith("argument 0 of f() cannot be serialised: ")
    with pytest.raises(TypeError, match=r"^the result of f\(\) cannot be serialised: .*\.value"):
        serde.dumps({"status": member}, what="the result of f()")


@dataclasses.dataclass
class Point:
    x: int = 1


class Record(msgspec.Struct):
    x: int = 1


class Pair(typing.NamedTuple):
    a: int = 1
    b: int = 2


class AttrsLike:
    __attrs_attrs__ = ()


class MyUUID(uuid.UUID):
    pass


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (Point(), r"Point is a dataclass: pass dataclasses.asdict\(value\)"),
        (Record(), r"Record is a msgspec Struct: pass msgspec.structs.asdict\(value\)"),
        (AttrsLike(), r"AttrsLike is an attrs class: pass attrs.asdict\(value\)"),
        (Pair(), r"Pair is a named tuple: pass value._asdict\(\) or tuple\(value\)"),
        (collections.OrderedDict(a=1), r"OrderedDict is a subclass of dict.*pass dict\(value\)"),
        (collections.defaultdict(int), r"defaultdict is a subclass of dict.*pass dict\(value\)"),
        (collections.Counter("ab"), r"Counter is a subclass of dict.*pass dict\(value\)"),
        (type("Items", (list,), {})([1]), r"Items is a subclass of list.*pass list\(value\)"),
        (memoryview(b"ab"), r"memoryviews are not serialised: pass bytes\(value\)"),
        (MyUUID(int=1), r"pass uuid.UUID\(int=value.int\)"),
        (dt.time(1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")), "gives no UTC offset"),
        (dt.datetime.max.replace(tzinfo=dt.timezone(-dt.timedelta(hours=1))), "years 1 to 9999"),
    ],
)
def test_what_would_come_back_as_another_type_is_refused(value: Any, message: str) -> None:
    for where in (value, [1, {"k": value}]):
        with pytest.raises(TypeError, match=message) as caught:
            serde.dumps(where, what="the result of f()")
        assert str(caught.value).startswith("the result of f() cannot be serialised: ")
    with pytest.raises(TypeError, match=message) as caught:
        serde.dumps_args([value], {}, is_ref=lambda o: False, ref_key=id, task_name="f")
    assert str(caught.value).startswith("argument 0 of f() cannot be serialised: ")


def test_a_registered_type_msgspec_would_convert_goes_through_its_extension() -> None:
    @dataclasses.dataclass(frozen=True)
    class Money:
        cents: int

    serde.register_ext(
        Money, 99, lambda m: m.cents.to_bytes(8, "big"), lambda b: Money(int.from_bytes(b, "big"))
    )
    try:
        assert serde.loads(serde.dumps({"price": [Money(250)]})) == {"price": [Money(250)]}
    finally:
        del serde._ext_types[Money], serde._ext_codes[99]


@pytest.mark.parametrize(
    "value",
    [
        [1, "two", 3.0, None, True, b"x", decimal.Decimal("1"), [4, {"k": (5, {6})}]],
        {"a": {"b": [1, 2, {"c": frozenset({"d"})}]}, 1: 2, (1, 2): 3},
        [[], {}, (), set()],
        [np.arange(3), {"array": np.zeros(2)}],  # numpy goes to the encoder's hook
    ],
)
def test_plain_values_are_not_rebuilt(value: Any) -> None:
    assert not serde._needs_care(value)


@pytest.mark.parametrize(
    "value",
    [
        [1, [2, [3, [dt.date(2024, 1, 1)]]]],
        {"k": {dt.date(2024, 1, 1): 1}},  # a key
        {(1, (2, Colour.RED)): 1},  # inside a tuple key
        [{1, 2, uuid.UUID(int=1)}],
        [frozenset({Mode.FAST})],
        ({"a": [bytearray()]},),
        [np.arange(3), dt.timedelta(1)],  # beside an object for the hook
        [Point()],
    ],
)
def test_what_msgspec_would_convert_is_found_wherever_it_is(value: Any) -> None:
    assert serde._needs_care(value)


def test_past_the_census_limit_values_still_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Too many containers for the quick look: the careful path does it all."""
    monkeypatch.setattr(_pytypes, "_CENSUS_LIMIT", 3)
    value = [[1], [2], {"k": [3, (4,)]}, [dt.date(2024, 1, 1)], "s"]
    assert serde._needs_care(value)
    back = serde.loads(serde.dumps(value))
    assert back == [[1], [2], {"k": [3, [4]]}, [dt.date(2024, 1, 1)], "s"]
    plain = [[1], [2], {"k": [3]}]
    assert serde.loads(serde.dumps(plain)) == plain


def test_deep_values_are_searched_to_the_bottom() -> None:
    value: Any = dt.date(2024, 1, 1)
    for _ in range(300):
        value = [value, {"k": 1}]
    back = serde.loads(serde.dumps(value))
    for _ in range(300):
        back = back[0]
    assert type(back) is dt.date


def test_cycles_are_still_refused_clearly() -> None:
    loop: list[Any] = [dt.date(2024, 1, 1)]
    loop.append(loop)
    loop.append(loop)  # two ways round: the census gives up, the careful path refuses
    with pytest.raises(TypeError, match="contains itself"):
        serde.dumps(loop)


# Written by the code before these types had extensions (same bytes for the types
# whose format is unchanged); the naive datetime and the date were ISO strings then,
# and stay strings.
OLD_VALUE = bytes.fromhex(
    "86a1619801fecb4004000000000000a178c40179c0c3920304a47768656ed7ff1d6f2800663881d9a56e61"
    "697665b3323032342d30352d30365430373a30383a3039a3646179aa323032342d30352d3036a3617272c7"
    "0f0193a33c69329103c4060000010002000781a16b90"
)
OLD_ARGS = bytes.fromhex("929301d6020000000081a1789202d6020000000081a16bcb400c000000000000")


def test_values_written_before_still_decode() -> None:
    back = serde.loads(OLD_VALUE)
    assert back["a"] == [1, -2, 2.5, "x", b"y", None, True, [3, 4]]
    assert back["when"] == dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    assert back["naive"] == "2024-05-06T07:08:09" and back["day"] == "2024-05-06"
    assert back["arr"].dtype == np.dtype("<i2") and back["arr"].tolist() == [0, 1, 2]
    assert back[7] == {"k": []}
    args, kwargs = serde.loads_args(OLD_ARGS, ["dep"])
    assert args == [1, "dep", {"x": [2, "dep"]}] and kwargs == {"k": 3.5}


def test_plain_values_are_encoded_as_before() -> None:
    """The format of what existed is unchanged: the same bytes as the old code."""
    value = {
        "a": [1, -2, 2.5, "x", b"y", None, True, (3, 4)],
        "when": dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC),
        "arr": np.arange(3, dtype="<i2"),
        7: {"k": []},
    }
    old = msgspec.msgpack.decode(OLD_VALUE)  # without hooks: the raw pieces
    del old["naive"], old["day"]
    assert msgspec.msgpack.decode(serde.dumps(value)) == old
    marker = object()
    data, _ = serde.dumps_args(
        [1, marker, {"x": [2, marker]}],
        {"k": 3.5},
        is_ref=lambda o: o is marker,
        ref_key=id,
        task_name="t",
    )
    assert data == OLD_ARGS


def test_unknown_tags_are_reported() -> None:
    data = msgspec.msgpack.encode(msgspec.msgpack.Ext(6, b"?x"))
    with pytest.raises(TypeError, match="unknown value tag"):
        serde.loads(data)
