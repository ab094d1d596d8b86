"""Bad input through the Python API (RELIABILITY.md §4.3): each case raises a
documented error whose message says what was wrong, and changes nothing in
the store."""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import accord
from accord.store import open_store
from apps import flows as f
from support.common import sql

Counts = Callable[[], dict[str, int]]


def probe(x: int) -> int:
    """A module-level function to decorate in option tests."""
    return x


@pytest.fixture
def opened(flows: accord.App) -> Iterator[accord.App]:
    """The flows app with its store file created, holding one run."""
    f.square.submit(1)
    yield flows


# -- tasks a node does not know ------------------------------------------------


def test_unknown_task_on_a_node_fails_with_a_clear_message(
    bind_app: Callable[[accord.App], accord.App],
) -> None:
    from apps.lean import app as server
    from apps.lean_client import app as client
    from apps.lean_client import known, only_on_client

    bind_app(server)
    bind_app(client)
    unknown = only_on_client.submit(5)
    fine = known.submit(5)
    with server.embedded_node(mode="process", slots=1):
        with pytest.raises(accord.TaskFailed) as caught:
            unknown.result(timeout=30)
        assert fine.result(timeout=30) == 6
    err = caught.value
    assert err.error_type == "UnknownTask"
    assert "task 'only_on_client' is not registered in app 'lean' on this node" in str(err)
    assert "it knows: known" in str(err)
    assert "--app" in str(err)
    # retries=3, but another attempt on the same node cannot help
    assert unknown.info().attempts == 1


# -- store URLs and files ------------------------------------------------------
# (Bad URLs, refused before anything is opened: tests/unit/test_store_urls.py.)


def _snapshot(path: Path) -> tuple[bytes, list[str]]:
    return path.read_bytes(), sorted(os.listdir(path.parent))


def test_file_of_random_bytes_is_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "random.db"
    path.write_bytes(np.random.default_rng(7).bytes(8192))
    before = _snapshot(path)
    with pytest.raises(accord.SchemaError, match="is not an accord database") as caught:
        open_store(f"sqlite:///{path}")
    assert caught.value.path == str(path)
    app = accord.App("flows_probe", store=f"sqlite:///{path}")
    task = app.task(name="probe")(probe)
    with pytest.raises(accord.SchemaError, match="not an accord database"):
        task.submit(1)
    assert _snapshot(path) == before


def test_sqlite_database_of_another_program_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.commit()
    conn.close()
    before = _snapshot(path)
    with pytest.raises(accord.SchemaError, match=r"not an accord store \(it has tables"):
        open_store(f"sqlite:///{path}")
    with pytest.raises(accord.SchemaError, match="customers"):
        open_store(f"sqlite:///{path}")
    # not switched to WAL, no accord tables, no -wal/-shm files left behind
    assert _snapshot(path) == before


def test_store_from_a_newer_accord(store_url: str, row_counts: Counts) -> None:
    with open_store(store_url) as store:
        version = store.schema_version()  # type: ignore[attr-defined]
        assert version >= 1
    sql(
        store_url,
        "UPDATE accord_meta SET value = ? WHERE key = 'schema_version'",
        (str(version + 1),),
    )
    before = row_counts()
    with pytest.raises(accord.SchemaError, match="written by a newer accord") as caught:
        open_store(store_url)
    assert caught.value.found == version + 1
    assert caught.value.supported == version
    assert "upgrade accord" in str(caught.value)
    assert row_counts() == before


# -- options -------------------------------------------------------------------


