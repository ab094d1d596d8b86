"""Bad scheduling input: a clear ConfigError at registration, at submit or at
node start, and nothing written."""

from __future__ import annotations

import datetime as dt
import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import accord
from support.common import TESTS, subprocess_env, table_counts

NAN = math.nan
INF = math.inf
UTC = dt.UTC


@pytest.fixture
def app(store_url: str) -> Iterator[accord.App]:
    app = accord.App("badsched", store_url)
    app.store  # noqa: B018 - create the file so row counts compare like with like
    yield app
    app.close()


def _fn(*args: Any) -> int:
    return len(args)


def good(app: accord.App, **options: Any) -> accord.Task[..., int]:
    return app.task(name=f"t{len(app.tasks)}", **options)(_fn)


# -- task options, checked when the task is registered or re-optioned ------------
BAD_OPTIONS: list[tuple[str, Any, str]] = [
    ("weight", -1.0, "weight must be at least 0"),
    ("weight", NAN, "weight must be finite"),
    ("weight", INF, "weight must be finite"),
    ("weight", -INF, "weight must be finite"),
    ("weight", "1", "weight must be a number"),
    ("weight", True, "weight must be a number"),
    ("size", -0.5, "size must be at least 0"),
    ("size", NAN, "size must be finite"),
    ("size", INF, "size must be finite"),
    ("size", "big", "size must be a number"),
    ("priority", "high", "priority must be an integer"),
    ("priority", True, "priority must be an integer"),
    ("priority", 1.5, "priority must be an integer"),
    ("priority", 2**64, "priority must fit in 64 bits"),
    ("resources", {"tpu": 1}, "unknown resource 'tpu'"),
    ("resources", {"gpu": -1}, "must be at least 0"),
    ("resources", {"memory": NAN}, "must be finite"),
    ("resources", ["gpu"], "resources must be a mapping"),
    ("requires", "gpu", "requires must be a list"),
    ("requires", [""], "requires must be a list"),
    ("requires", ["gpu", 3], "requires must be a list"),
    ("requires", ["gpu,avx"], "requires must be a list"),
    ("delay", -1.0, "delay must be at least 0"),
    ("delay", NAN, "delay must be finite"),
    ("deadline", 0, "deadline"),
    ("deadline", -5.0, "deadline"),
    ("deadline", NAN, "deadline"),
    ("deadline", INF, "deadline"),
    ("deadline", dt.datetime(2030, 1, 1), "timezone-aware"),  # naive
    ("deadline", "tomorrow", "deadline"),
    ("concurrency", 0, "concurrency must be at least 1"),
    ("concurrency", -2, "concurrency must be at least 1"),
    ("concurrency", 1.5, "concurrency must be an integer"),
    ("concurrency", True, "concurrency must be an integer"),
    ("rate", 0, "rate"),
    ("rate", -1.0, "rate"),
    ("rate", NAN, "rate"),
    ("rate", INF, "rate"),
    ("limit_key", "endpoint", "limit_key needs a concurrency or a rate"),
]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    BAD_OPTIONS,
    ids=[f"{o}={v!r}" for o, v, _ in BAD_OPTIONS],
)
def test_bad_task_option_is_refused_at_registration_and_per_submission(
    app: accord.App, row_counts: Callable[[], dict[str, int]], option: str, value: Any, message: str
) -> None:
    before = row_counts()
    with pytest.raises(accord.ConfigError, match=message):
        app.task(name="bad", **{option: value})(_fn)
    assert "bad" not in app.tasks
    task = good(app)
    with pytest.raises(accord.ConfigError, match=message):
        task.with_options(**{option: value}).submit(1)
    assert row_counts() == before


def test_a_limit_key_must_be_a_plain_name(app: accord.App) -> None:
    with pytest.raises(accord.ConfigError, match="limit_key"):
        good(app, limit_key="model endpoint", concurrency=4)
    # with a limit it is fine
    task = good(app, limit_key="model-endpoint", concurrency=4, rate=10.0)
    assert task.options.limit_key == "model-endpoint"


# -- values known only at submit --------------------------------------------------
@pytest.mark.parametrize("bad", [-1.0, NAN, INF, "big", None], ids=repr)
def test_a_size_function_returning_a_bad_value_fails_the_submit(
    app: accord.App, row_counts: Callable[[], dict[str, int]], bad: Any
) -> None:
    task = good(app, size=lambda n: bad if n == 13 else float(n))
    task.submit(2)
    before = row_counts()
    with pytest.raises(accord.ConfigError, match=r"size\(t0 arguments\)"):
        task.submit(13)
    # a map with one bad item writes none of them
    with pytest.raises(accord.ConfigError, match="size"):
        task.map([1, 2, 13, 4])
    assert row_counts() == before


