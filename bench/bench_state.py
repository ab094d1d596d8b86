"""Benchmark of the state store and messaging on the embedded (SQLite) store
(or on a PostgreSQL server).

Prints, with durable commits (WAL, synchronous=FULL), each figure with the
floor it must meet where the issue sets one:

- the machine's own baseline: one-row ``INSERT`` + ``COMMIT`` transactions
  in plain SQLite (WAL, synchronous=FULL), in one process and summed over 4
  (what one durable commit costs here; accord's figures are read against it);

- get, put and compare-and-set operations per second, in one process and
  summed over 4 processes (each on its own key, so every CAS succeeds; a
  contended counter is shown as well);
- watch delivery latency (a write in one process to a watcher in another)
  p50 and p99;
- mailbox messages per second, sent and acknowledged end to end (a sender
  process and a receiver process), one message per call and in batches;
- topic messages per second, published and received end to end.

    python bench/bench_state.py [--quick] [--only put,cas] [--postgresql URL]

``--only`` keeps the rows whose label contains one of the words (the
baseline rows are always printed).

With ``--postgresql`` the same figures are taken on a PostgreSQL server (each
in a new database made there); the floors are the embedded store's.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import accord

GET_FLOOR = 20_000
PUT_FLOOR_1 = 3_000
PUT_FLOOR_4 = 4_000
WATCH_P50_FLOOR_MS = 10.0
MAILBOX_FLOOR = 2_000


def _app(url: str) -> accord.App:
    return accord.App("bench", store=url)


# -- workers (module level, so that spawn can find them) ----------------------
def _ops_worker(url: str, kind: str, key: str, seconds: float, start: Any, out: Any) -> None:
    with _app(url) as app:
        state = app.state
        state.put(key, 0)
        entry = state.get(key)
        assert entry is not None
        version = entry.version
        start.wait()
        done = 0
        t0 = time.perf_counter()
        stop = t0 + seconds
        while True:
            for _ in range(50):
                if kind == "get":
                    state.get(key)
                elif kind == "put":
                    state.put(key, done)
                elif kind == "cas":
                    state.put(key, done, expect_version=version)
                    version += 1
                else:  # contended counter: read, then compare-and-set, retry on conflict
                    while True:
                        entry = state.get("counter")
                        assert entry is not None
                        try:
                            state.put("counter", entry.value + 1, expect_version=entry.version)
                            break
                        except accord.ConflictError:
                            pass
                done += 1
            if time.perf_counter() >= stop:
                break
        out.put(done / (time.perf_counter() - t0))


def _raw_worker(path: str, key: str, seconds: float, start: Any, out: Any) -> None:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    start.wait()
    done = 0
    t0 = time.perf_counter()
    stop = t0 + seconds
    while time.perf_counter() < stop:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT OR REPLACE INTO t (k, v) VALUES (?, ?)", (key, done))
        conn.execute("COMMIT")
        done += 1
    out.put(done / (time.perf_counter() - t0))
    conn.close()


def raw_commits_per_second(folder: Path, processes: int, seconds: float) -> float:
    """The machine's baseline: durable one-row transactions in plain SQLite."""
    import sqlite3

    path = str(folder / f"raw{processes}.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
    conn.close()
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_raw_worker, args=(path, f"k{i}", seconds, start, out))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    time.sleep(0.5 + 0.1 * processes)
    start.set()
    rates = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    return float(sum(rates))