BAD_OPTIONS: list[tuple[dict[str, Any], str]] = [
    ({"retries": -1}, "retries must be at least 0, not -1"),
    ({"retries": 1.5}, "retries must be an integer, not float 1.5"),
    ({"retries": "3"}, "retries must be an integer, not str '3'"),
    ({"lease_losses": 0}, "lease_losses must be at least 1, not 0"),
    ({"lease_losses": 2.0}, "lease_losses must be an integer, not float 2.0"),
    ({"priority": "high"}, "priority must be an integer, not str 'high'"),
    ({"priority": True}, "priority must be an integer, not bool True"),
    ({"priority": 1.0}, "priority must be an integer, not float 1.0"),
    ({"priority": 10**30}, "priority must fit in 64 bits"),
    ({"priority": None}, "priority must be an integer, not NoneType None"),
    ({"timeout": math.nan}, "timeout must be finite, not nan"),
    ({"timeout": math.inf}, "timeout must be finite, not inf"),
    ({"timeout": 0}, "timeout must be greater than 0.0, not 0"),
    ({"timeout": -1}, "timeout must be greater than 0.0, not -1"),
    ({"timeout": "5"}, "timeout must be a number, not str '5'"),
    ({"weight": -1}, "weight must be at least 0.0, not -1"),
    ({"weight": False}, "weight must be a number, not bool False"),
    ({"size": -2.5}, "size must be at least 0.0, not -2.5"),
    ({"backoff": 0}, "backoff must be greater than 0.0"),
    ({"backoff": 5.0, "max_backoff": 1.0}, r"max_backoff \(1.0\) must be at least backoff"),
    ({"delay": -1}, "delay must be at least 0.0"),
    ({"resources": {"tpu": 1}}, "unknown resource 'tpu'; resources are cpu, gpu, memory"),
    ({"resources": {"cpu": -1}}, r"resources\['cpu'\] must be at least 0.0"),
    ({"resources": {"gpu": math.nan}}, "must be finite"),
    ({"resources": [("cpu", 1)]}, "resources must be a mapping"),
    ({"requires": "gpu"}, "requires must be a list of capability names"),
    ({"requires": ["gpu", ""]}, "requires must be a list of capability names"),
    ({"name": "-bad"}, "task name '-bad' is invalid: it starts with '-'"),
    ({"name": "has space"}, "task name 'has space' is invalid"),
    ({"colour": "red"}, r"unknown task option\(s\) \['colour'\]"),
    ({"retry": 3}, r"unknown task option\(s\) \['retry'\]"),
]


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS)
def test_invalid_task_options_at_decoration(
    options: dict[str, Any], message: str, store_url: str, row_counts: Counts
) -> None:
    app = accord.App("flows_probe", store=store_url)
    try:
        app.store  # noqa: B018 - the store exists before the bad call
        before = row_counts()
        with pytest.raises(accord.ConfigError, match=message) as caught:
            app.task(**options)(probe)
        assert isinstance(caught.value, ValueError)
        assert app.tasks == {}
        assert row_counts() == before
    finally:
        app.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retries": -1}, "retries must be at least 0"),
        ({"priority": "high"}, "priority must be an integer"),
        ({"timeout": math.nan}, "timeout must be finite"),
        ({"idempotency_key": ""}, "idempotency_key must be a non-empty string"),
        ({"idempotency_key": 7}, "idempotency_key must be a non-empty string"),
        ({"idempotency_key": "a\x00b"}, "without NUL bytes"),
        ({"idempotency_key": "k" * 501}, "at most 500 characters"),
        ({"name": "other"}, "a task's name cannot be changed per submission"),
        ({"colour": "red"}, r"unknown task option\(s\) \['colour'\]"),
    ],
)
def test_invalid_options_per_submission(
    options: dict[str, Any], message: str, opened: accord.App, row_counts: Counts
) -> None:
    before = row_counts()
    with pytest.raises(accord.ConfigError, match=message):
        f.square.with_options(**options).submit(2)
    assert row_counts() == before


def test_size_function_returning_a_bad_value(opened: accord.App, row_counts: Counts) -> None:
    sized = f.square.with_options(size=lambda x: -x)
    assert sized.submit(0) is not None  # size 0 is fine
    before = row_counts()
    with pytest.raises(accord.ConfigError, match=r"size\(square arguments\) must be at least 0"):
        sized.submit(3)
    assert row_counts() == before


def test_registration_mistakes(flows: accord.App) -> None:
    with pytest.raises(accord.ConfigError, match="already has a task named 'square'"):
        flows.task(name="square")(probe)

    def local(x: int) -> int:
        return x

    with pytest.raises(accord.ConfigError, match="defined inside a function"):
        flows.task(local)
    with pytest.raises(accord.ConfigError, match="decorates a function"):
        flows.task(name="not_callable")(42)  # type: ignore[call-overload]
    assert "not_callable" not in flows.tasks
    for name in ["", "has space", "slash/ed", None]:
        with pytest.raises(accord.ConfigError, match=r"app name .* is invalid"):
            accord.App(name)  # type: ignore[arg-type]


def test_start_needs_a_task_of_this_app(opened: accord.App, row_counts: Counts) -> None:
    from apps.basic import add
    from apps.basic import app as basic_app

    before = row_counts()
    was_open = basic_app.runtime.store_opened  # (an earlier test may have used it)
    with pytest.raises(accord.ConfigError, match=r"decorated with @app\.workflow"):
        opened.start(probe)  # type: ignore[arg-type]
    with pytest.raises(accord.ConfigError, match="belongs to another app"):
        opened.start(add, 1, 2)
    assert basic_app.runtime.store_opened == was_open  # the other app's store was not opened
    assert row_counts() == before


