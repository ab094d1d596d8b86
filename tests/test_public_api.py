"""The public surface: what ``accord`` exports, and errors that travel."""

from __future__ import annotations
import __future__

import inspect
import pickle
import types
from typing import Any

import pytest

import accord
from accord import errors


def test_all_is_sorted() -> None:
    assert accord.__all__ == sorted(accord.__all__)
    assert len(set(accord.__all__)) == len(accord.__all__)


def test_all_matches_the_public_names() -> None:
    """Every public name is in __all__ and everything in __all__ exists (as httpx checks)."""
    public = {
        name
        for name, value in vars(accord).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and not isinstance(value, __future__._Feature)
    }
    listed = set(accord.__all__)
    assert public == listed - {"__version__"}
    for name in accord.__all__:
        assert hasattr(accord, name), name


def test_version() -> None:
    assert isinstance(accord.__version__, str)
    assert accord.__version__.count(".") >= 2


def _error_classes() -> list[type[accord.AccordError]]:
    found = [
        value
        for value in vars(errors).values()
        if inspect.isclass(value) and issubclass(value, accord.AccordError)
    ]
    assert accord.AccordError in found and accord.TaskFailed in found
    return sorted(found, key=lambda cls: cls.__name__)


def test_every_error_class_is_exported() -> None:
    exported = {name for name in accord.__all__ if inspect.isclass(getattr(accord, name))}
    missing = {cls.__name__ for cls in _error_classes()} - exported
    assert missing == set(), f"errors not exported from accord: {sorted(missing)}"


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda cls: cls.__name__)
def test_errors_pickle_round_trip(cls: type[accord.AccordError]) -> None:
    err = cls("something went wrong: task 3", task_id=3, reason="because", extra=[1, "two"])
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert str(back) == "something went wrong: task 3"
    assert back.message == err.message
    assert back.details == {"task_id": 3, "reason": "because", "extra": [1, "two"]}
    assert back.task_id == 3 and back.reason == "because"  # type: ignore[attr-defined]
    assert back.args == err.args
    assert back.code == cls.code and back.status_code == cls.status_code
    assert isinstance(back.code, str) and 400 <= back.status_code < 600


def test_error_hierarchy() -> None:
    assert issubclass(accord.ConfigError, ValueError)
    assert issubclass(accord.StoreURLError, accord.ConfigError)
    assert issubclass(accord.SchemaError, accord.ConfigError)
    assert issubclass(accord.NotFoundError, LookupError)
    assert issubclass(accord.FencedError, accord.ConflictError)
    assert issubclass(accord.StorageFullError, accord.StoreError)
    assert issubclass(accord.TaskFailed, accord.TaskError)
    assert issubclass(accord.TaskCancelled, accord.TaskError)
    assert not issubclass(accord.Retry, accord.AccordError)
    assert issubclass(accord.WorkerShutdown, BaseException)
    assert not issubclass(accord.WorkerShutdown, Exception)
    codes = [cls.code for cls in _error_classes()]
    assert len(codes) == len(set(codes)), "error codes are unique"


def test_retry_and_worker_shutdown_pickle() -> None:
    retry = pickle.loads(pickle.dumps(accord.Retry("later", delay=2.5)))
    assert type(retry) is accord.Retry
    assert retry.reason == "later" and retry.delay == 2.5 and str(retry) == "later"
    default = pickle.loads(pickle.dumps(accord.Retry()))
    assert default.reason == "retry requested" and default.delay is None
    stop = pickle.loads(pickle.dumps(accord.WorkerShutdown("node stopping")))
    assert type(stop) is accord.WorkerShutdown and str(stop) == "node stopping"


def test_a_real_task_failure_pickles(flows: accord.App) -> None:
    from apps import flows as f

    handle = f.fail.submit("kaput")
    with flows.embedded_node(mode="thread", slots=1):
        with pytest.raises(accord.TaskFailed) as caught:
            handle.result(timeout=30)
    back: Any = pickle.loads(pickle.dumps(caught.value))
    assert type(back) is accord.TaskFailed
    assert str(back) == str(caught.value)
    assert back.task_id == handle.id and back.error == "kaput"
    assert back.error_type == "ValueError"
    assert "ValueError: kaput" in back.traceback


def test_task_state_values() -> None:
    assert [s.value for s in accord.TaskState] == [
        "pending",
        "ready",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ]
    assert {s for s in accord.TaskState if s.terminal} == {
        accord.TaskState.SUCCEEDED,
        accord.TaskState.FAILED,
        accord.TaskState.CANCELLED,
    }
    assert accord.TaskState("ready") == "ready"


def test_decorated_tasks_keep_their_function(flows: accord.App) -> None:
    from apps import flows as f

    assert isinstance(f.square, accord.Task)
    assert f.square.__name__ == "square"
    assert f.square.__wrapped__(3) == 9
    assert f.sleeper.__doc__ is not None and "sleeps" in f.sleeper.__doc__
    assert f.dag.workflow and not f.square.workflow
    assert flows.tasks["square"] is f.square
    assert isinstance(flows.node(slots=1), accord.Node)
