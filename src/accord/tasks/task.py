"""Tasks: decorated functions that can be called, submitted and mapped."""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, ParamSpec, TypeVar

from accord import serde
from accord.errors import ConfigError, PayloadTooLargeError
from accord.store.records import NewRun, NewTask
from accord.tasks import context
from accord.tasks.handles import Handle, Run
from accord.tasks.options import OPTION_NAMES, TaskOptions, number
from accord.tasks.registry import Runtime

P = ParamSpec("P")
R = TypeVar("R")


class Task(Generic[P, R]):
    """A function registered with an :class:`~accord.App`.

    Calling it runs the function here and now; :meth:`submit` records it in the
    store for a node to run and returns a :class:`~accord.Handle`.
    """

    def __init__(
        self,
        runtime: Runtime,
        fn: Callable[P, R],
        options: TaskOptions,
        *,
        workflow: bool = False,
        _one_submission: bool = False,
    ) -> None:
        if options.idempotency_key is not None and not _one_submission:
            # One key for every call: the first call would own it and every
            # later call with other arguments would raise ConflictError.
            kind = "workflow" if workflow else "task"
            raise ConfigError(
                f"idempotency_key cannot be an option of @app.{kind} {options.name}: one key "
                "would name every call, so each call with other arguments would conflict "
                f"with the first; give a key per submission: {options.name}.with_options("
                "idempotency_key=...).submit(...)"
            )
        self.runtime = runtime
        self.fn = fn
        self.options = options.validated()
        self.workflow = workflow
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", options.name)
        self.__wrapped__ = fn
        self._signature = _signature(fn)
        # Calls with exactly the positional arguments a plain function takes
        # need no binding (the common case, and bind costs microseconds).
        self._plain_arity = _plain_arity(self._signature)

    @property
    def name(self) -> str:
        return self.options.name

    def __repr__(self) -> str:
        kind = "workflow" if self.workflow else "task"
        return f"<{kind} {self.name} of app {self.runtime.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def with_options(self, **options: Any) -> Task[P, R]:
        """A copy of this task with some options changed, for one submission."""
        unknown = set(options) - OPTION_NAMES
        hooked = sorted(unknown & set(self.runtime.hooks.declared()))
        if hooked:
            raise ConfigError(
                f"option(s) {hooked} of task {self.name!r} are declared by a hook: the hook is "
                "told them where the task is defined (@app.task(...)), not per submission"
            )
        if unknown:
            raise ConfigError(
                f"unknown task option(s) {sorted(unknown)}; known: {sorted(OPTION_NAMES)}"
            )
        if "name" in options:
            raise ConfigError("a task's name cannot be changed per submission")
        changed = dataclasses.replace(self.options, **options)
        return Task(self.runtime, self.fn, changed, workflow=self.workflow, _one_submission=True)

    def _new_task(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[NewTask, list[Any]]:
        opts = self.options
        if self._signature is not None and (kwargs or len(args) != self._plain_arity):
            # Refused here, before anything is written: a call the function
            # cannot take would otherwise fail on a node, after the run began.
            try:
                self._signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise ConfigError(
                    f"{self.name}{_shown(self._signature)} cannot take these arguments: "
                    f"{exc}; nothing was submitted",
                    task=self.name,
                ) from None
        data, refs = serde.dumps_args(
            args,
            kwargs,
            is_ref=_is_handle,
            ref_key=_ref_key,
            task_name=self.name,
            offload=self.runtime.objects,
        )
        limit = self.runtime.max_payload
        if len(data) > limit:
            raise PayloadTooLargeError(
                f"the arguments of {self.name}() take {len(data)} bytes, over the limit of "
                f"{limit}; arguments over the app's inline_limit move through the object store "
                "by themselves: keep inline_limit below max_payload, or pass an ObjectRef "
                "(app.objects.put)"
            )
        size = opts.size
        if callable(size):
            size = number(f"size({self.name} arguments)", size(*args, **kwargs))
        now = time.time()
        deadline_at: float | None = None
        if isinstance(opts.deadline, datetime.datetime):
            deadline_at = opts.deadline.timestamp()
            if deadline_at <= now:
                raise ConfigError(
                    f"the deadline of {self.name}() ({opts.deadline.isoformat()}) is in the past"
                )
        limit_key = opts.limit_key
        if limit_key is None and (opts.concurrency is not None or opts.rate is not None):
            limit_key = f"task:{self.name}"
        new = NewTask(
            name=self.name,
            queue=opts.queue,
            args=data,
            priority=opts.priority,
            weight=opts.weight,
            size=float(size),
            max_attempts=opts.retries + 1,
            max_losses=opts.lease_losses,
            backoff=opts.backoff,
            max_backoff=opts.max_backoff,
            timeout=opts.timeout,
            requires=list(opts.requires) or None,
            resources=dict(opts.resources) if opts.resources else None,
            delay=opts.delay or 0.0,
            deadline_at=deadline_at,
            deadline_in=None if isinstance(opts.deadline, datetime.datetime) else opts.deadline,
            limit_key=limit_key,
            concurrency=opts.concurrency,
            rate=opts.rate,
            idempotency_key=opts.idempotency_key,
        )
        return new, refs

    def start(self, *args: P.args, **kwargs: P.kwargs) -> Run:
        """Start this workflow (or task) as a new run, durable when this returns."""
        self.runtime.check_open()
        new, refs = self._new_task(args, kwargs)
        new.deps = [h.id for h in refs]
        run_id, _ = self.runtime.store.submit(
            [new], run=NewRun(app=self.runtime.name, name=self.name)
        )
        return Run(self.runtime, run_id)

    def submit(self, *args: Any, **kwargs: Any) -> Handle[R]:
        """Record a call of this task and return its handle at once.

        Arguments are those of the function, where any value may also be a
        handle of a task that produces it (so the signature cannot be checked
        statically: a ParamSpec has no way to say "T or a handle of T").

        Handles among the arguments (also inside lists and dicts) make this
        task wait for those tasks and receive their results in their place.
        Outside a task this starts a new run, durable when this returns.
        Inside a task the call becomes a child of the running task.

        Raises ``TypeError`` (naming the argument) if an argument cannot be
        serialised; nothing is written then.
        """
        return self._submit_many([(args, kwargs)], rooted=True)[0]

    def map(self, arguments: Iterable[Any]) -> list[Handle[R]]:
        """Submit one call per item (a tuple of positional arguments, or a
        single argument) in one transaction; outside a task they form one run
        whose value is the list of their results."""
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            (item if isinstance(item, tuple) else (item,), {}) for item in arguments
        ]
        return self._submit_many(calls, rooted=False)

    def _submit_many(
        self, calls: list[tuple[tuple[Any, ...], dict[str, Any]]], *, rooted: bool
    ) -> list[Handle[R]]:
        self.runtime.check_open()
        ctx = context.current()
        if ctx is not None and ctx.runtime is not self.runtime:
            ctx = None
        if self.options.idempotency_key is not None and len(calls) != 1:
            raise ConfigError("an idempotency_key applies to one submission, not to map()")
        prepared = [self._new_task(args, kwargs) for args, kwargs in calls]
        if ctx is not None:
            return [self._add_child(ctx, new, refs) for new, refs in prepared]
        tasks = []
        for new, refs in prepared:
            new.deps = [_top_level_dep(h) for h in refs]
            tasks.append(new)
        _, ids = self.runtime.store.submit(
            tasks, run=NewRun(app=self.runtime.name, name=self.name, rooted=rooted)
        )
        return [Handle(self.runtime, task_id, self.name) for task_id in ids]

    def _add_child(self, ctx: context.TaskContext, new: NewTask, refs: list[Any]) -> Handle[R]:
        # Numbered by call, before anything can fail: a re-executed parent
        # numbers the same calls alike.
        new.seq = ctx.next_seq()
        handle: Handle[R] = Handle(self.runtime, None, self.name, owner=ctx)
        ctx.add(new, handle, refs)
        return handle


def _is_handle(obj: Any) -> bool:
    return isinstance(obj, Handle)


def _ref_key(obj: Any) -> object:
    return id(obj) if obj._id is None else obj._id


def _top_level_dep(handle: Handle[Any]) -> int:
    return handle.id


def _plain_arity(signature: inspect.Signature | None) -> int:
    """The number of parameters, if every one is positional and has no
    default; else -1 (every call is bound)."""
    if signature is None:
        return -1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = signature.parameters.values()
    if all(p.kind in kinds and p.default is inspect.Parameter.empty for p in parameters):
        return len(parameters)
    return -1


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    """The signature calls are checked against, where Python can tell it."""
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C functions
        return None


class _Annotation(str):
    """An annotation kept as text (``from __future__ import annotations``),
    shown as written rather than quoted."""

    def __repr__(self) -> str:
        return str(self)


def _shown(signature: inspect.Signature) -> str:
    """``(i: int, *, scale: float = 1.0)``: the parameters as they were written."""
    parameters = [
        p.replace(annotation=_Annotation(p.annotation)) if isinstance(p.annotation, str) else p
        for p in signature.parameters.values()
    ]
    return str(signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty))
