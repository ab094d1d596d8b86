"""Periodic tasks: ``@app.schedule`` fires each slot once across nodes, the
store decides by its clock, missed slots follow the catch-up policy, and
``accord schedules`` shows them (accord.store.sql.schedules)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from croniter import croniter

import accord
from accord.errors import ConfigError
from accord.scheduling.periodic import Rule, ScheduleDef, ScheduleInfo
from accord.store import Store, open_store
from accord.tasks.schedules import Firing
from apps import periodic as p
from support.common import bind, sql, wait_for
from test_cli import cli

HOUR = 3600.0


@pytest.fixture
def periodic(store_url: str) -> Iterator[accord.App]:
    """tests/apps/periodic.py's app on a fresh store."""
    yield bind(p.app, store_url)
    p.app.close()


def keys(store_url: str, task: str) -> list[str]:
    rows = sql(store_url, "SELECT idempotency_key FROM tasks WHERE name = ? ORDER BY id", (task,))
    return [row[0] for row in rows]


def info(app: accord.App, name: str) -> ScheduleInfo:
    (found,) = [s for s in app.store.schedules("periodic") if s.name == name]
    return found


def test_two_nodes_fire_each_slot_once(periodic: accord.App, store_url: str) -> None:
    nodes = [periodic.node(mode="thread", slots=1, name=f"n{i}") for i in range(2)]
    for node in nodes:
        node.start()
    time.sleep(3.5)
    for node in nodes:
        node.stop()
    for node in nodes:
        node.join()
    fired = keys(store_url, "tick")
    assert 2 <= len(fired) <= 5, fired
    assert len(set(fired)) == len(fired)  # no slot made twice
    slots = [int(key.rsplit(":", 1)[1]) for key in fired]
    assert all(key.startswith("schedule:periodic:tick:") for key in fired)
    assert slots == list(range(slots[0], slots[0] + len(slots)))  # one run per second
    assert len(periodic.store.runs(limit=100, name="tick")) == len(fired)
    tick = info(periodic, "tick")
    assert tick.fired == len(fired) and tick.last_slot == slots[-1]
    assert tick.rule == "every 1s" and tick.state == "active"
    run = periodic.get_run(tick.last_run_id or 0)
    assert run.wait(timeout=10) == "tock"  # the schedule's arguments


