"""Processes of the group-commit tests: ``python group_workers.py COMMAND ...``.

Each appends what it did to a JSON-lines log, one ``write`` per line
(``O_APPEND``), so a process killed with SIGKILL leaves whole lines only.

The kill injector (:func:`arm`) is a profile hook: it counts the calls made
inside the group-commit code (``accord.store.sqlite``: ``group``, ``slots``,
``state``, ``wire``), C calls included, and SIGKILLs the process at the N-th
one, N drawn from a seeded generator. So a process dies at any point of that
code (between two writes of one slot, inside ``take()``, between a commit and its write-back...),
with no hook in the product code.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import accord
from accord.store.sqlite.slots import new_group_id

GROUP_FILES = ("sqlite/group.py", "sqlite/slots.py", "sqlite/state.py", "sqlite/wire.py")


def log(path: str, **entry: Any) -> None:
    line = (json.dumps(entry) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(countdown: int, *, within: str | None = None, c_name: str | None = None) -> None:
    """SIGKILL this process at the ``countdown``-th call event in the group code.

    ``within``: count only while a function of that name (in the group code)
    is running. ``c_name``: count only calls (and returns) of that C function.
    """
    left = countdown
    depth = 0

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal left, depth
        code = frame.f_code
        if not code.co_filename.endswith(GROUP_FILES):
            return
        if within is not None and code.co_name == within:
            if event == "call":
                depth += 1
            elif event == "return":
                depth -= 1
        if within is not None and depth <= 0:
            return
        if c_name is not None and not (
            event in ("c_call", "c_return") and getattr(arg, "__name__", "") == c_name
        ):
            return
        left -= 1
        if left <= 0:
            _die()

    sys.setprofile(hook)


def after_park(then: Callable[[], None]) -> None:
    """Run ``then`` each time this process has parked a request."""

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        if event == "return" and code.co_name == "park" and code.co_filename.endswith(GROUP_FILES):
            if arg is not None:
                then()

    sys.setprofile(hook)


def token(value: Any) -> str | None:
    """The token of a value written by :func:`model` (``None`` for others)."""
    if isinstance(value, dict):
        t = value.get("t")
        return t if isinstance(t, str) else None
    return None


# -- the model workload ---------------------------------------------------------
KEYS = [f"m/{i}" for i in range(4)]
BIG = "m/big"  # holds a large value: a compare of its value that fails returns it


def model(url: str, out: str, wid: str, seed: str, ops: str, kill_at: str) -> None:
    """Random writes, each logged before (invoke) and after (ok / conflict).

    Values carry a unique token: the checker finds each write in the history.
    Sizes: small, about 40 KB (an outcome larger than a slot when a compare on
    it fails) and 300 KB (a request too large to park).
    """
    rng = random.Random(int(seed))
    with accord.App("st", store=url) as app:
        state = app.state
        versions: dict[str, int] = {}
        if int(kill_at):
            arm(int(kill_at))
        for n in range(int(ops)):
            op_id = f"{wid}.{n}"
            roll = rng.random()
            key = rng.choice(KEYS)
            size = rng.choice([0, 0, 0, 0, 40_000, 40_000, 300_000])
            value = {"t": op_id, "pad": "x" * size}
            if roll < 0.4:
                log(out, op="put", id=op_id, key=key, type="invoke")
                revision = state.put(key, value)
                log(out, op="put", id=op_id, key=key, type="ok", revision=revision)
            elif roll < 0.75:
                expect = versions.get(key, rng.randrange(0, 4))
                log(out, op="cas", id=op_id, key=key, expect=expect, type="invoke")
                try:
                    revision = state.put(key, value, expect_version=expect)
                except accord.ConflictError as exc:
                    versions[key] = exc.actual
                    log(
                        out,
                        op="cas",
                        id=op_id,
                        key=key,
                        expect=expect,
                        type="fail",
                        actual=exc.actual,
                        revision=exc.revision,
                    )
                else:
                    versions[key] = expect + 1
                    log(
                        out,
                        op="cas",
                        id=op_id,
                        key=key,
                        expect=expect,
                        type="ok",
                        revision=revision,
                    )
            else:
                # Fails (no value has this token), and returns the big value it saw.
                log(out, op="compare", id=op_id, key=BIG, type="invoke")
                result = (
                    state.txn()
                    .compare(BIG, "value", "==", {"t": "never"})
                    .then_put(key, value)
                    .commit()
                )
                log(
                    out,
                    op="compare",
                    id=op_id,
                    key=BIG,
                    type="ok" if result.succeeded else "fail",
                    revision=result.revision,
                )
        log(out, op="done", id=wid, type="ok")


# -- single scenarios --------------------------------------------------------------
def parked(url: str, out: str, action: str, *args: str) -> None:
    """Do one write, logging ``parked`` once its request waits in a slot."""
    with accord.App("st", store=url) as app:
        state = app.state
        after_park(lambda: log(out, event="parked", pid=os.getpid()))
        if action == "bigcompare":
            result = (
                state.txn().compare(BIG, "value", "==", {"t": "never"}).then_put("m/x", 1).commit()
            )
            sys.setprofile(None)
            log(out, event="done", succeeded=result.succeeded, revision=result.revision)
        else:
            key, value = args
            revision = state.put(key, value)
            sys.setprofile(None)
            log(out, event="done", key=key, value=value, revision=revision)


def _lead_now(app: accord.App, out: str) -> tuple[Any, Any]:
    """Take the leader lock of the app's store (waiting for it); log ``leading``."""
    store: Any = app.store
    group = store._commit_group()
    while not group.try_lead():
        time.sleep(0.001)
    log(out, event="leading", pid=os.getpid())
    return store, group


