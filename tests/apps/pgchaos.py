"""A client process for the PostgreSQL chaos tests (tests/chaos/test_pg_faults.py, Q4).

``python -m apps.pgchaos --client C --keys N --journal FILE`` submits ``N``
tasks of tests/apps/chaos.py (``work(key)``), the i-th with the idempotency
key ``q4-C-i``, to the store named by ``ACCORD_STORE``. Its journal holds one
JSON line per event, each appended with one ``write`` to a file opened with
``O_APPEND`` (so a SIGKILL leaves whole lines, or a torn last one):

- ``intent`` before it submits a key (the submit may or may not happen),
- ``ack`` with the task id once the store acknowledged it,
- ``error`` when the store raised (``unknown``: the commit's outcome is
  unknown) before it submits the same key again,
- ``recheck`` when a restarted client submits an acknowledged key again (it
  must get the same task back), and ``done`` at the end.

Started again after a kill, the client reads its journal, first submits
again every key with an intent but no ack (it may have been sent), then
goes on with the keys it never began.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from accord.errors import StoreError


class Journal:
    def __init__(self, path: str) -> None:
        self.path = path
        self.pid = os.getpid()

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # torn by a kill
        return out

    def write(self, ev: str, key: str | None = None, **extra: Any) -> None:
        entry = {"ev": ev, "key": key, "pid": self.pid, "t": time.monotonic(), **extra}
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
        finally:
            os.close(fd)


def submit(journal: Journal, key: str, ev: str = "ack") -> int:
    """Submit ``key`` until the store acknowledges it; journal every step."""
    from apps.chaos import work

    while True:
        try:
            handle = work.with_options(idempotency_key=key).submit(key, 0.0)
        except StoreError as exc:
            unknown = bool(getattr(exc, "outcome_unknown", False))
            journal.write("error", key, unknown=unknown, error=type(exc).__name__)
            time.sleep(0.05)
            continue
        journal.write(ev, key, task_id=handle.id)
        return handle.id


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="apps.pgchaos")
    parser.add_argument("--client", required=True)
    parser.add_argument("--keys", type=int, required=True)
    parser.add_argument("--journal", required=True)
    args = parser.parse_args(argv)
    journal = Journal(args.journal)
    past = journal.read()
    intents = list(dict.fromkeys(e["key"] for e in past if e["ev"] == "intent"))
    acked = {e["key"] for e in past if e["ev"] == "ack"}
    journal.write("start", None, pending=len([k for k in intents if k not in acked]))
    for key in intents:
        if key not in acked:
            submit(journal, key)  # it may have been sent: send it again, same key
    for key in [k for k in intents if k in acked][-2:]:
        submit(journal, key, "recheck")  # an acknowledged key again: the same task
    for i in range(len(intents), args.keys):
        key = f"q4-{args.client}-{i}"
        journal.write("intent", key)
        submit(journal, key)
    journal.write("done")
    from apps.chaos import app

    app.close()


if __name__ == "__main__":
    main()
