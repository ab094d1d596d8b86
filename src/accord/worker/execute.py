"""Running one claimed task attempt and turning what happened into a Completion."""

from __future__ import annotations

import time
import traceback as tb
from collections.abc import Callable
from typing import Any

from accord import context, serde
from accord.app import App
from accord.errors import FencedError, Retry
from accord.handles import Handle
from accord.store.base import ClaimedTask, Completion, Outcome


def execute(
    app: App,
    task: ClaimedTask,
    *,
    node_id: int | None = None,
    on_block: Callable[[bool], None] | None = None,
) -> Completion:
    """Run ``task`` here and report its outcome; never raises ``Exception``."""
    registered = app.tasks.get(task.name)
    if registered is None:
        known = ", ".join(sorted(app.tasks)) or "none"
        return _error(
            task,
            f"task {task.name!r} is not registered in app {app.name!r} on this node "
            f"(it knows: {known}); start the node with --app pointing at the module that "
            "defines it",
            "UnknownTask",
            retryable=False,
        )
    try:
        deps = [serde.loads(raw) for raw in task.dep_results]
        args, kwargs = serde.loads_args(task.args, deps)
    except Exception as exc:
        return _error(task, f"cannot decode the arguments: {exc}", "DecodeError", retryable=False)
    ctx = context.TaskContext(
        app=app,
        task_id=task.id,
        run_id=task.run_id,
        name=task.name,
        attempt=task.attempt,
        max_attempts=task.max_attempts,
        fence=task.fence,
        node_id=node_id,
        on_block=on_block,
    )
    token = context.enter(ctx)
    started = time.perf_counter()
    try:
        completion = _run(app, registered.fn, task, ctx, args, kwargs)
    finally:
        ctx.close()  # children still buffered are written before the outcome is reported
        context.leave(token)
    completion.duration = time.perf_counter() - started
    return completion


def _run(
    app: App,
    fn: Callable[..., Any],
    task: ClaimedTask,
    ctx: context.TaskContext,
    args: list[Any],
    kwargs: dict[str, Any],
) -> Completion:
    try:
        value = fn(*args, **kwargs)
        ctx.flush()
        if isinstance(value, Handle):
            return Completion(task.id, task.fence, Outcome.FORWARD, forward_to=value.id)
        data = serde.dumps(value, what=f"the result of {task.name}()")
        if len(data) > app.max_payload:
            return _error(
                task,
                f"the result takes {len(data)} bytes, over the limit of {app.max_payload}; "
                "put large data in the object store and return a reference",
                "ResultTooLarge",
                retryable=False,
            )
        return Completion(task.id, task.fence, Outcome.OK, result=data)
    except FencedError as exc:
        return _error(task, str(exc), "FencedError", retryable=False)
    except Retry as exc:
        return _error(task, exc.reason, "Retry", retry_delay=exc.delay, trace=False)
    except TypeError as exc:
        retryable = "cannot be serialised" not in str(exc)
        return _error(task, str(exc), "TypeError", retryable=retryable)
    except Exception as exc:
        return _error(task, str(exc) or repr(exc), type(exc).__name__)
    except (SystemExit, KeyboardInterrupt) as exc:
        # Raised by the task's code, not meant for the node: in a thread slot it
        # would end the thread and leave the task running for ever. Fail the attempt.
        return _error(task, f"the task raised {exc!r}", type(exc).__name__)


def _error(
    task: ClaimedTask,
    message: str,
    error_type: str,
    *,
    retryable: bool = True,
    retry_delay: float | None = None,
    trace: bool = True,
) -> Completion:
    return Completion(
        task.id,
        task.fence,
        Outcome.ERROR,
        error=message,
        error_type=error_type,
        traceback=tb.format_exc() if trace else None,
        retryable=retryable,
        retry_delay=retry_delay,
    )
