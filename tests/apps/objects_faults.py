"""Processes that tests/test_objects_faults.py SIGKILLs in the middle of their work.

``python -m apps.objects_faults COMMAND STORE_URL ...`` (the store's objects
where the environment says, as for any accord process). Each prints one line
per step it has taken, flushed, so the test knows when to kill it; the
``forget`` and ``hide`` modes of ``collect`` kill themselves at an exact point
of the collection instead.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO, cast

import accord

MiB = 1024 * 1024


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def chunk_of(seed: int, index: int, size: int = MiB) -> bytes:
    """The ``index``-th chunk of the stream ``seed`` (the test makes the same bytes)."""
    return random.Random(seed * 1_000_003 + index).randbytes(size)


class SlowStream:
    """A binary stream of ``count`` chunks of 1 MiB, one every ``pause`` seconds;
    it says ``chunk K`` once chunk K has been handed over."""

    def __init__(self, seed: int, count: int, pause: float) -> None:
        self.seed = seed
        self.count = count
        self.pause = pause
        self.index = 0

    def read(self, size: int = -1) -> bytes:
        if self.index >= self.count:
            return b""
        if self.index:
            say(f"chunk {self.index - 1}")  # the one before has gone to the store
            time.sleep(self.pause)
        data = chunk_of(self.seed, self.index)
        self.index += 1
        return data


def put(url: str, seed: str, count: str, pause: str) -> None:
    """Put a slow stream of ``count`` MiB (killed by the test part-way)."""
    stream = SlowStream(int(seed), int(count), float(pause))
    with accord.App("objfaults", store=url) as app:
        ref = app.objects.put_stream(cast(BinaryIO, stream))
        say(f"done {ref.digest}")


def read(url: str, digest: str, pause: str) -> None:
    """Read one object in chunks of 1 MiB, slowly (killed by the test part-way)."""
    with accord.App("objfaults", store=url) as app:
        ref = app.objects.ref(digest)
        with app.objects.open(ref) as file:
            say("opened")
            n = 0
            while file.read(MiB):
                say(f"read {n}")
                n += 1
                time.sleep(float(pause))
        say("done")


def collect(url: str, mode: str, after: str) -> None:
    """``gc(grace=0)``, killed after the ``after``-th object: by itself right
    after the catalogue row went (``forget``) or after the bytes were moved
    taken (``take``), or by the test (``external``: each step slowed a little)."""
    limit = int(after)
    with accord.App("objfaults", store=url) as app:
        objects = app.objects
        store: Any = objects.store
        backend: Any = objects.backend
        forget, take = store.object_forget, backend.collect
        done = {"forget": 0, "take": 0}

        def forget_then(digest: str, touched_before: float) -> bool:
            gone: bool = forget(digest, touched_before)
            done["forget"] += gone
            say(f"forgot {done['forget']}")
            if mode == "forget" and done["forget"] >= limit:
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "external":
                time.sleep(0.01)
            return gone

        def take_then(digest: str, recorded: Callable[[], bool]) -> None:
            take(digest, recorded)
            done["take"] += 1
            if mode == "take" and done["take"] >= limit:
                os.kill(os.getpid(), signal.SIGKILL)

        store.object_forget = forget_then
        backend.collect = take_then
        say("collecting")
        report = objects.gc(grace=0)
        say(f"done {len(report.collected)}")


COMMANDS: dict[str, Callable[..., None]] = {"collect": collect, "put": put, "read": read}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
