"""A node never stalls on one task's data (issue "Hardening the kernel", item 5).

Whatever a task returns or raises (text no store holds as it is, huge
messages, exceptions whose ``str()`` raises or that cannot be pickled, results
that cannot be stored), its attempt ends recorded, with a readable error, and
the node goes on. A store that refuses a row as bad data says so
(``UnstorableError``), so that nobody retries it as an outage.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import psycopg
import pytest

import accord
from accord import TaskState, serde
from accord.store import open_store
from accord.store.records import Completion, Outcome
from accord.store.sql.store import SqlStore
from apps import bad_data as b
from support import pgserver
from support.common import bind

MODES = ["thread", "process"]


@pytest.fixture
def bad(store_url: str) -> Iterator[accord.App]:
    yield bind(b.app, store_url)
    b.app.close()


def _storable(text: str | None) -> None:
    """Text that every store holds as it is (and that reads back the same)."""
    assert isinstance(text, str) and text
    assert "\x00" not in text
    text.encode("utf-8")  # raises on a lone surrogate


@pytest.mark.parametrize("mode", MODES)
def test_every_attempt_ends_recorded_and_the_node_goes_on(bad: accord.App, mode: str) -> None:
    raised = {kind: b.fail.submit(kind) for kind in b.RAISES}
    returned = {kind: b.give.submit(kind) for kind in b.RETURNS}
    after = b.fine.submit(1)
    with bad.embedded_node(mode=mode, slots=1) as node:
        for handle in [*raised.values(), *returned.values()]:
            with pytest.raises(accord.TaskFailed):
                handle.result(timeout=120)
        # The node went on after all of them, and is still serving.
        assert after.result(timeout=60) == 2
        later = b.fine.submit(2)
        assert later.result(timeout=60) == 3
        assert node is not None and node._error is None
    errors = {}
    for kind, handle in [*raised.items(), *[(f"give {k}", h) for k, h in returned.items()]]:
        info = handle.info()
        assert info.state is TaskState.FAILED, kind
        _storable(info.error)
        _storable(info.error_type)
        if info.traceback is not None:
            _storable(info.traceback)
        errors[kind] = info
    nul = errors["nul"]
    assert (nul.error, nul.error_type, nul.attempts) == ("bad\\x00text", "ValueError", 2)
    surrogate = errors["surrogate"]
    assert surrogate.error == "cannot read caf\\udce9.txt"
    assert surrogate.error_type == "FileNotFoundError"  # not WorkerCrashed
    huge = errors["huge"]
    assert huge.error is not None and huge.traceback is not None
    assert huge.error.startswith("x" * 1000) and "characters cut" in huge.error
    assert len(huge.error) < 20_000 and len(huge.traceback) < 70_000
    assert errors["str_raises"].error_type == "StrRaises"
    assert "its str() raised RuntimeError: __str__ is broken" in (errors["str_raises"].error or "")
    assert errors["nothing_works"].error_type == "NothingWorks"
    assert "<NothingWorks object>" in (errors["nothing_works"].error or "")
    assert errors["unpicklable"].error == "a task: unpicklable error"
    assert errors["unpicklable"].error_type == "Unpicklable"
    assert errors["base_exception"].error_type == "Escape"
    assert "a BaseException" in (errors["base_exception"].error or "")
    assert errors["message_type"].error == "(b'bytes \\x00 \\xff', 3)"
    retried = errors["retry_text"]
    assert (retried.error, retried.error_type, retried.attempts) == (
        "again\\x00 caf\\udce9.txt",
        "Retry",
        2,
    )
    events = bad.store.events(retried.run_id)
    assert [e.kind for e in events if e.task_id == retried.id].count("retry") == 1
    delay = errors["retry_delay"]
    assert delay.attempts == 2 and "again later" in (delay.error or "")
    assert "Retry(delay=nan) is not a finite number of seconds" in (delay.error or "")
    for kind, error_type in [
        ("surrogate", "TypeError"),
        ("too_large", "ResultTooLarge"),
        ("unserialisable", "TypeError"),
        ("far_handle", "BadHandle"),
    ]:
        info = errors[f"give {kind}"]
        # Another attempt would return the same: no retry.
        assert (info.error_type, info.attempts) == (error_type, 1), kind
    assert "cannot be serialised" in (errors["give surrogate"].error or "")
    assert "which no store holds" in (errors["give far_handle"].error or "")


def test_a_batch_with_bad_rows_is_recorded_whole(store_url: str) -> None:
    """The store's own guard: completions given to it directly, one good and
    the others holding what no store (or not every store) takes, go in one
    commit, recorded the same on both backends."""
    app = accord.App("bad_rows", store=store_url)
    try:
        handles = [app.task(name=f"t{i}", retries=1)(_probe).submit(i) for i in range(5)]
        store = app.store
        assert isinstance(store, SqlStore)
        node = store.register_node(
            name="n", host="test", pid=1, queue="bad_rows", slots=5, mode="thread", capabilities=[]
        )
        _, claimed = store.exchange(node, [], queue="bad_rows", claim=5, lease_ttl=30)
        by_id = {task.id: task for task in claimed}
        task = [by_id[h.id] for h in handles]
        done = [
            Completion(task[0].id, task[0].fence, Outcome.OK, result=serde.dumps(7)),
            Completion(task[1].id, task[1].fence, Outcome.ERROR, error="a\x00b", retryable=False),
            Completion(
                task[2].id,
                task[2].fence,
                Outcome.ERROR,
                error="file caf\udce9",
                error_type="T\udcff",
                traceback="x" * 300_000,
                retryable=False,
            ),
            Completion(
                task[3].id, task[3].fence, Outcome.ERROR, error="later", retry_delay=math.nan
            ),
            Completion(task[4].id, task[4].fence, Outcome.FORWARD, forward_to=2**70),
        ]
        accepted, _ = store.exchange(node, done, queue="bad_rows", claim=0, lease_ttl=30)
        assert accepted == [True] * 5
        assert handles[0].result(timeout=5) == 7
        one, two, three, four = (h.info() for h in handles[1:])
        assert (one.state, one.error) == (TaskState.FAILED, "a\\x00b")
        assert (two.state, two.error, two.error_type) == (
            TaskState.FAILED,
            "file caf\\udce9",
            "T\\udcff",
        )
        assert two.traceback is not None and len(two.traceback) < 70_000
        # A retry delay that is not a number of seconds: the task's backoff applies.
        assert three.state is TaskState.READY and three.error == "later"
        assert math.isfinite(three.ready_at)
        assert four.state is TaskState.FAILED and "does not exist" in (four.error or "")
    finally:
        app.close()


def _probe(i: int) -> int:
    return i


def test_a_value_the_driver_cannot_encode_is_bad_data_not_an_outage(store_url: str) -> None:
    """On both backends a lone surrogate cannot be encoded by the driver: that
    is UnstorableError (a ConfigError, never retried as the store being down),
    and nothing is written."""
    store = open_store(store_url)
    try:
        with pytest.raises(accord.UnstorableError) as caught:
            store.register_node(
                name="caf\udce9",
                host="test",
                pid=1,
                queue="q",
                slots=1,
                mode="thread",
                capabilities=[],
            )
        assert not isinstance(caught.value, accord.StoreError)
        assert isinstance(caught.value, accord.ConfigError)
        assert "nothing was written" in str(caught.value)
        assert store.nodes(include_stopped=True) == []
    finally:
        store.close()


def test_nul_in_text_on_postgresql_is_bad_data(pg_url: str) -> None:
    """PostgreSQL's text cannot hold NUL (SQLite's can: accord checks names
    before they reach either)."""
    store = open_store(pg_url)
    try:
        with pytest.raises(accord.UnstorableError, match="NUL"):
            store.register_node(
                name="a\x00b",
                host="test",
                pid=1,
                queue="q",
                slots=1,
                mode="thread",
                capabilities=[],
            )
        assert store.nodes(include_stopped=True) == []
    finally:
        store.close()


@pytest.fixture
def latin1_url(pg_server: pgserver.PgServer) -> str:
    """A PostgreSQL database whose encoding (LATIN1) lacks most of Unicode."""
    name = f"latin_{id(pg_server) % 100_000}_{pg_server.port}"
    with psycopg.connect(pg_server.admin_conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        )
    return pg_server.url(name)


@pytest.mark.parametrize("mode", MODES)
def test_an_error_text_the_database_cannot_hold(latin1_url: str, mode: str) -> None:
    """A row bad for this store alone (its encoding lacks the error's
    characters) is set apart: the others of its batch are recorded, it is
    recorded with its text escaped, and the node goes on."""
    app = bind(b.app, latin1_url)
    try:
        bad = [b.text_error.submit(f"prix: 价格 {i}") for i in range(3)]
        good = [b.fine.submit(i) for i in range(6)]
        with app.embedded_node(mode=mode, slots=2) as node:
            assert [h.result(timeout=120) for h in good] == [i + 1 for i in range(6)]
            for handle in bad:
                with pytest.raises(accord.TaskFailed) as caught:
                    handle.result(timeout=120)
                assert caught.value.error_type == "ValueError"
            assert b.fine.submit(10).result(timeout=60) == 11
            assert node is not None and node._error is None
        for i, handle in enumerate(bad):
            info = handle.info()
            # Its retry ran (the error kept its retries), and each attempt was recorded.
            assert info.attempts == 2
            assert info.error is not None
            assert info.error.startswith(f"prix: \\u4ef7\\u683c {i} [shown with escapes")
            assert info.error.isascii()
    finally:
        app.close()
    # A name this database cannot hold is refused at the first write, as bad data.
    with accord.App("latin_probe", store=latin1_url) as other:
        with pytest.raises(accord.UnstorableError):
            other.task(name="prix_价格")(_probe).submit(1)
