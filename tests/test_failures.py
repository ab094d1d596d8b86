"""Failures on real nodes: retries and backoff, Retry, timeouts, cancellation,
failed dependencies, idempotency keys."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

import accord
from accord import TaskState
from apps import flows as f

MODES = ["process", "thread"]


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- retries -----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_retries_with_backoff_then_success(flows: accord.App, mode: str) -> None:
    handle = f.fails_until.submit(3)
    with flows.embedded_node(mode=mode, slots=1):
        assert handle.result(timeout=30) == 3
    info = handle.info()
    assert info.state is TaskState.SUCCEEDED
    assert info.attempts == 3 and info.max_attempts == 3
    retries = [e for e in flows.store.events(info.run_id) if e.kind == "retry"]
    assert [e.task_id for e in retries] == [handle.id, handle.id]
    assert "attempt 1 of 3 fails" in (retries[0].detail or "")
    assert "attempt 2 of 3 fails" in (retries[1].detail or "")
    # backoff 0.2 s doubled, with jitter down to half: at least 0.1 + 0.2 s
    assert info.finished_at is not None
    assert info.finished_at - info.created_at >= 0.3


def test_lease_losses_is_kept_with_the_task(flows: accord.App) -> None:
    """The bound on lost leases travels with each task (every process's sweep
    reads it from the row), from the decorator or one submission."""
    default = f.square.submit(2)
    one = f.square.with_options(lease_losses=1).submit(3)
    assert default.info().max_losses == 3
    assert one.info().max_losses == 1
    with pytest.raises(accord.ConfigError, match="lease_losses must be at least 1"):
        f.square.with_options(lease_losses=0)


@pytest.mark.parametrize("mode", MODES)
def test_final_failure_raises_task_failed_with_the_error(flows: accord.App, mode: str) -> None:
    handle = f.fails_until.submit(99)
    with flows.embedded_node(mode=mode, slots=1):
        with pytest.raises(accord.TaskFailed) as caught:
            handle.result(timeout=30)
    err = caught.value
    assert f"task {handle.id} (fails_until) failed: RuntimeError: attempt 3 of 3 fails" in str(err)
    assert err.task_id == handle.id
    assert err.error_type == "RuntimeError"
    assert err.error == "attempt 3 of 3 fails"
    assert "RuntimeError" in err.traceback and "fails_until" in err.traceback
    info = handle.info()
    assert info.state is TaskState.FAILED and info.attempts == 3
    assert info.error == "attempt 3 of 3 fails" and info.error_type == "RuntimeError"
    kinds = [e.kind for e in flows.store.events(info.run_id)]
    assert kinds.count("retry") == 2
    assert kinds.count("failed") == 1
    assert "run_failed" in kinds
    run = flows.get_run(info.run_id)
    assert run.status() == "failed"
    with pytest.raises(accord.TaskFailed, match="attempt 3 of 3 fails"):
        run.wait(timeout=5)


def test_retry_signal_uses_its_delay_and_counts_attempts(flows: accord.App) -> None:
    handle = f.asks_retry.submit(2, 0.3)
    started = time.monotonic()
    with flows.embedded_node(mode="process", slots=1):
        assert handle.result(timeout=30) == 3
    # two Retry(delay=0.3): at least 0.6 s, far less than the 30 s backoff
    assert time.monotonic() - started >= 0.6
    info = handle.info()
    assert info.attempts == 3
    retries = [e for e in flows.store.events(info.run_id) if e.kind == "retry"]
    assert len(retries) == 2
    assert "not ready at attempt 1" in (retries[0].detail or "")
    assert "next in 0.30s" in (retries[0].detail or "")


def test_retry_signal_without_attempts_left_fails(flows: accord.App) -> None:
    handle = f.asks_retry.with_options(retries=1).submit(5, 0.05)
    with flows.embedded_node(mode="thread", slots=1):
        with pytest.raises(accord.TaskFailed, match="Retry: not ready at attempt 2") as caught:
            handle.result(timeout=30)
    assert caught.value.error_type == "Retry"
    assert handle.info().attempts == 2


# -- timeouts ----------------------------------------------------------------


def test_timeout_kills_the_slot_process(flows: accord.App, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    handle = f.hangs.submit(str(pid_file), 60.0)
    after = f.square.submit(6)
    with flows.embedded_node(mode="process", slots=1):
        with pytest.raises(accord.TaskFailed, match=r"timed out after 0\.5 s") as caught:
            handle.result(timeout=30)
        # the slot is replaced: later tasks still run
        assert after.result(timeout=30) == 36
    assert caught.value.error_type == "TimeoutError"
    pid = int(pid_file.read_text())
    assert pid != os.getpid()
    _wait_for(lambda: _gone(pid), 10, f"slot process {pid} ending")
    info = handle.info()
    assert info.state is TaskState.FAILED and info.attempts == 1


def test_timeout_in_thread_mode_fails_the_attempt(flows: accord.App, tmp_path: Path) -> None:
    handle = f.hangs.submit(str(tmp_path / "pid"), 2.0)
    with flows.embedded_node(mode="thread", slots=1, grace=0):
        with pytest.raises(accord.TaskFailed, match=r"timed out after 0\.5 s") as caught:
            handle.result(timeout=30)
        assert f.square.submit(3).result(timeout=30) == 9
    assert "thread was abandoned" in caught.value.error
    assert handle.status() is TaskState.FAILED


def test_timeout_is_retried_when_retries_allow(flows: accord.App, tmp_path: Path) -> None:
    handle = f.hangs.with_options(retries=1, backoff=0.05, max_backoff=0.05).submit(
        str(tmp_path / "pid"), 30.0
    )
    with flows.embedded_node(mode="process", slots=1):
        with pytest.raises(accord.TaskFailed, match="timed out"):
            handle.result(timeout=30)
    assert handle.info().attempts == 2


# -- cancellation ------------------------------------------------------------


def test_cancel_a_pending_task_and_its_dependents(flows: accord.App) -> None:
    first = f.square.submit(2)
    dependent = f.add_all.submit([first, 1])
    assert first.status() is TaskState.READY
    assert dependent.status() is TaskState.PENDING
    assert first.cancel("not needed") is True
    assert first.cancel() is False  # already ended
    assert first.status() is TaskState.CANCELLED
    with pytest.raises(accord.TaskCancelled, match="was cancelled: not needed") as caught:
        first.result(timeout=5)
    assert caught.value.task_id == first.id
    assert caught.value.reason == "not needed"
    assert dependent.status() is TaskState.CANCELLED
    reason = dependent.info().error
    assert reason == f"dependency task {first.id} (square) cancelled"
    with pytest.raises(accord.TaskCancelled, match=f"dependency task {first.id}"):
        dependent.result(timeout=5)
    # a node never runs them
    with flows.embedded_node(mode="thread", slots=1):
        assert f.square.submit(5).result(timeout=30) == 25
    assert first.info().started_at is None and first.info().attempts == 0


def test_submit_depending_on_a_cancelled_task_is_cancelled_at_once(flows: accord.App) -> None:
    first = f.square.submit(2)
    first.cancel()
    later = f.add_all.submit([first])
    assert later.status() is TaskState.CANCELLED
    assert f"dependency task {first.id} cancelled" in (later.info().error or "")


@pytest.mark.parametrize("mode", MODES)
def test_cancel_a_running_task(flows: accord.App, mode: str, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    running = f.sleeper.submit(str(pid_file), 30.0 if mode == "process" else 3.0)
    dependent = f.add_all.submit([running])
    with flows.embedded_node(mode=mode, slots=1, lease_ttl=1.5, grace=0):
        _wait_for(lambda: running.status() is TaskState.RUNNING and pid_file.exists(), 20, "start")
        assert running.cancel("stop it") is True
        with pytest.raises(accord.TaskCancelled, match="stop it"):
            running.result(timeout=5)
        with pytest.raises(accord.TaskCancelled, match=f"dependency task {running.id}"):
            dependent.result(timeout=5)
        if mode == "process":
            pid = int(pid_file.read_text())
            # the node learns of it at its next heartbeat (every 0.5 s) and kills the slot
            _wait_for(lambda: _gone(pid), 10, f"slot process {pid} ending")
        # the node goes on with other work
        assert f.square.submit(7).result(timeout=30) == 49
    assert running.status() is TaskState.CANCELLED
    assert flows.store.results([running.id])[0].result is None
    events = [e for e in flows.store.events(running.info().run_id) if e.task_id == running.id]
    assert [(e.kind, e.detail) for e in events if e.kind == "cancelled"] == [
        ("cancelled", "stop it")
    ]


def test_cancelling_an_ended_task_changes_nothing(
    flows: accord.App, row_counts: Callable[[], dict[str, int]]
) -> None:
    handle = f.square.submit(3)
    with flows.embedded_node(mode="thread", slots=1):
        assert handle.result(timeout=30) == 9
    before = row_counts()
    assert handle.cancel("too late") is False
    assert handle.status() is TaskState.SUCCEEDED
    assert row_counts() == before


def test_cancel_a_run(flows: accord.App) -> None:
    run = flows.start(f.slow_children, 3, 30.0)
    with flows.embedded_node(mode="process", slots=2, lease_ttl=1.5, grace=0):
        _wait_for(lambda: run.info().counts.get("running", 0) >= 2, 30, "children running")
        cancelled = run.cancel("user gave up")
        assert cancelled >= 4  # three sleepers and the total (the root forwards to it)
        with pytest.raises(accord.TaskCancelled):
            run.wait(timeout=10)
    info = run.info()
    assert info.state == "cancelled"
    tasks = run.tasks()
    assert all(t.state.terminal for t in tasks)
    sleepers = [t for t in tasks if t.name == "sleeper"]
    assert len(sleepers) == 3
    assert all(t.state is TaskState.CANCELLED for t in sleepers)
    assert all(t.error == "user gave up" for t in sleepers)
    assert run.cancel() == 0  # nothing left open
    kinds = [e.kind for e in flows.store.events(run.id)]
    assert "run_cancel" in kinds and "run_cancelled" in kinds


# -- failed dependencies -------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_failed_dependency_cancels_dependents_naming_it(flows: accord.App, mode: str) -> None:
    bad = f.fail.submit("broken input")
    middle = f.add_all.submit([bad, 1])
    last = f.square.submit(middle)
    with flows.embedded_node(mode=mode, slots=1):
        with pytest.raises(accord.TaskFailed, match="ValueError: broken input"):
            bad.result(timeout=30)
        with pytest.raises(accord.TaskCancelled) as caught:
            middle.result(timeout=10)
    assert caught.value.reason == f"dependency task {bad.id} (fail) failed"
    assert f"task {middle.id} (add_all) was cancelled: dependency task {bad.id} (fail) failed" in (
        str(caught.value)
    )
    assert last.info().error == f"dependency task {middle.id} (add_all) cancelled"
    assert middle.info().started_at is None


def test_failed_workflow_child_fails_the_run(flows: accord.App) -> None:
    run = flows.start(f.failing_workflow, "no good")
    with flows.embedded_node(mode="thread", slots=2):
        with pytest.raises(accord.TaskCancelled, match="dependency task"):
            run.wait(timeout=30)
    tasks = {t.name: t for t in run.tasks()}
    assert tasks["fail"].state is TaskState.FAILED
    assert tasks["add_all"].state is TaskState.CANCELLED
    assert tasks["add_all"].error == f"dependency task {tasks['fail'].id} (fail) failed"
    assert run.info().state == "failed"  # the workflow ended through a failure


# -- results that cannot be stored -------------------------------------------


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("object", "values of type object cannot be serialised"),
        ("cycle", "reference cycle"),
        ("bigint", "does not fit in 64 bits"),
    ],
)
def test_unserialisable_result_fails_without_retries(
    flows: accord.App, kind: str, message: str
) -> None:
    handle = f.bad_result.submit(kind)
    with flows.embedded_node(mode="thread", slots=1):
        with pytest.raises(accord.TaskFailed, match=message) as caught:
            handle.result(timeout=30)
    assert "the result of bad_result() cannot be serialised" in str(caught.value)
    assert caught.value.error_type == "TypeError"
    # retries=2, but the same code would fail the same way: one attempt only
    assert handle.info().attempts == 1


def test_serialisable_result_of_the_same_task(flows: accord.App) -> None:
    with flows.embedded_node(mode="thread", slots=1):
        assert f.bad_result.submit("fine").result(timeout=30) == "fine"


# -- idempotency keys ----------------------------------------------------------


def test_same_idempotency_key_and_arguments_give_the_same_task(
    flows: accord.App, row_counts: Callable[[], dict[str, int]]
) -> None:
    keyed = f.square.with_options(idempotency_key="order-17")
    first = keyed.submit(3)
    before = row_counts()
    second = keyed.submit(3)
    assert second.id == first.id
    assert row_counts() == before
    with flows.embedded_node(mode="thread", slots=1):
        assert second.result(timeout=30) == 9
    third = keyed.submit(3)  # also once it has finished
    assert third.id == first.id
    assert flows.store.runs(limit=10)[0].id == first.info().run_id


def test_same_idempotency_key_other_arguments_conflict(
    flows: accord.App, row_counts: Callable[[], dict[str, int]]
) -> None:
    first = f.square.with_options(idempotency_key="order-18").submit(3)
    before = row_counts()
    with pytest.raises(accord.ConflictError, match="idempotency key 'order-18' was used") as caught:
        f.square.with_options(idempotency_key="order-18").submit(4)
    assert caught.value.task_id == first.id
    with pytest.raises(accord.ConflictError, match="other arguments"):
        f.add_all.with_options(idempotency_key="order-18").submit([3])
    assert row_counts() == before


def test_idempotency_key_does_not_apply_to_map(
    flows: accord.App, row_counts: Callable[[], dict[str, int]]
) -> None:
    before = row_counts()
    with pytest.raises(accord.ConfigError, match="not to map"):
        f.square.with_options(idempotency_key="k").map([1, 2])
    assert row_counts() == before


def test_same_idempotency_key_other_dependencies_conflict(
    flows: accord.App, row_counts: Callable[[], dict[str, int]]
) -> None:
    """Handles are stored as positions: [a] and [b] serialise alike, yet differ."""
    a, b = f.square.submit(1), f.square.submit(2)
    keyed = f.add_all.with_options(idempotency_key="sum-of-one")
    first = keyed.submit([a])
    assert keyed.submit([a]).id == first.id
    before = row_counts()
    with pytest.raises(accord.ConflictError, match="with other arguments"):
        keyed.submit([b])
    assert row_counts() == before


def test_result_over_the_size_limit_fails_without_retries(
    flows: accord.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flows, "max_payload", 1000)  # a thread-mode node shares this app
    small, large = f.big.submit(10), f.big.submit(5000)
    with flows.embedded_node(mode="thread", slots=1):
        assert small.result(timeout=30) == b"x" * 10
        with pytest.raises(accord.TaskFailed, match="over the limit of 1000") as caught:
            large.result(timeout=30)
    assert caught.value.error_type == "ResultTooLarge"
    assert large.info().attempts == 1


def test_arguments_a_node_cannot_decode_fail_without_retries(flows: accord.App) -> None:
    from accord.store.records import NewRun, NewTask

    _, (task_id,) = flows.store.submit(
        [NewTask(name="square", queue="flows", args=b"\xc1", max_attempts=3)],
        run=NewRun(app="flows", name="square"),
    )
    handle = flows.handle(task_id)
    with flows.embedded_node(mode="process", slots=1):
        with pytest.raises(accord.TaskFailed, match="cannot decode the arguments") as caught:
            handle.result(timeout=30)
    assert caught.value.error_type == "DecodeError"
    assert handle.info().attempts == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("kind", "error_type", "message"),
    [("exit", "SystemExit", r"SystemExit\(3\)"), ("interrupt", "KeyboardInterrupt", "Keyboard")],
)
def test_system_exit_in_a_task_fails_the_attempt(
    flows: accord.App, mode: str, kind: str, error_type: str, message: str
) -> None:
    """Neither ends the slot's thread (the task would stay running for ever) nor the node."""
    handle = f.raises_base.submit(kind)
    with flows.embedded_node(mode=mode, slots=1):
        with pytest.raises(accord.TaskFailed, match=message) as caught:
            handle.result(timeout=30)
        assert f.square.submit(4).result(timeout=30) == 16
    assert caught.value.error_type == error_type
    assert handle.status() is TaskState.FAILED
