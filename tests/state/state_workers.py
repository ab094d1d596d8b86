"""Processes of the state and messaging tests: ``python state_workers.py COMMAND ...``.

Each writes what it did as JSON lines appended with one ``write`` per line
(``O_APPEND``), so a process killed with SIGKILL leaves whole lines only.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from typing import Any

import accord


def _log(path: str, **entry: Any) -> None:
    line = (json.dumps(entry) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def cas(url: str, count: str, out: str) -> None:
    """Increment ``counter`` ``count`` times by read + compare-and-set retry loops."""
    with accord.App("st", store=url) as app:
        state = app.state
        successes: list[list[int]] = []
        conflicts = 0
        while len(successes) < int(count):
            entry = state.get("counter")
            assert entry is not None
            try:
                revision = state.put("counter", entry.value + 1, expect_version=entry.version)
            except accord.ConflictError:
                conflicts += 1
                continue
            successes.append([entry.version, entry.value + 1, revision])
        _log(out, pid=os.getpid(), successes=successes, conflicts=conflicts)


def bank(url: str, transfers: str, seed: str) -> None:
    """Move money between ``bank/0..9`` by multi-key compare-and-set transactions."""
    with accord.App("st", store=url) as app:
        transfer_money(app.state, int(transfers), int(seed))


def transfer_money(state: accord.State, transfers: int, seed: int) -> int:
    """Do ``transfers`` transfers; return how many races were lost on the way."""
    rng = random.Random(seed)
    done = lost = 0
    while done < transfers:
        a, b = rng.sample(range(10), 2)
        src, dst = state.get(f"bank/{a}"), state.get(f"bank/{b}")
        assert src is not None and dst is not None
        amount = rng.randint(0, max(src.value, 0))
        result = (
            state.txn()
            .compare(src.key, "version", "==", src.version)
            .compare(dst.key, "version", "==", dst.version)
            .then_put(src.key, src.value - amount)
            .then_put(dst.key, dst.value + amount)
            .commit()
        )
        if result.succeeded:
            done += 1
        else:
            lost += 1
    return lost


def writer(url: str, prefix: str, count: str, pause: str) -> None:
    """Put ``count`` keys ``<prefix><pid>/<i>``, one revision each."""
    with accord.App("st", store=url) as app:
        for i in range(int(count)):
            app.state.put(f"{prefix}{os.getpid()}/{i}", i)
            if float(pause):
                time.sleep(float(pause))


def mixer(url: str, prefix: str, count: str, seed: str) -> None:
    """Write under ``prefix`` ``count`` times: puts, two-key transactions, deletes."""
    rng = random.Random(int(seed))
    with accord.App("st", store=url) as app:
        state = app.state
        for i in range(int(count)):
            a, b = (f"{prefix}{k}" for k in rng.sample(range(12), 2))
            roll = rng.random()
            if roll < 0.5:
                state.put(a, [seed, i])
            elif roll < 0.8:
                state.txn().then_put(a, [seed, i]).then_put(b, [seed, i]).commit()
            else:
                state.delete(a)


def logwriter(url: str, count: str, out: str) -> None:
    """Put ``count`` keys ``g/<pid>/<i>`` and log each acknowledged put."""
    with accord.App("st", store=url) as app:
        for i in range(int(count)):
            key = f"g/{os.getpid()}/{i}"
            revision = app.state.put(key, i)
            _log(out, key=key, revision=revision)


def watcher(url: str, prefix: str, start: str, out: str) -> None:
    """Log every change under ``prefix`` from ``start`` on, until killed."""
    with accord.App("st", store=url) as app:
        for change in app.state.watch(prefix, start_revision=int(start)):
            _log(out, revision=change.revision, key=change.key, kind=change.kind.value)


def consumer(url: str, mailbox: str, out: str, visibility: str, work: str) -> None:
    """Receive, log, work, acknowledge, log; until a ``stop`` message."""
    with accord.App("st", store=url) as app:
        box = app.mailbox(mailbox)
        while True:
            message = box.receive(timeout=30, visibility=float(visibility))
            if message is None:
                return
            if message.payload == "stop":
                message.ack()
                return
            _log(out, ev="got", id=message.id, delivery=message.deliveries, pid=os.getpid())
            time.sleep(float(work))
            acked = message.ack()
            _log(out, ev="ack", id=message.id, ok=acked, pid=os.getpid())


def grabber(url: str, mailbox: str, out: str, batch: str, work: str) -> None:
    """Take messages (hidden for a minute) and acknowledge them, until the
    mailbox stays empty for a second; log each message taken."""
    with accord.App("st", store=url) as app:
        box = app.mailbox(mailbox)
        while True:
            messages = box.receive_many(int(batch), timeout=1.0, visibility=60)
            if not messages:
                return
            for m in messages:
                _log(out, id=m.id, delivery=m.deliveries, pid=os.getpid())
            time.sleep(float(work))
            assert all(box.ack(messages))


def publisher(url: str, topic: str, count: str, tag: str) -> None:
    """Publish ``<tag><i>`` for i < ``count``, in batches of 1 to 5."""
    rng = random.Random(tag)
    with accord.App("st", store=url) as app:
        target = app.topic(topic)
        i = 0
        while i < int(count):
            n = min(rng.randint(1, 5), int(count) - i)
            target.publish_many([f"{tag}{j}" for j in range(i, i + n)])
            i += n


def subscriber(url: str, topic: str, name: str, out: str, until: str) -> None:
    """Log every message of ``topic`` for subscriber ``name`` until offset ``until``."""
    with accord.App("st", store=url) as app, app.topic(topic).subscribe(name, batch=10) as sub:
        for message in sub:
            _log(out, offset=message.offset, payload=message.payload, pid=os.getpid())
            if message.offset >= int(until):
                sub.commit()
                return


def locker(url: str, name: str, rounds: str, hold: str, out: str) -> None:
    """Take lock ``name`` ``rounds`` times, holding it ``hold`` seconds each."""
    with accord.App("st", store=url) as app:
        for _ in range(int(rounds)):
            with app.state.lock(name, ttl=5) as lock:
                start = time.monotonic()
                time.sleep(float(hold))
                _log(out, token=lock.token, start=start, end=time.monotonic(), pid=os.getpid())


def holder(url: str, key: str, ttl: str) -> None:
    """Put ``key`` tied to a lease kept alive until this process dies."""
    with accord.App("st", store=url) as app:
        lease = app.state.lease(float(ttl))
        lease.start_keepalive()
        app.state.put(key, os.getpid(), lease=lease)
        print("ready", flush=True)
        while True:
            time.sleep(1)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {
        "cas": cas,
        "writer": writer,
        "mixer": mixer,
        "grabber": grabber,
        "publisher": publisher,
        "bank": bank,
        "logwriter": logwriter,
        "watcher": watcher,
        "consumer": consumer,
        "subscriber": subscriber,
        "locker": locker,
        "holder": holder,
    }[command](*args)