def leader(url: str, out: str, kill_at: str) -> None:
    """Hold the leader lock; on a line on stdin, lead one group (parked
    requests only), dying at the ``kill_at``-th slot write inside ``take()``."""
    with accord.App("st", store=url) as app:
        store, group = _lead_now(app, out)
        sys.stdin.readline()
        # Each slot takes two packs: the owner's lock probe, then the new body.
        arm(int(kill_at), within="take", c_name="pack")
        try:
            store._lead(None)
        finally:
            group.unlead()
        sys.setprofile(None)
        log(out, event="led")


def churn(url: str, out: str, seconds: str) -> None:
    """Lead for ``seconds``, taking every parked request and handing it back
    at once (PENDING again, not applied), over and over: each take rewrites
    the slot's body with the same ticket."""
    with accord.App("st", store=url) as app:
        _, group = _lead_now(app, out)
        deadline = time.monotonic() + float(seconds)
        count = 0
        try:
            while time.monotonic() < deadline:
                taken = group.take(new_group_id(), False)
                group.finish((t.slot, t.ticket, 0, 0, None) for t in taken)
                count += len(taken)
        finally:
            group.unlead()
        log(out, event="churned", count=count)


def fullput(url: str, out: str, filler: str, keep: str) -> None:
    """Fill the disk but ``keep`` bytes, then make a store there and write
    state: the error must be a clear one, and writes go on once space is freed."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = b"\1" * 65536
        try:
            while True:
                os.write(fd, chunk)
        except OSError:
            pass
        size = os.fstat(fd).st_size
        os.ftruncate(fd, max(size - int(keep), 0))
    finally:
        os.close(fd)
    with accord.App("st", store=url) as app:
        free = shutil.disk_usage(os.path.dirname(filler)).free
        try:
            app.state.put("k", 1)
        except accord.StorageFullError as exc:
            log(out, event="full", free=free, message=str(exc))
        else:
            log(out, event="written", free=free)
        os.unlink(filler)
        revision = app.state.put("k", 2)
        log(out, event="after", revision=revision)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    command, *rest = sys.argv[1:]
    commands: dict[str, Callable[..., None]] = {
        "model": model,
        "parked": parked,
        "leader": leader,
        "churn": churn,
        "fullput": fullput,
    }
    commands[command](*rest)
