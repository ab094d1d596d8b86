"""Benchmark of child tasks: how soon other nodes see a child, and how many
commits a fan-out takes.

Prints, per backend (SQLite file; PostgreSQL started from the system's
binaries as tests/support/pgserver.py does, unless --no-postgresql) and node mode:
- the time from a parent's ``child.submit()`` to the child's row being
  visible on another connection, while the parent goes on computing (one
  child per round, ``--rounds`` rounds);
- for a parent that submits ``--width`` children in a loop: the loop's time
  and the number of commits the children went in (distinct creation times).

The parent runs on a node in this process (thread mode) or in its slot
process (process mode); nothing else runs on the store.

    python bench/bench_children.py [--rounds 20] [--width 1000] [--no-postgresql]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import child_apps  # noqa: E402

import accord  # noqa: E402


def _bind(url: str) -> accord.App:
    app = child_apps.app
    app.runtime.reopen(url)
    return app


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    cut = sorted(values)
    return (
        f"median {statistics.median(cut) * 1e3:.2f} ms, min {cut[0] * 1e3:.2f}, "
        f"max {cut[-1] * 1e3:.2f}"
    )


def busy(app: accord.App, label: str, rounds: int) -> None:
    """The parent computes in pure Python after each submit (in its slot
    process); this process watches for the children's rows."""
    parent = child_apps.announce_busy.submit(rounds, 0.2)
    parent_id = parent.id
    count, close = child_apps._counter(app.store_url)
    seen: list[float] = []
    deadline = time.monotonic() + 120
    try:
        while len(seen) < rounds and time.monotonic() < deadline:
            rows = count(parent_id)
            now = time.time()  # after the read: an upper bound of when the row appeared
            seen += [now] * (rows - len(seen))
            time.sleep(0.0002)
    finally:
        close()
    called = parent.result(timeout=120)
    after = [s - c for s, c in zip(seen, called, strict=False)]
    print(
        f"{label:<10} process submit -> visible elsewhere ({rounds} rounds, parent computing "
        f"in Python, seen from another process): {_ms(after)}"
        + (f"; {rounds - len(seen)} not seen until the parent ended" if len(seen) < rounds else "")
    )


def measure(url: str, label: str, mode: str, rounds: int, width: int) -> None:
    app = _bind(url)
    try:
        with app.embedded_node(mode=mode, slots=2):
            child_apps.child.submit(0).result(timeout=60)  # slots warm
            seen = child_apps.announce.submit(rounds, 0.05).result(timeout=600)
            visible = [s for s in seen if s is not None]
            missing = len(seen) - len(visible)
            print(
                f"{label:<10} {mode:<7} submit -> visible elsewhere ({rounds} rounds, parent "
                f"computing): {_ms(visible)}"
                + (f"; {missing} not visible within {child_apps.GIVE_UP:g} s" if missing else "")
            )
            if mode == "process":
                busy(app, label, rounds)
            parent = child_apps.fan_out.submit(width)
            loop = parent.result(timeout=600)["loop"]
            kids = [t for t in app.store.tasks(parent.info().run_id) if t.parent_id == parent.id]
            commits = len({t.created_at for t in kids})
            print(
                f"{label:<10} {mode:<7} fan-out of {width}: loop {loop * 1e3:.1f} ms, "
                f"{len(kids)} children in {commits} commits"
            )
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--no-postgresql", action="store_true")
    parser.add_argument("--modes", default="thread,process")
    args = parser.parse_args()
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory() as folder:
        for mode in modes:
            url = f"sqlite:///{Path(folder) / f'children-{mode}.db'}"
            measure(url, "sqlite", mode, args.rounds, args.width)
    if args.no_postgresql:
        return
    from support import pgserver

    server = pgserver.PgServer()
    server.init()
    server.start()
    try:
        for mode in modes:
            measure(server.fresh_url("bench"), "postgresql", mode, args.rounds, args.width)
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
