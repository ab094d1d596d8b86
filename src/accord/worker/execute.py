"""Running one claimed task attempt and turning what happened into a Completion."""

from __future__ import annotations

import time
import traceback as tb
from collections.abc import Callable
from typing import Any

from accord import serde
from accord._checks import (
    MAX_ERROR_CHARS,
    MAX_TRACEBACK_CHARS,
    ascii_text,
    clean_text,
    describe_exception,
    seconds_or_none,
    type_name,
)
from accord.errors import FencedError, PayloadTooLargeError, Retry
from accord.store.records import ClaimedTask, Completion, Outcome
from accord.tasks import context, gather
from accord.tasks.handles import Handle
from accord.tasks.registry import Runtime
from accord.worker import capture


def execute(
    runtime: Runtime,
    task: ClaimedTask,
    *,
    node_id: int | None = None,
    on_block: Callable[[bool], None] | None = None,
) -> Completion:
    """Run ``task`` here and report its outcome; never raises ``Exception``.

    Whatever the task returns or raises, the Completion holds only what every
    store records: texts cleaned, a result that serialises within the limit.
    """
    fn: Callable[..., Any]
    registered = runtime.tasks.get(task.name)
    if registered is not None:
        fn = registered.fn
    elif task.name == gather.GATHER:
        fn = gather.gathered  # accord's own: every node runs it, no app registers it
    else:
        known = ", ".join(sorted(runtime.tasks)) or "none"
        return _error(
            task,
            f"task {task.name!r} is not registered in app {runtime.name!r} on this node "
            f"(it knows: {known}); start the node with --app pointing at the module that "
            "defines it",
            "UnknownTask",
            retryable=False,
        )
    try:
        objects = runtime.objects
        deps = [serde.loads(raw, objects) for raw in task.dep_results]
        args, kwargs = serde.loads_args(task.args, deps, objects)
    except Exception as exc:
        return _error(
            task,
            f"cannot decode the arguments: {describe_exception(exc)}",
            "DecodeError",
            retryable=False,
        )
    ctx = context.TaskContext(
        runtime=runtime,
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
    # What the task prints and logs; its last lines are written before the outcome is sent.
    with capture.capturing(lambda: runtime.store, task.id, task.fence):
        try:
            completion = _run(runtime, fn, task, ctx, args, kwargs)
        finally:
            ctx.close()  # children still buffered are written before the outcome is reported
            context.leave(token)
    completion.duration = time.perf_counter() - started
    return completion


def _run(
    runtime: Runtime,
    fn: Callable[..., Any],
    task: ClaimedTask,
    ctx: context.TaskContext,
    args: list[Any],
    kwargs: dict[str, Any],
) -> Completion:
    try:
        value = fn(*args, **kwargs)
        ctx.flush()
    except FencedError as exc:
        return _error(task, describe_exception(exc), "FencedError", retryable=False)
    except Retry as exc:
        return _retry(task, exc)
    except TypeError as exc:
        message = describe_exception(exc)
        retryable = "cannot be serialised" not in message
        return _error(task, message, type_name(exc), retryable=retryable)
    except Exception as exc:
        return _error(task, describe_exception(exc), type_name(exc))
    except BaseException as exc:
        # Raised by the task's code, not meant for the node (SystemExit,
        # KeyboardInterrupt, a BaseException of its own): in a thread slot it
        # would end the thread and leave the task running for ever. Fail the attempt.
        return _error(task, f"the task raised {_shown(exc)}", type_name(exc))
    try:
        return _value(runtime, task, ctx, value)
    except Exception as exc:  # a value whose own methods fail as it is looked at
        return _error(
            task,
            f"the result of {task.name}() cannot be recorded: {describe_exception(exc)}",
            type_name(exc),
            retryable=False,
        )


def _shown(exc: BaseException) -> str:
    """``repr(exc)`` (``SystemExit(3)``), or what can be said of it if that raises."""
    try:
        return repr(exc)
    except Exception:
        return describe_exception(exc)


def _value(runtime: Runtime, task: ClaimedTask, ctx: context.TaskContext, value: Any) -> Completion:
    """The completion for what the task returned; a value that cannot be
    stored fails the attempt (another attempt would return the same).

    A handle forwards to its task; a value holding handles forwards to a
    gather of them (:mod:`accord.tasks.gather`). A plain value is serialised
    once, as before: handles are looked for only when that fails.
    """
    what = f"the result of {task.name}()"
    if isinstance(value, Handle):
        try:
            gather.check_handle(value, runtime)
        except gather.GatherError as exc:
            return _bad_handle(task, f"{what} cannot be recorded: {exc}")
        target = value.id
        if isinstance(target, int) and -(2**63) <= target < 2**63:
            return Completion(task.id, task.fence, Outcome.FORWARD, forward_to=target)
        return _error(
            task,
            f"{task.name}() returned a handle to task {clean_text(repr(target), 200)}, "
            "which no store holds",
            "BadHandle",
            retryable=False,
            trace=False,
        )
    try:
        data = serde.dumps(value, what=what, offload=runtime.objects)
    except Exception as exc:
        if isinstance(exc, TypeError):
            forward = _gather(task, ctx, value, what)
            if forward is not None:
                return forward
        # serde names the value's fault (a TypeError); anything else is a value
        # whose own methods fail while it is serialised.
        message = describe_exception(exc)
        if not isinstance(exc, TypeError):
            message = f"the result of {task.name}() cannot be serialised: {message}"
        return _error(task, message, "TypeError", retryable=False)
    if len(data) > runtime.max_payload:
        return _error(
            task,
            f"the result takes {len(data)} bytes, over the limit of {runtime.max_payload}; "
            "results over the app's inline_limit move through the object store by "
            "themselves: keep inline_limit below max_payload, or return an ObjectRef "
            "(app.objects.put)",
            "ResultTooLarge",
            retryable=False,
            trace=False,
        )
    return Completion(task.id, task.fence, Outcome.OK, result=data)


def _gather(
    task: ClaimedTask, ctx: context.TaskContext, value: Any, what: str
) -> Completion | None:
    """The forward to a gather of the handles nested in ``value`` (submitted
    as a child of this attempt), a failure saying why there cannot be one, or
    None if ``value`` holds no handle (its own fault stands)."""
    try:
        handles = gather.handles_in(value)
    except gather.GatherError as exc:
        return _bad_handle(task, f"{what} cannot be recorded: {exc}")
    if not handles:
        return None
    try:
        target = gather.submit_gather(ctx, value, what, task.priority)
    except gather.GatherError as exc:
        return _bad_handle(task, f"{what} cannot be recorded: {exc}")
    except FencedError as exc:
        return _error(task, describe_exception(exc), "FencedError", retryable=False)
    except PayloadTooLargeError as exc:
        return _error(task, describe_exception(exc), "ResultTooLarge", retryable=False, trace=False)
    except TypeError as exc:  # something beside the handles (serde names it)
        return _error(task, describe_exception(exc), "TypeError", retryable=False)
    except Exception as exc:  # the store failed: another attempt may fare better
        return _error(
            task,
            f"{what} holds task handles, and the task that gathers their results could not "
            f"be submitted: {describe_exception(exc)}",
            type_name(exc),
        )
    return Completion(task.id, task.fence, Outcome.FORWARD, forward_to=target)


def _bad_handle(task: ClaimedTask, message: str) -> Completion:
    return _error(task, message, "BadHandle", retryable=False, trace=False)


def _retry(task: ClaimedTask, exc: Retry) -> Completion:
    reason: object = getattr(exc, "reason", None)
    message = reason if isinstance(reason, str) else describe_exception(exc)
    delay: object = getattr(exc, "delay", None)
    retry_delay = seconds_or_none(delay)
    if delay is not None and retry_delay is None:
        message += (
            f" (Retry(delay={clean_text(repr(delay), 80)}) is not a finite number of seconds "
            "at least 0: the task's backoff applies)"
        )
    return _error(task, message, "Retry", retry_delay=retry_delay, trace=False)


def _error(
    task: ClaimedTask,
    message: str,
    error_type: str,
    *,
    retryable: bool = True,
    retry_delay: float | None = None,
    trace: bool = True,
) -> Completion:
    """A failed attempt, its texts made storable (see accord._checks.clean_text):
    a task's error message may hold anything, and must never keep the attempt
    from being recorded."""
    return Completion(
        task.id,
        task.fence,
        Outcome.ERROR,
        error=clean_text(message, MAX_ERROR_CHARS),
        error_type=clean_text(error_type, 200),
        traceback=_traceback() if trace else None,
        retryable=retryable,
        retry_delay=retry_delay,
    )


def _traceback() -> str | None:
    try:
        text = tb.format_exc()
    except Exception as exc:  # a frame or an exception that cannot be shown
        text = f"(the traceback could not be formatted: {describe_exception(exc)})"
    return clean_text(text, MAX_TRACEBACK_CHARS)


def error_completion(task: ClaimedTask, message: str, error_type: str) -> Completion:
    """A failed, not retryable attempt made by the slot itself (when the
    attempt's own outcome could not be produced or sent)."""
    return _error(task, message, error_type, retryable=False)


def unstorable(done: Completion, refused: Exception) -> Completion:
    """What to record when the store refused ``done`` as bad data (text its
    encoding cannot hold, say): the attempt fails, its texts in ASCII with
    escapes (which every store holds), saying why. A task's error keeps its
    type and its retries; a result that cannot be stored fails for good
    (another attempt would return the same)."""
    why = ascii_text(describe_exception(refused), 1000)
    trace = done.traceback
    if done.outcome is Outcome.ERROR:
        message = (
            f"{done.error or ''} [shown with escapes: the store refused the text as it was: {why}]"
        )
        error_type = done.error_type or "Error"
        retryable = done.retryable
    else:
        message = f"the store refused to record this attempt's outcome: {why}"
        error_type = "UnstorableOutcome"
        retryable = False
    return Completion(
        done.task_id,
        done.fence,
        Outcome.ERROR,
        error=ascii_text(message, MAX_ERROR_CHARS),
        error_type=ascii_text(error_type, 200),
        traceback=None if trace is None else ascii_text(trace, MAX_TRACEBACK_CHARS),
        retryable=retryable,
        retry_delay=done.retry_delay,
        duration=done.duration,
    )
