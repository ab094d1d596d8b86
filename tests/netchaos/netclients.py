"""Client processes of the multi-host state and messaging test, run inside a host's
namespace: ``python netclients.py COMMAND URL ...``.

Each appends what it did as JSON lines, one ``write`` per line (``O_APPEND``), so a
process killed with SIGKILL leaves whole lines only. Both run until the file named
``stop`` exists (and, for a consumer, its mailbox gave nothing for a second).

- ``cas URL KEY OUT STOP``: increment KEY by read + compare-and-set loops. Lines:
  ``invoke`` (before the write), then ``ok`` (with the revision), ``fail`` (lost the
  race: nothing written) or ``info`` (the store failed: written or not, unknown).
- ``consume URL MAILBOX OUT STOP``: receive, apply the effect (create state key
  ``fx/<message id>``: a redelivered message finds it and does nothing), ack.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import accord


def _log(path: str, **entry: Any) -> None:
    line = (json.dumps({"pid": os.getpid(), "t": time.monotonic(), **entry}) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def cas(url: str, key: str, out: str, stop: str) -> None:
    with accord.App("netst", store=url) as app:
        state = app.state
        while not os.path.exists(stop):
            try:
                entry = state.get(key)
            except accord.StoreError:
                continue
            assert entry is not None
            _log(out, ev="invoke", read_version=entry.version, value=entry.value + 1)
            try:
                revision = state.put(key, entry.value + 1, expect_version=entry.version)
            except accord.ConflictError:
                _log(out, ev="fail", read_version=entry.version)
                continue
            except accord.StoreError as exc:
                _log(out, ev="info", read_version=entry.version, error=str(exc)[:200])
                continue
            _log(out, ev="ok", read_version=entry.version, value=entry.value + 1, rev=revision)


def consume(url: str, mailbox: str, out: str, stop: str) -> None:
    with accord.App("netst", store=url) as app:
        box = app.mailbox(mailbox)
        state = app.state
        while True:
            try:
                message = box.receive(timeout=1.0, visibility=3.0)
            except accord.StoreError:
                continue
            if message is None:
                if os.path.exists(stop):
                    return
                continue
            _log(out, ev="got", id=message.id, deliveries=message.deliveries)
            try:
                state.create(f"fx/{message.id}", os.getpid())
                new = True
            except accord.ConflictError:
                new = False  # an earlier delivery had its effect: dedup by message id
            except accord.StoreError:
                continue  # not acknowledged: it comes again
            _log(out, ev="effect", id=message.id, new=new)
            try:
                acked = message.ack()
            except accord.StoreError:
                continue
            _log(out, ev="ack", id=message.id, ok=acked)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"cas": cas, "consume": consume}[command](*args)