# -- arguments that cannot be serialised ----------------------------------------


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


def _cycle() -> dict[str, Any]:
    value: dict[str, Any] = {"name": "loop"}
    value["self"] = value
    return value


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((object(),), {}, "argument 0 of echo_kw() cannot be serialised: values of type object"),
        ((1, Point(2)), {}, "argument 1 of echo_kw() cannot be serialised: values of type Point"),
        ((), {"extra": Point(1)}, "argument 'extra' of echo_kw() cannot be serialised"),
        ((_cycle(),), {}, "argument 0 of echo_kw() cannot be serialised: it contains itself"),
        ((2**64,), {}, "argument 0 of echo_kw() cannot be serialised: an integer does not fit"),
        ((-(2**63) - 1,), {}, "an integer does not fit in 64 bits"),
        (([1, {"deep": [lambda: 1]}],), {}, "argument 0 of echo_kw() cannot be serialised"),
        ((np.array([object()]),), {}, "numpy arrays of Python objects cannot be serialised"),
    ],
)
def test_unserialisable_arguments_fail_at_submit(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    message: str,
    opened: accord.App,
    row_counts: Counts,
) -> None:
    before = row_counts()
    with pytest.raises(TypeError) as caught:
        f.echo_kw.submit(*args, **kwargs)
    assert message in str(caught.value)
    if not kwargs:
        with pytest.raises(TypeError, match="cannot be serialised"):
            f.echo_kw.map([args])
    with pytest.raises(TypeError, match="cannot be serialised"):
        opened.start(f.echo_kw, *args, **kwargs)
    assert row_counts() == before


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "missing a required argument: 'i'"),
        ((1, 2), {}, "too many positional arguments"),
        ((), {"j": 1}, "missing a required argument: 'i'"),
        ((1,), {"j": 1}, "got an unexpected keyword argument 'j'"),
    ],
)
def test_calls_the_function_cannot_take_fail_at_submit(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    message: str,
    opened: accord.App,
    row_counts: Counts,
) -> None:
    """Bound to the function's signature at submit, as the call would be."""
    before = row_counts()
    with pytest.raises(accord.ConfigError) as caught:
        f.square.submit(*args, **kwargs)
    assert "square(i: int) cannot take these arguments" in str(caught.value)
    assert message in str(caught.value) and "nothing was submitted" in str(caught.value)
    with pytest.raises(accord.ConfigError, match=message):
        opened.start(f.square, *args, **kwargs)
    if not kwargs:
        with pytest.raises(accord.ConfigError, match=message):
            f.square.map([args, (3,)])
    assert row_counts() == before
    # A handle may stand for any argument; *args and **kwargs take anything.
    assert f.square.submit(f.square.submit(2)).id > 0
    assert f.echo_kw.submit(1, 2, three=3).id > 0


def test_arguments_over_the_size_limit(store_url: str, row_counts: Counts) -> None:
    app = accord.App("flows_probe", store=store_url, max_payload=1000)
    try:
        task = app.task(name="probe")(probe)
        task.submit(1)
        before = row_counts()
        with pytest.raises(
            accord.PayloadTooLargeError, match=r"the arguments of probe\(\) take \d+ bytes, over"
        ):
            task.submit("x" * 2000)  # type: ignore[arg-type]
        assert row_counts() == before
    finally:
        app.close()


def test_dependency_on_a_task_that_does_not_exist(opened: accord.App, row_counts: Counts) -> None:
    ghost = accord.Handle(opened, 987654, "square")
    before = row_counts()
    with pytest.raises(accord.NotFoundError, match="depends on task 987654, which does not exist"):
        f.add_all.submit([ghost])
    assert row_counts() == before


def test_unknown_ids(opened: accord.App, row_counts: Counts) -> None:
    before = row_counts()
    with pytest.raises(accord.NotFoundError, match="task 4242 does not exist"):
        opened.store.cancel_tasks([4242], "x")
    with pytest.raises(accord.NotFoundError, match="run 4242 does not exist"):
        opened.store.cancel_run(4242, "x")
    with pytest.raises(accord.NotFoundError, match="run 4242 does not exist"):
        opened.store.tasks(4242)
    with pytest.raises(LookupError):
        opened.store.task(4242)
    assert row_counts() == before


# -- waiting on what will never have a value ------------------------------------


def test_waiting_on_a_cancelled_task(opened: accord.App) -> None:
    handle = f.square.submit(3)
    handle.cancel("changed my mind")
    with pytest.raises(accord.TaskCancelled, match="changed my mind"):
        handle.result()
    with pytest.raises(accord.TaskError):
        handle.result(timeout=0)


# -- the node's side -------------------------------------------------------------


