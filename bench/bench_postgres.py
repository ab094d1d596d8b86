"""Benchmark of the task runtime on PostgreSQL, with 1, 2 and 4 node processes.

Prints the figures of bench_runtime.py (throughput of 10,000 and 50,000 no-op
tasks from submit to the last result, round-trip p50/p99, a 1,000-wide
fan-out plus fan-in) for each number of nodes, each node an ``accord worker``
process with 2 slots, so that scaling with nodes shows.

By default it starts a throwaway PostgreSQL server (fsync on) from the
system's binaries, as tests/support/pgserver.py does; ``--store URL`` uses a server
of yours instead (each configuration gets a fresh schema in it).

    python bench/bench_postgres.py [--quick] [--nodes 1,2,4] [--store URL] [--state]

``--state`` adds bench_state.py's figures (state operations per second) on
the same server.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import psycopg  # noqa: E402
from bench_runtime import fan, pct, round_trips, start_node, stop_node, throughput  # noqa: E402

import accord  # noqa: E402
import apps  # noqa: E402


def fresh_schema(url: str) -> tuple[str, str]:
    """A new empty schema on the server at ``url``, its name, and a URL that uses it."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    joiner = "&" if "?" in url else "?"
    return name, f"{url}{joiner}options=-csearch_path%3D{name}"


def drop_schema(url: str, name: str) -> None:
    """Drop a configuration's schema, so that autovacuum does not clean up
    after it while the next one is measured."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def commit_time(url: str, count: int = 200) -> float:
    """The median time of a one-row durable commit on the server, measured
    just before a round-trip figure: what the disk (and the machine's load)
    allow, for a reader to judge that figure by."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS accord_commit_probe (n int)")
        times = []
        for _ in range(count):
            started = time.perf_counter()
            conn.execute("INSERT INTO accord_commit_probe VALUES (1)")
            times.append(time.perf_counter() - started)
        conn.execute("DROP TABLE accord_commit_probe")
    return pct(times, 0.5)


def bind(url: str) -> accord.App:
    app = apps.app
    app.runtime.reopen(url)
    return app


def wait_for_nodes(app: accord.App, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while app.live_nodes() < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {app.live_nodes()} of {count} nodes started")
        time.sleep(0.05)
    apps.noop.map([()] * (4 * count))[-1].result(timeout=timeout)  # warm every slot


def run(base_url: str, nodes: int, sizes: tuple[int, int, int, int], mode: str) -> None:
    small, large, trips, width = sizes
    schema, url = fresh_schema(base_url)
    app = bind(url)
    app.store.schema_version()  # create the schema before the nodes race to
    procs = [start_node(url, mode) for _ in range(nodes)]
    try:
        wait_for_nodes(app, nodes)
        print(f"-- {nodes} node process(es), 2 {mode} slots each")

        def trip(when: str) -> None:
            commit = commit_time(url)
            times = round_trips(trips)
            print(
                f"round trip ({trips} sequential, {when}):  p50 "
                f"{pct(times, 0.5) * 1000:6.2f} ms   p99 {pct(times, 0.99) * 1000:6.2f} ms   "
                f"(server's durable commit: p50 {commit * 1000:.2f} ms; a round trip "
                "makes 3 commits)"
            )

        trip("new store")
        for count in (small, large):
            rate = throughput(app, count)
            print(f"throughput, {count:>6} no-op tasks: {rate:8.0f} tasks/s")
        # Right after the bursts the tables hold dead row versions that
        # autovacuum has not cleaned yet: the worst case of a busy queue.
        trip("right after the bursts")
        took = fan(app, width)
        print(f"fan-out {width} + fan-in:         {took * 1000:8.1f} ms")
    finally:
        for proc in procs:
            stop_node(proc)
        app.close()
        drop_schema(base_url, schema)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    parser.add_argument("--nodes", default="1,2,4", help="node counts to measure, e.g. 1,2,4")
    parser.add_argument("--mode", default="process", choices=["process", "thread"])
    parser.add_argument("--store", help="postgresql:// URL of a server to use (default: start one)")
    parser.add_argument(
        "--state", action="store_true", help="also run bench_state.py's figures on this server"
    )
    args = parser.parse_args()
    sizes = (1000, 2000, 50, 200) if args.quick else (10_000, 50_000, 500, 1000)
    counts = [int(n) for n in args.nodes.split(",")]
    server = None
    base_url = args.store
    if base_url is None:
        from support import pgserver

        server = pgserver.PgServer()
        server.init()
        server.start()
        base_url = server.url()
    try:
        with psycopg.connect(base_url, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            fsync = conn.execute("SHOW fsync").fetchone()
        print(
            f"accord {accord.__version__} runtime benchmark: PostgreSQL "
            f"{version[0] if version else '?'} (fsync={fsync[0] if fsync else '?'}), "
            f"{os.cpu_count()} CPUs"
        )
        for nodes in counts:
            run(base_url, nodes, sizes, args.mode)
        if args.state:
            quick = ["--quick"] if args.quick else []
            subprocess.run(
                [sys.executable, str(HERE / "bench_state.py"), "--postgresql", base_url, *quick],
                check=True,
            )
    finally:
        if server is not None:
            server.cleanup()


if __name__ == "__main__":
    main()