def ops_per_second(url: str, kind: str, processes: int, seconds: float) -> float:
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    out = ctx.Queue()
    if kind == "counter":
        with _app(url) as app:
            app.state.put("counter", 0)
    procs = [
        ctx.Process(target=_ops_worker, args=(url, kind, f"k{i}", seconds, start, out))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    time.sleep(1.0 + 0.3 * processes)  # let them import and open the store
    start.set()
    rates = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    return float(sum(rates))


def _watch_writer(url: str, count: int, pause: float, start: Any) -> None:
    with _app(url) as app:
        start.wait()
        for i in range(count):
            app.state.put("w/k", [i, time.monotonic()])
            time.sleep(pause)


def watch_latency(url: str, count: int) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    with _app(url) as app:
        watch = app.state.watch("w/")
        writer = ctx.Process(target=_watch_writer, args=(url, count, 0.002, start))
        writer.start()
        time.sleep(1.0)
        start.set()
        lat = []
        for change in watch:
            lat.append((time.monotonic() - change.value[1]) * 1000)
            if change.value[0] == count - 1:
                break
        writer.join()
    lat.sort()
    return statistics.median(lat), lat[int(len(lat) * 0.99) - 1]


def _mailbox_sender(url: str, count: int, batch: int, start: Any) -> None:
    with _app(url) as app:
        box = app.mailbox("bench")
        start.wait()
        for i in range(0, count, batch):
            if batch == 1:
                box.send(i)
            else:
                box.send_many(list(range(i, min(count, i + batch))))


def mailbox_rate(url: str, count: int, batch: int) -> float:
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    sender = ctx.Process(target=_mailbox_sender, args=(url, count, batch, start))
    sender.start()
    with _app(url) as app:
        box = app.mailbox("bench")
        box.receive(timeout=0)
        time.sleep(1.0)
        t0 = time.perf_counter()
        start.set()
        got = 0
        while got < count:
            if batch == 1:
                m = box.receive(timeout=30)
                assert m is not None
                m.ack()
                got += 1
            else:
                ms = box.receive_many(batch, timeout=30)
                box.ack(ms)
                got += len(ms)
        elapsed = time.perf_counter() - t0
    sender.join()
    return count / elapsed


def _publisher(url: str, name: str, count: int, batch: int, start: Any) -> None:
    with _app(url) as app:
        topic = app.topic(name)
        start.wait()
        for i in range(0, count, batch):
            if batch == 1:
                topic.publish(i)
            else:
                topic.publish_many(list(range(i, min(count, i + batch))))


def topic_rate(url: str, count: int, batch: int) -> float:
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    with _app(url) as app:
        sub = app.topic("bench").subscribe("reader", batch=max(batch, 100))
        publisher = ctx.Process(target=_publisher, args=(url, "bench", count, batch, start))
        publisher.start()
        time.sleep(1.0)
        t0 = time.perf_counter()
        start.set()
        for got, _ in enumerate(sub, 1):
            if got == count:
                break
        elapsed = time.perf_counter() - t0
        sub.close()
    publisher.join()
    return count / elapsed


def _fresh(folder: Path, name: str, server: str | None = None) -> str:
    """A new, empty store: an SQLite file in ``folder``, or a new database on
    the PostgreSQL ``server`` (a URL naming a database to connect to)."""
    if server is None:
        url = f"sqlite:///{folder / name}.db"
    else:
        import psycopg

        dbname = f"accord_bench_{name}_{os.getpid()}"
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {dbname}")
            admin.execute(f"CREATE DATABASE {dbname}")
        url = urlunsplit(urlsplit(server)._replace(path=f"/{dbname}"))
    _app(url).store.close()
    return url


def row(
    label: str, value: float, unit: str, floor: float | None = None, lower: bool = False
) -> str:
    if floor is None:
        verdict = ""
    else:
        ok = value <= floor if lower else value >= floor
        verdict = f"  ({'<=' if lower else '>='} {floor:,.0f}: {'ok' if ok else 'MISSED'})"
    return f"{label:<48} {value:>12,.1f} {unit}{verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument(
        "--postgresql",
        metavar="URL",
        help="measure a PostgreSQL server instead (a URL of a database to connect to, "
        "allowed to create databases)",
    )
    parser.add_argument(
        "--only", metavar="WORDS", help="comma-separated words: keep only the rows naming one"
    )
    args = parser.parse_args()
    only = [w.strip() for w in args.only.split(",")] if args.only else None
    seconds = 1.0 if args.quick else 3.0
    scale = 1 if not args.quick else 0
    server: str | None = args.postgresql
    where = "SQLite WAL synchronous=FULL" if server is None else "PostgreSQL"
    print(f"accord {accord.__version__}, {os.cpu_count()} CPUs, {where}")

    def fresh(name: str) -> str:
        return _fresh(folder, name, server)

    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    with tempfile.TemporaryDirectory(prefix="accord-bench-state-") as tmp:
        folder = Path(tmp)
        if server is None:
            for n in (1, 4):
                label = "baseline: SQLite one-row commits /s, " + (
                    "1 process" if n == 1 else f"{n} processes (sum)"
                )
                print(row(label, raw_commits_per_second(folder, n, seconds), "tx/s"), flush=True)
        ops: list[tuple[str, str, int, str, float | None]] = [
            ("get /s, 1 process", "get", 1, "g1", GET_FLOOR),
            ("get /s, 4 processes", "get", 4, "g4", None),
            ("put /s, 1 process", "put", 1, "p1", PUT_FLOOR_1),
            ("put /s, 4 processes (sum)", "put", 4, "p4", PUT_FLOOR_4),
            ("compare-and-set /s, 1 process", "cas", 1, "c1", PUT_FLOOR_1),
            ("compare-and-set /s, 4 processes (sum)", "cas", 4, "c4", PUT_FLOOR_4),
            ("contended counter increments /s, 4 processes", "counter", 4, "n4", None),
        ]

        def wanted(label: str) -> bool:
            return only is None or any(word in label for word in only)

        for label, kind, n, name, floor in ops:
            if wanted(label):
                rate = ops_per_second(fresh(name), kind, n, seconds)
                print(row(label, rate, "ops/s", floor), flush=True)
        if wanted("watch delivery latency"):
            p50, p99 = watch_latency(fresh("w"), 500 + 1500 * scale)
            print(row("watch delivery latency p50", p50, "ms", WATCH_P50_FLOOR_MS, lower=True))
            print(row("watch delivery latency p99", p99, "ms"))
        count = 2000 + 8000 * scale
        rates: list[tuple[str, Callable[[], float], float | None]] = [
            (
                "mailbox sent+acked /s, batches of 100",
                lambda: mailbox_rate(fresh("mb"), count, 100),
                MAILBOX_FLOOR,
            ),
            (
                "mailbox sent+acked /s, one per call",
                lambda: mailbox_rate(fresh("m1"), count // 4, 1),
                None,
            ),
            (
                "topic published+received /s, batches of 100",
                lambda: topic_rate(fresh("tb"), count, 100),
                None,
            ),
            (
                "topic published+received /s, one per call",
                lambda: topic_rate(fresh("t1"), count // 4, 1),
                None,
            ),
        ]
        for label, measure, floor in rates:
            if wanted(label):
                print(row(label, measure(), "msg/s", floor), flush=True)
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
