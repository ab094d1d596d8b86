"""Tasks whose outcome is hard to record: error texts no store holds as they
are, exceptions that misbehave, results that cannot be stored.

Each task takes the name of one misbehaviour (arguments must serialise, so the
bad text is made inside the task). The tests (tests/test_bad_data.py) check
that every attempt ends recorded and that the node goes on.
"""

from __future__ import annotations

import os
from typing import Any

import accord

# Results over 64 KiB but under the inline limit are refused (ResultTooLarge).
app = accord.App("bad_data", max_payload=64 * 1024, inline_limit=1024 * 1024)

# What os.listdir returns for a file name that is not valid UTF-8.
UNDECODABLE = os.fsdecode(b"caf\xe9.txt")
HUGE = 8 * 1024 * 1024


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


class NothingWorks(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken too")


class Unpicklable(Exception):
    """Cannot be rebuilt from its pickle (its __init__ needs two arguments),
    and holds a lock, which cannot be pickled at all."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what}: {why}")
        import threading

        self.lock = threading.Lock()


class Escape(BaseException):
    """Not an Exception: a task's ``except Exception`` would not catch it."""


def _raise(kind: str) -> None:
    if kind == "nul":
        raise ValueError("bad\x00text")
    if kind == "surrogate":
        raise FileNotFoundError(f"cannot read {UNDECODABLE}")
    if kind == "huge":
        raise ValueError("x" * HUGE)
    if kind == "str_raises":
        raise StrRaises("hidden")
    if kind == "nothing_works":
        raise NothingWorks("hidden")
    if kind == "unpicklable":
        raise Unpicklable("a task", "unpicklable error")
    if kind == "base_exception":
        raise Escape("a BaseException")
    if kind == "message_type":
        raise ValueError(b"bytes \x00 \xff", 3)  # str() of it is a repr: storable as is
    if kind == "retry_text":
        raise accord.Retry(f"again\x00 {UNDECODABLE}")
    if kind == "retry_delay":
        exc = accord.Retry("again later")
        exc.delay = float("nan")
        raise exc
    raise AssertionError(f"unknown kind {kind!r}")


RAISES = [
    "nul",
    "surrogate",
    "huge",
    "str_raises",
    "nothing_works",
    "unpicklable",
    "base_exception",
    "message_type",
    "retry_text",
    "retry_delay",
]


@app.task(retries=1, backoff=0.01)
def fail(kind: str) -> None:
    _raise(kind)


RETURNS = ["surrogate", "too_large", "unserialisable", "far_handle"]


@app.task(retries=1, backoff=0.01)
def give(kind: str) -> Any:
    if kind == "surrogate":
        return UNDECODABLE
    if kind == "too_large":
        return b"x" * (app.max_payload + 1)
    if kind == "unserialisable":
        return {"fine": 1, "not": object()}
    if kind == "far_handle":
        # A handle to an id no store can hold (past 64 bits).
        return accord.Handle(app, 2**70, "give")
    raise AssertionError(f"unknown kind {kind!r}")


@app.task
def fine(x: int) -> int:
    return x + 1


@app.task(retries=1, backoff=0.01)
def text_error(text: str) -> None:
    """Raise with a text given by the test (storable everywhere but in a
    database whose encoding lacks some of its characters)."""
    raise ValueError(text)
