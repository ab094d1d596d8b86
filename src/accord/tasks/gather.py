"""Results that hold task handles: the gather task a returning attempt forwards to.

A task that returns one handle forwards to it (its result becomes the task's).
A task that returns a value holding handles nested in lists, tuples, sets and
dicts (``{"a": h1, "b": [h2, 3]}``) submits one gather task instead, as a
child of the returning attempt: its argument is the returned value, so the
handles in it become its dependencies exactly as handles among any task's
arguments do, and its function returns that argument unchanged, now with each
handle's result in its place. The returning task forwards to it. A handle
that fails or is cancelled cancels the gather, as it does any dependent,
and the forward carries that to the returning task.

The gather task's name is :data:`GATHER`, which the name rule refuses for any
app's own task (it holds a ``/``), so it never collides with one; every node
runs it without it being registered (:func:`accord.worker.execute.execute`
knows it). It is numbered in the attempt's submission order like any child,
so a re-executed parent finds the gather its earlier attempt made.
"""

from __future__ import annotations

from typing import Any

from accord import serde
from accord.errors import PayloadTooLargeError
from accord.store.records import NewTask
from accord.tasks import context
from accord.tasks.handles import Handle
from accord.tasks.registry import Runtime

GATHER = "accord/gather"
"""The name of the gather task (no app can register it: it holds a ``/``)."""

# An attempt of the gather does nothing a retry would do differently, but the
# slot that runs it may crash (memory, say): a few attempts, soon after.
_GATHER_ATTEMPTS = 3
_GATHER_BACKOFF = 0.5

_SEQUENCES = (list, tuple, set, frozenset)


class GatherError(Exception):
    """The returned value holds a handle that a gather cannot wait for."""


def gathered(value: Any) -> Any:
    """The gather task's function: its argument, the node having put each
    dependency's result in the place of its handle."""
    return value


def handles_in(value: Any) -> list[Handle[Any]]:
    """The handles nested in ``value`` (in the built-in containers, as the
    serialiser looks into them), each once; ``[]`` if none.

    Raises :class:`GatherError` for a handle used as a dict key. Only called
    once a value failed to serialise: a plain value is not walked here.
    """
    found: list[Handle[Any]] = []
    seen: set[int] = set()
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        cls = type(item)
        if cls is dict:
            if id(item) in seen:
                continue
            seen.add(id(item))
            for key in item:
                if isinstance(key, Handle):
                    raise GatherError(
                        f"a dict in it has the handle of task {key.name} as a key; handles "
                        "are replaced by their tasks' results, which need not be hashable: "
                        "use the handle as a value"
                    )
            stack.extend(item.values())
        elif cls in _SEQUENCES:
            if id(item) in seen:
                continue
            seen.add(id(item))
            stack.extend(item)
        elif isinstance(item, Handle) and id(item) not in seen:
            seen.add(id(item))
            found.append(item)
    return found


def check_handle(handle: Handle[Any], runtime: Runtime) -> None:
    """Raise :class:`GatherError` unless ``handle`` names a task of the store
    that ``runtime`` (the returning attempt's) uses."""
    theirs = handle._runtime
    if theirs is runtime or theirs.store_url == runtime.store_url:
        return
    raise GatherError(
        f"the handle of task {handle.name} of app {theirs.name!r} names a task in another "
        f"store ({theirs.store_url}); a result can only name tasks of its own store: return that "
        "task's value (handle.result()) instead"
    )


def submit_gather(ctx: context.TaskContext, value: Any, what: str, priority: int = 0) -> int:
    """Submit the gather of ``value`` (which holds ``handles_in(value)``) as a
    child of ``ctx``'s attempt, written before this returns; return its id.

    Raises :class:`GatherError` for a handle of another store, ``TypeError``
    if ``value`` cannot be serialised, :class:`PayloadTooLargeError` if it is
    over the payload limit, and what the store raises (``FencedError``: the
    attempt lost its lease).
    """
    runtime = ctx.runtime
    try:
        data, refs = serde.dumps_args(
            [value],
            {},
            is_ref=_is_handle,
            ref_key=_ref_key,
            task_name=GATHER,
            offload=runtime.objects,
        )
    except TypeError as exc:
        # Something beside the handles cannot be serialised: say it of the
        # result, not of the gather's argument.
        text = str(exc)
        ours = f"argument 0 of {GATHER}() "
        raise TypeError(
            f"{what} {text[len(ours) :]}"
            if text.startswith(ours)
            else f"{what} cannot be serialised: {text}"
        ) from exc
    for ref in refs:
        check_handle(ref, runtime)
    if len(data) > runtime.max_payload:
        raise PayloadTooLargeError(
            f"{what} takes {len(data)} bytes, over the limit of {runtime.max_payload}; values "
            "over the app's inline_limit move through the object store by themselves: keep "
            "inline_limit below max_payload, or return an ObjectRef (app.objects.put)"
        )
    new = NewTask(
        name=GATHER,
        queue=runtime.name,
        args=data,
        priority=priority,
        max_attempts=_GATHER_ATTEMPTS,
        backoff=_GATHER_BACKOFF,
        max_backoff=_GATHER_BACKOFF,
    )
    # Numbered like any child: a re-executed parent that returns the same
    # value finds this gather instead of making another.
    new.seq = ctx.next_seq()
    handle: Handle[Any] = Handle(runtime, None, GATHER, owner=ctx)
    ctx.add(new, handle, refs)
    ctx.flush()
    task_id: int = handle.id
    return task_id


def _is_handle(obj: Any) -> bool:
    return isinstance(obj, Handle)


def _ref_key(obj: Any) -> object:
    return id(obj) if obj._id is None else obj._id
