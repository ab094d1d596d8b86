"""Linearisable compare-and-set across processes (G4, S1), on both backends.

On PostgreSQL every write is a round trip per statement and a commit on the
server, and eight processes spinning on one key share two CPUs with it here,
so it runs fewer increments (the checks are the same).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from state_helpers import finish, spawn

import accord

PROCESSES = 8
INCREMENTS = {"sqlite": 1000, "postgresql": 250}
LONG_INCREMENTS = {"sqlite": 2500, "postgresql": 600}


def _check_chain(successes: list[list[int]], total: int) -> None:
    """The version-chain check: every successful CAS moved the counter from
    version v to v + 1 exactly once, in revision order, with the value it read + 1."""
    by_version = sorted(successes)
    assert [s[0] for s in by_version] == list(range(1, total + 1)), "a version was won twice"
    assert [s[1] for s in by_version] == list(range(1, total + 1)), "an increment was lost"
    revisions = [s[2] for s in by_version]
    assert revisions == sorted(revisions) and len(set(revisions)) == total


def test_counter_by_cas_in_8_processes(
    app: accord.App, store_url: str, backend: str, tmp_path: Path
) -> None:
    app.state.put("counter", 0)
    out = tmp_path / "cas.jsonl"
    increments = INCREMENTS[backend]
    procs = [spawn("cas", store_url, increments, out) for _ in range(PROCESSES)]
    assert [finish(p, timeout=600) for p in procs] == [0] * PROCESSES
    reports = [json.loads(line) for line in out.read_text().splitlines()]
    successes = [s for r in reports for s in r["successes"]]
    total = PROCESSES * increments
    assert len(successes) == total
    entry = app.state.get("counter")
    assert entry is not None and entry.value == total and entry.version == total + 1
    _check_chain(successes, total)
    # The history holds every write, one revision each.
    assert [c.value for c in app.state.history("counter")] == list(range(total + 1))
    conflicts = sum(r["conflicts"] for r in reports)
    print(f"{total} increments, {conflicts} lost races")


def test_counter_by_cas_in_threads(app: accord.App) -> None:
    """Threads of one process share its commit group: the same guarantee."""
    app.state.put("counter", 0)
    successes: list[list[int]] = []
    lock = threading.Lock()

    def work() -> None:
        state = app.state
        done = 0
        while done < 200:
            entry = state.get("counter")
            assert entry is not None
            try:
                revision = state.put("counter", entry.value + 1, expect_version=entry.version)
            except accord.ConflictError:
                continue
            done += 1
            with lock:
                successes.append([entry.version, entry.value + 1, revision])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert app.state.value("counter") == 800
    _check_chain(successes, 800)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_counter_by_cas_long(app: accord.App, store_url: str, backend: str, tmp_path: Path) -> None:
    app.state.put("counter", 0)
    out = tmp_path / "cas.jsonl"
    increments = LONG_INCREMENTS[backend]
    procs = [spawn("cas", store_url, increments, out) for _ in range(PROCESSES)]
    assert [finish(p, timeout=800) for p in procs] == [0] * PROCESSES
    successes = [s for line in out.read_text().splitlines() for s in json.loads(line)["successes"]]
    _check_chain(successes, PROCESSES * increments)
