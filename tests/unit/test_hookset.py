"""The hook set on its own: who is told, what is refused, how failures are logged."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from accord import ConfigError
from accord.hooks import Hook, Hooks, RunEvent, TaskEvent, hookset


class Runs(Hook):
    def __init__(self) -> None:
        self.told: list[Any] = []

    def run_ended(self, event: RunEvent) -> None:
        self.told.append(event)


class Tasks(Hook):
    options = {"team": str}

    def __init__(self) -> None:
        self.told: list[TaskEvent] = []

    def task_succeeded(self, event: TaskEvent) -> None:
        self.told.append(event)


def _task(name: str = "t", queue: str = "q") -> TaskEvent:
    return TaskEvent(1, 1, name, queue, 0.0)


def test_only_hooks_that_override_a_method_are_told_of_it() -> None:
    hooks = Hooks()
    assert not hooks.wants("run_ended")
    runs = hooks.add(Runs())
    assert hooks.wants("run_ended") and not hooks.wants("task_started")
    hooks.emit("run_ended", RunEvent(7, "succeeded", 1.0))
    hooks.emit("task_started", _task())
    assert [e.run_id for e in runs.told] == [7]
    hooks.remove(runs)
    assert not hooks.wants("run_ended") and len(hooks) == 0


def test_an_included_set_is_told_too_with_its_own_task_options() -> None:
    store = Hooks()
    app = Hooks(task_options=lambda queue, name: {"team": "ml"} if queue == "q" else {})
    tasks = app.add(Tasks())
    store.include(app)
    store.include(app)  # once is enough
    assert store.wants("task_succeeded")
    store.deliver([("task_succeeded", _task()), ("task_succeeded", _task(queue="other"))])
    assert [dict(e.options) for e in tasks.told] == [{"team": "ml"}, {}]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: object(), "subclass of accord.hooks.Hook"),
        (lambda: type("Bad", (Hook,), {"options": {"retries": int}})(), "built-in task option"),
        (lambda: type("Bad", (Hook,), {"options": {"level": 3}})(), "must be callable"),
        (lambda: type("Bad", (Hook,), {"options": {"not a name": str}})(), "identifier"),
        (lambda: Tasks(), "another hook of this app declares it"),
    ],
)
def test_bad_hooks_are_refused_and_change_nothing(make: Any, message: str) -> None:
    hooks = Hooks(reserved={"retries"})
    first = hooks.add(Tasks())
    with pytest.raises(ConfigError, match=message):
        hooks.add(make())
    assert list(hooks) == [first]
    with pytest.raises(ConfigError, match="added already"):
        hooks.add(first)
    with pytest.raises(ConfigError, match="not added"):
        hooks.remove(Runs())


def test_declared_options_are_checked_by_their_hook() -> None:
    def positive(value: Any) -> int:
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"must be a positive integer, not {value!r}")
        return value

    hooks = Hooks()
    hooks.add(type("Budget", (Hook,), {"options": {"budget": positive}})())
    assert hooks.check_options({"budget": 3}) == {"budget": 3}
    with pytest.raises(ConfigError, match=r"'budget'.*positive integer"):
        hooks.check_options({"budget": -1})
    with pytest.raises(ConfigError, match=r"unknown task option\(s\) \['x'\]; known: \['a'\]"):
        hooks.check_options({"x": 1}, known={"a"})


class Failing(Hook):
    def run_ended(self, event: RunEvent) -> None:
        raise RuntimeError("plugin bug")


def test_failures_are_logged_once_then_summed_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [100.0]
    monkeypatch.setattr(hookset.time, "monotonic", lambda: clock[0])
    hooks = Hooks()
    hooks.add(Failing())
    after = hooks.add(Runs())
    event = RunEvent(1, "failed", 0.0)
    with caplog.at_level(logging.WARNING, logger="accord.hooks"):
        for _ in range(5):
            hooks.emit("run_ended", event)
        clock[0] += hookset.QUIET_SECONDS
        hooks.emit("run_ended", event)
    assert hooks.failures == 6 and len(after.told) == 6
    first, summary = caplog.records
    assert first.exc_info is not None and "plugin bug" in (first.exc_text or "")
    assert "5 more time(s)" in summary.getMessage()
