"""Serialisation of arguments and results: MessagePack values, numpy arrays,
and references (task handles) inside arguments put back in place. Through
real tasks and a store: tests/test_serde_tasks.py."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import pytest

from accord import serde


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        2**63 - 1,
        -(2**63),
        2**64 - 1,
        1.5,
        -0.0,
        math.inf,
        "",
        "héllo wörld ✓ \x00 \u200f",
        b"\x00\xffbytes",
        [],
        {},
        [1, "two", 3.0, None, [4, [5, [6]]]],
        {"a": {"b": {"c": [1, 2, {"d": b"x"}]}}, "": None},
        {1: "int keys", 2: "stay ints"},
    ],
)
def test_plain_values_round_trip(value: Any) -> None:
    data = serde.dumps(value)
    assert isinstance(data, bytes)
    back = serde.loads(data)
    assert back == value
    assert type(back) is type(value)


def test_nan_round_trips() -> None:
    assert math.isnan(serde.loads(serde.dumps(math.nan)))


def test_sequences_come_back_as_lists() -> None:
    """As documented (the one conversion): tuples, sets and frozensets."""
    assert serde.loads(serde.dumps((1, (2, 3)))) == [1, [2, 3]]
    assert sorted(serde.loads(serde.dumps({3, 1, 2}))) == [1, 2, 3]
    assert sorted(serde.loads(serde.dumps(frozenset({"a"})))) == ["a"]
    assert serde.loads(serde.dumps({(1, 2): "tuple keys stay tuples"})) == {
        (1, 2): "tuple keys stay tuples"
    }


def test_deep_nesting_is_fine() -> None:
    value: Any = 0
    for _ in range(200):
        value = [value, {"k": 1}]
    assert serde.loads(serde.dumps(value)) == value


def test_aware_datetimes_round_trip() -> None:
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    assert serde.loads(serde.dumps(when)) == when
    shifted = when.astimezone(dt.timezone(dt.timedelta(hours=5)))
    assert serde.loads(serde.dumps(shifted)) == when


def test_naive_datetime_comes_back_as_a_naive_datetime() -> None:
    """It used to come back as its ISO string; the other types that did are
    in tests/unit/test_serde_types.py."""
    naive = dt.datetime(2024, 5, 6, 7, 8, 9)
    back = serde.loads(serde.dumps(naive))
    assert type(back) is dt.datetime and back == naive and back.tzinfo is None
    aware = naive.replace(tzinfo=dt.UTC)
    assert serde.loads(serde.dumps(aware)) == aware


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (object(), "values of type object cannot be serialised"),
        (2**64, "an integer does not fit in 64 bits"),
        (-(2**63) - 1, "an integer does not fit in 64 bits"),
        ({"f": print}, "cannot be serialised"),
    ],
)
def test_unserialisable_values_name_what(value: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message) as caught:
        serde.dumps(value, what="the result of thing()")
    assert str(caught.value).startswith("the result of thing() cannot be serialised")


def test_self_referential_values_are_refused_clearly() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(TypeError, match="contains itself"):
        serde.dumps(loop)
    nested: dict[str, Any] = {"a": {}}
    nested["a"]["back"] = nested
    with pytest.raises(TypeError, match="argument 'x' of t\\(\\) cannot be serialised"):
        serde.dumps_args([], {"x": nested}, is_ref=lambda o: False, ref_key=id, task_name="t")


ARRAYS = {
    "int64 2-d": np.arange(12, dtype=np.int64).reshape(3, 4),
    "float32 3-d": np.linspace(0, 1, 24, dtype=np.float32).reshape(2, 3, 4),
    "float16": np.array([0.5, -2.0, np.inf], dtype=np.float16),
    "float64 with nan": np.array([1.0, np.nan, -0.0]),
    "big-endian int32": np.arange(5, dtype=">i4"),
    "uint8 image": np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3),
    "bool": np.array([[True, False], [False, True]]),
    "complex128": np.array([1 + 2j, -3j]),
    "unicode": np.array(["ab", "c", "✓"]),
    "bytes": np.array([b"ab", b"c"]),
    "datetime64": np.array(["2024-01-01", "2024-02-29"], dtype="datetime64[D]"),
    "timedelta64": np.array([1, 2], dtype="timedelta64[ms]"),
    "0-d": np.array(3.25),
    "empty 0x4": np.zeros((0, 4), dtype=np.int16),
    "transposed (not contiguous)": np.arange(12).reshape(3, 4).T,
    "strided slice": np.arange(48).reshape(4, 3, 4)[::2, :, 1::2],
    "fortran order": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
}


@pytest.mark.parametrize("name", list(ARRAYS))
def test_numpy_arrays_keep_dtype_shape_and_values(name: str) -> None:
    array = ARRAYS[name]
    back = serde.loads(serde.dumps(array))
    assert isinstance(back, np.ndarray)
    assert back.dtype == array.dtype and back.dtype.str == array.dtype.str
    assert back.shape == array.shape
    assert np.array_equal(back, array, equal_nan=array.dtype.kind in "fc")
    assert back.flags.writeable  # a copy, not a view of the message buffer


def test_numpy_arrays_inside_structures() -> None:
    value = {"weights": [np.ones((2, 2)), np.zeros(3, dtype=np.int8)], "step": 7}
    back = serde.loads(serde.dumps(value))
    assert back["step"] == 7
    assert np.array_equal(back["weights"][0], np.ones((2, 2)))
    assert back["weights"][1].dtype == np.int8


def test_numpy_scalars_become_python_values() -> None:
    """As documented, for the kinds msgpack has a type for; the others come
    back as themselves (tests/unit/test_serde_types.py)."""
    assert serde.loads(serde.dumps(np.float32(1.5))) == 1.5
    assert serde.loads(serde.dumps(np.int64(-3))) == -3
    assert serde.loads(serde.dumps(np.bool_(True))) is True
    assert serde.loads(serde.dumps([np.uint8(255)])) == [255]


def test_numpy_arrays_that_cannot_be_serialised() -> None:
    with pytest.raises(TypeError, match="numpy arrays of Python objects"):
        serde.dumps(np.array([object(), 1], dtype=object))
    structured = np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")])
    with pytest.raises(TypeError, match="structured arrays"):
        serde.dumps(structured)


def test_args_and_dependency_results_are_put_back_in_place() -> None:
    marker = object()
    data, refs = serde.dumps_args(
        [1, {"x": marker}],
        {"k": [marker, 2]},
        is_ref=lambda o: o is marker,
        ref_key=id,
        task_name="t",
    )
    assert refs == [marker]
    args, kwargs = serde.loads_args(data, ["result"])
    assert args == [1, {"x": "result"}]
    assert kwargs == {"k": ["result", 2]}