def test_worker_for_a_module_that_does_not_exist(
    accord_env: dict[str, str], tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "accord", "worker", "--app", "nosuchmodule:app"],
        env=accord_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "error:" in done.stderr
    assert "cannot import module 'nosuchmodule'" in done.stderr
    assert "PYTHONPATH" in done.stderr
    assert "Traceback" not in done.stderr


def test_node_whose_slots_cannot_import_the_app(
    bind_app: Callable[[accord.App], accord.App],
) -> None:
    from apps.unloadable import anything
    from apps.unloadable import app as unloadable

    bind_app(unloadable)
    handle = anything.submit(1)
    node = unloadable.node(slots=1, mode="process")
    with pytest.raises(accord.ConfigError, match=r"cannot load app apps\.unloadable"):
        node.run()
    nodes = unloadable.store.nodes(include_stopped=True)
    assert [n.state for n in nodes] == ["stopped"]
    # the task is left for a node that can run it
    assert handle.status() in (accord.TaskState.READY, accord.TaskState.RUNNING)


def test_app_run_reports_a_node_that_cannot_start(
    bind_app: Callable[[accord.App], accord.App],
) -> None:
    from apps.unloadable import anything
    from apps.unloadable import app as unloadable

    bind_app(unloadable)
    with pytest.raises(accord.ConfigError, match=r"cannot load app apps\.unloadable"):
        unloadable.run(anything, 1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"slots": 0}, "slots must be a positive integer, not 0"),
        ({"slots": -2}, "slots must be a positive integer"),
        ({"slots": True}, "slots must be a positive integer, not True"),
        ({"slots": 1.5}, "slots must be a positive integer"),
        ({"mode": "fork"}, "mode must be 'process' or 'thread', not 'fork'"),
        ({"lease_ttl": 0}, "lease_ttl must be a positive number of seconds"),
        ({"lease_ttl": -5}, "lease_ttl must be a positive number of seconds"),
        ({"lease_ttl": math.nan}, "lease_ttl must be a positive number of seconds"),
        ({"lease_ttl": "15"}, "lease_ttl must be a number of seconds"),
        ({"lease_ttl": 2, "heartbeat": 2}, r"heartbeat \(2\) must be positive and shorter"),
        ({"lease_ttl": 2, "heartbeat": 3}, "shorter than lease_ttl"),
        ({"heartbeat": 0}, "must be positive and shorter than lease_ttl"),
        ({"heartbeat": math.nan}, "must be positive and shorter than lease_ttl"),
        ({"heartbeat": True}, "must be positive and shorter than lease_ttl"),
        ({"grace": -1}, "grace must be a positive number of seconds"),
        ({"capabilities": "gpu"}, "capabilities must be a list of labels"),
        ({"color": 1}, "color"),
    ],
)
def test_node_configuration_errors(
    options: dict[str, Any], message: str, opened: accord.App, row_counts: Counts
) -> None:
    before = row_counts()
    with pytest.raises((accord.ConfigError, TypeError), match=message):
        opened.node(**options)
    assert row_counts() == before
    assert opened.store.nodes(include_stopped=True) == []


# -- after close() ----------------------------------------------------------------


def test_use_after_close(flows: accord.App, row_counts: Counts) -> None:
    handle = f.square.submit(2)
    run = flows.start(f.dag, 4, 2)
    flows.close()
    before = row_counts()
    closed = "app 'flows' is closed; create a new App to use it again"
    with pytest.raises(accord.ClosedError, match=closed):
        f.square.submit(3)
    with pytest.raises(accord.ClosedError, match=closed):
        f.square.map([3])
    with pytest.raises(accord.ClosedError, match=closed):
        flows.start(f.dag, 4, 2)
    with pytest.raises(accord.ClosedError, match=closed):
        handle.result(timeout=1)
    with pytest.raises(accord.ClosedError, match=closed):
        run.wait(timeout=1)
    with pytest.raises(accord.ClosedError, match=closed):
        flows.store  # noqa: B018
    with pytest.raises(accord.ClosedError, match=closed):
        flows.node(slots=1).run()
    flows.close()  # closing twice is harmless
    assert row_counts() == before


def test_app_as_a_context_manager_closes(store_url: str) -> None:
    with accord.App("flows_probe", store=store_url) as app:
        task = app.task(name="probe")(probe)
        task.submit(1)
    with pytest.raises(accord.ClosedError, match="is closed"):
        task.submit(2)


def test_store_closed_directly(store_url: str) -> None:
    store = open_store(store_url)
    store.close()
    with pytest.raises(accord.ClosedError, match="is closed"):
        store.runs()