def test_a_size_function_sets_the_task_size(app: accord.App) -> None:
    task = good(app, size=lambda n: float(n) * 2)
    handle = task.submit(21)
    node_id = app.store.register_node(
        name="n", host="h", pid=1, queue=app.name, slots=1, mode="thread", capabilities=[]
    )
    _, claimed = app.store.exchange(node_id, [], queue=app.name, claim=1, lease_ttl=10.0)
    assert [(c.id, c.size) for c in claimed] == [(handle.id, 42.0)]


@pytest.mark.parametrize(
    "when",
    [dt.timedelta(seconds=-1), dt.timedelta(days=-400), dt.timedelta(0)],
    ids=["1s-ago", "last-year", "now"],
)
def test_an_aware_deadline_in_the_past_fails_the_submit(
    app: accord.App, row_counts: Callable[[], dict[str, int]], when: dt.timedelta
) -> None:
    task = good(app)
    task.submit(1)
    before = row_counts()
    deadline = dt.datetime.now(UTC) + when
    with pytest.raises(accord.ConfigError, match="is in the past"):
        task.with_options(deadline=deadline).submit(2)
    late = good(app, deadline=deadline)  # fine to register: it is checked per submission
    with pytest.raises(accord.ConfigError, match="is in the past"):
        late.submit(3)
    with pytest.raises(accord.ConfigError, match="is in the past"):
        late.map([4, 5])
    assert row_counts() == before


def test_an_aware_deadline_in_the_future_is_stored_as_a_timestamp(app: accord.App) -> None:
    deadline = dt.datetime.now(dt.timezone(dt.timedelta(hours=-5))) + dt.timedelta(minutes=5)
    handle = good(app, deadline=deadline).submit(1)
    assert handle.info().deadline_at == pytest.approx(deadline.timestamp())
    relative = good(app, deadline=30.0).submit(2)
    info = relative.info()
    assert info.deadline_at is not None
    assert info.deadline_at == pytest.approx(info.created_at + 30.0, abs=0.5)


# -- node options, checked when the node is made ------------------------------------
BAD_NODES: list[tuple[dict[str, Any], str]] = [
    ({"speed": -1.0}, "speed must be positive"),
    ({"speed": 0}, "speed must be positive"),
    ({"speed": 0.0}, "speed must be positive"),
    ({"speed": NAN}, "speed must be a finite number"),
    ({"speed": INF}, "speed must be a finite number"),
    ({"speed": True}, "speed must be a finite number"),
    ({"speed": "fast"}, "speed must be a finite number"),
    ({"resources": {"tpu": 1}}, "unknown resource 'tpu'"),
    ({"resources": {"gpu": -1}}, "resource gpu must be at least 0"),
    ({"resources": {"memory": NAN}}, "resource memory must be a finite number"),
    ({"resources": {"cpu": INF}}, "resource cpu must be a finite number"),
    ({"capabilities": ["gpu,avx"]}, "without commas"),
    ({"capabilities": "gpu"}, "capabilities must be a list"),
    ({"capabilities": [""]}, "capabilities must be a list"),
    ({"capabilities": ["gpu", 1]}, "capabilities must be a list"),
    ({"slots": 0}, "slots must be a positive integer"),
]


@pytest.mark.parametrize(("options", "message"), BAD_NODES, ids=[repr(o) for o, _ in BAD_NODES])
def test_bad_node_option_is_refused_before_the_node_registers(
    app: accord.App, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(accord.ConfigError, match=message):
        app.node(mode="thread", **options)
    assert app.store.nodes(include_stopped=True) == []


def test_a_good_node_spec(app: accord.App) -> None:
    node = app.node(
        mode="thread",
        slots=3,
        capabilities=["gpu", "avx", "gpu"],
        resources={"gpu": 2, "memory": 512},
        speed=2.5,
    )
    assert node.capabilities == ["avx", "gpu"]
    assert node.spec.capacity == {"cpu": 3.0, "gpu": 2.0, "memory": 512.0}
    assert node.spec.speed == 2.5
    assert app.node(mode="thread", slots=2).spec.capacity["gpu"] == 0.0


# -- the worker command -------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resource", "gpu"], "--resource 'gpu' must look like KIND=AMOUNT"),
        (["--resource", "gpu=lots"], "must look like KIND=AMOUNT"),
        (["--resource", "tpu=1"], "unknown resource 'tpu'"),
        (["--speed", "0"], "speed must be positive"),
        (["--capability", "gpu,avx"], "without commas"),
    ],
    ids=["no-amount", "not-a-number", "unknown-kind", "zero-speed", "comma"],
)
def test_worker_command_refuses_bad_node_options(
    store_url: str, tmp_path: Path, args: list[str], message: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "accord", "worker", "--app", "apps.sched:app", *args],
        env={**subprocess_env(store_url), "COLUMNS": "200"},
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
    assert table_counts(store_url).get("nodes", 0) == 0