def test_stores_racing_to_fire_make_each_slot_once(periodic: accord.App, store_url: str) -> None:
    firing = Firing(periodic.runtime)
    # Two missed hours for the "all" schedule, and every second for tick.
    sql(
        store_url,
        "UPDATE schedules SET next_fire_at = next_fire_at - 7200 WHERE name = 'hourly_all'",
    )
    stores = [open_store(store_url) for _ in range(4)]
    made: list[int] = []

    def race(store: Store) -> None:
        until = time.monotonic() + 2.2
        while time.monotonic() < until:
            made.extend(f.run_id for f in store.fire_schedules("periodic", firing.templates))
            time.sleep(0.01)

    threads = [threading.Thread(target=race, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert len(keys(store_url, "hourly_all")) == 2
    ticks = keys(store_url, "tick")
    assert 2 <= len(ticks) <= 4 and len(set(ticks)) == len(ticks)
    assert len(made) == len(set(made)) == len(ticks) + 2  # one run per slot, by one store


def test_cron_next_fire_is_croniters_next_slot_in_utc(periodic: accord.App) -> None:
    Firing(periodic.runtime)  # what a node does when it starts
    five = info(periodic, "five_minutes")
    start = dt.datetime.fromtimestamp(five.defined_at, dt.UTC)
    assert five.next_fire_at == croniter("*/5 * * * *", start).get_next(float)
    assert five.defined_at < five.next_fire_at <= five.defined_at + 300
    assert five.rule == "cron */5 * * * *" and five.catch_up == "skip"
    hourly = info(periodic, "hourly_skip")
    assert hourly.next_fire_at % HOUR == 0 and hourly.last_fired_at is None


def test_downtime_skip_fires_once_and_all_fires_each_missed_slot(
    periodic: accord.App, store_url: str
) -> None:
    Firing(periodic.runtime)
    upcoming = info(periodic, "hourly_all").next_fire_at
    # Five slots were missed while no node ran.
    sql(
        store_url,
        "UPDATE schedules SET next_fire_at = next_fire_at - ? "
        "WHERE name IN ('hourly_skip', 'hourly_all')",
        (5 * HOUR,),
    )
    with periodic.embedded_node(mode="thread", slots=2):
        wait_for(lambda: len(keys(store_url, "hourly_all")) >= 5, 10, "five catch-up runs")
        time.sleep(0.3)
    caught_up = keys(store_url, "hourly_all")
    assert [float(k.rsplit(":", 1)[1]) for k in caught_up] == [
        upcoming - i * HOUR for i in range(5, 0, -1)
    ]
    skipped = keys(store_url, "hourly_skip")
    assert skipped == [f"schedule:periodic:hourly_skip:{int(upcoming - HOUR)}"]
    for name in ("hourly_all", "hourly_skip"):
        assert info(periodic, name).next_fire_at == upcoming  # moved on past now
    details = [e.detail or "" for e in periodic.store.events(kind="schedule_skipped")]
    assert any(d.startswith("hourly_skip: 4 missed slot(s)") for d in details), details
    assert periodic.get_run(info(periodic, "hourly_all").last_run_id or 0).wait(timeout=10) == 2


def test_changed_and_orphaned_definitions(periodic: accord.App) -> None:
    Firing(periodic.runtime)
    store = periodic.store
    sql(
        periodic.store_url,
        "UPDATE schedules SET next_fire_at = next_fire_at - 7200 WHERE name = 'tick'",
    )
    tick = info(periodic, "tick")
    Firing(periodic.runtime)  # unchanged: keeps its (missed) next slot
    assert info(periodic, "tick").next_fire_at == tick.next_fire_at
    changed = ScheduleDef("tick", "tick", Rule(every=60.0), b"\x90", "all")
    store.define_schedules("periodic", [changed])
    after = {s.name: s for s in store.schedules("periodic")}
    assert after["tick"].rule == "every 60s" and after["tick"].catch_up == "all"
    assert after["tick"].next_fire_at > store.now()  # a new definition starts from now
    assert {s.state for n, s in after.items() if n != "tick"} == {"orphaned"}
    assert store.fire_schedules("periodic", {}) == []
    Firing(periodic.runtime)  # the app defines them again
    assert {s.state for s in store.schedules("periodic")} == {"active"}


def test_cli_lists_pauses_and_resumes(
    periodic: accord.App, accord_env: dict[str, str], tmp_path: Path
) -> None:
    Firing(periodic.runtime)
    done = cli(accord_env, tmp_path, "schedules")
    assert done.returncode == 0, done.stderr
    (row,) = [line for line in done.stdout.splitlines() if "hourly_all" in line]
    assert "every 3600s" in row and " all " in row and "active" in row and "(in " in row
    done = cli(accord_env, tmp_path, "schedules", "pause", "tick", "--app", "periodic")
    assert done.returncode == 0, done.stderr
    assert info(periodic, "tick").state == "paused"
    done = cli(accord_env, tmp_path, "schedules", "--json", "--app", "periodic")
    rows = {r["name"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert rows["tick"]["state"] == "paused" and rows["five_minutes"]["rule"].startswith("cron")
    done = cli(accord_env, tmp_path, "schedules", "resume", "nope", "--app", "periodic")
    assert done.returncode == 2 and "no schedule 'nope'" in done.stderr
    assert periodic.store.set_schedule_enabled("periodic", "tick", True)
    assert info(periodic, "tick").state == "active"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "61 * * * *"}, "bad cron expression '61 * * * *'"),
        ({"cron": "every day"}, "bad cron expression 'every day'"),
        ({"cron": "* * * * *", "every": 5}, "exactly one of cron"),
        ({}, "exactly one of cron"),
        ({"every": dt.timedelta(0)}, "every must be at least 1 second"),
        ({"every": 0.5}, "every must be at least 1 second, not 0.500s"),
        ({"every": "5m"}, "every must be a timedelta or seconds"),
        ({"every": 60, "catch_up": "some"}, "catch_up must be 'skip' or 'all'"),
        ({"every": 60, "args": (object(),)}, "arguments cannot be serialised"),
        ({"every": 60, "args": (1, 2)}, "cannot take these arguments"),
    ],
)
def test_bad_definitions_are_refused_at_decoration(options: dict[str, Any], message: str) -> None:
    app = accord.App("badly_scheduled")

    def job(x: int = 0) -> int:
        return x

    with pytest.raises(ConfigError) as raised:
        app.schedule(name="job", **options)(job)
    assert message in str(raised.value)
    assert "job" not in app.tasks  # nothing was registered


def test_a_schedule_name_is_used_once() -> None:
    app = accord.App("twice_scheduled")

    @app.task(name="job")
    def job() -> None:
        return None

    app.schedule(every=60)(job)
    with pytest.raises(ConfigError, match="already has a schedule named 'job'"):
        app.schedule(every=120)(job)
    app.schedule(every=120, name="job_slow")(job)  # another name: a second schedule


def test_due_slots_of_a_cron_rule() -> None:
    rule = Rule(cron="0 * * * *")
    now = 1_000_000_000.0  # 01:46:40 UTC
    first = rule.next_after(now) - 5 * HOUR
    assert rule.due(first, now, 100) == ([first + i * HOUR for i in range(5)], 0)
    assert rule.due(first, now, 1) == ([first + 4 * HOUR], None)  # some were skipped
    assert rule.due(now + 1, now, 1) == ([], 0)
