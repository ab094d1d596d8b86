"""Tasks: decorated functions that can be called, submitted and mapped."""

from __future__ import annotations

import dataclasses
import datetime
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from accord import context, serde
from accord._checks import check_name, check_text
from accord.errors import ConfigError, PayloadTooLargeError
from accord.handles import Handle
from accord.scheduling.policy import RESOURCE_KINDS
from accord.store.base import NewRun, NewTask

if TYPE_CHECKING:
    from accord.app import App

P = ParamSpec("P")
R = TypeVar("R")

MAX_NAME_BYTES = 256
_MAX_INT = 2**63 - 1


def _number(name: str, value: Any, *, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, not {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, not {value!r}")
    if value < minimum or (strict and value == minimum):
        bound = "greater than" if strict else "at least"
        raise ConfigError(f"{name} must be {bound} {minimum}, not {value!r}")
    return float(value)


def _integer(name: str, value: Any, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, not {type(value).__name__} {value!r}")
    if abs(value) > _MAX_INT:
        raise ConfigError(f"{name} must fit in 64 bits, not {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """A task's options; see :meth:`accord.App.task` for their meaning."""

    name: str
    queue: str
    priority: int = 0
    weight: float = 0.0
    size: float | Callable[..., float] = 1.0
    retries: int = 0
    backoff: float = 1.0
    max_backoff: float = 60.0
    timeout: float | None = None
    requires: tuple[str, ...] = ()
    resources: Mapping[str, float] | None = None
    delay: float = 0.0
    deadline: float | datetime.datetime | None = None
    concurrency: int | None = None
    rate: float | None = None
    limit_key: str | None = None
    idempotency_key: str | None = None

    def validated(self) -> TaskOptions:
        check_name(self.name, "task name")
        check_name(self.queue, "queue")
        _integer("priority", self.priority)
        _number("weight", self.weight)
        if not callable(self.size):
            _number("size", self.size)
        _integer("retries", self.retries, minimum=0)
        _number("backoff", self.backoff, strict=True)
        _number("max_backoff", self.max_backoff)
        if self.max_backoff < self.backoff:
            raise ConfigError(
                f"max_backoff ({self.max_backoff}) must be at least backoff ({self.backoff})"
            )
        if self.timeout is not None:
            _number("timeout", self.timeout, strict=True)
        _number("delay", self.delay)
        if isinstance(self.deadline, datetime.datetime):
            if self.deadline.tzinfo is None:
                raise ConfigError(
                    "deadline must be timezone-aware (for example datetime.now(timezone.utc) + "
                    "timedelta(minutes=5)), or a number of seconds after submission"
                )
        elif self.deadline is not None:
            _number("deadline (seconds after submission)", self.deadline, strict=True)
        if self.concurrency is not None:
            _integer("concurrency", self.concurrency, minimum=1)
        if self.rate is not None:
            _number("rate (tasks per second)", self.rate, strict=True)
        if self.limit_key is not None:
            check_name(self.limit_key, "limit_key")
            if self.concurrency is None and self.rate is None:
                raise ConfigError("limit_key needs a concurrency or a rate to apply")
        if isinstance(self.requires, str) or not all(
            isinstance(r, str) and r and "," not in r for r in self.requires
        ):
            raise ConfigError(
                f"requires must be a list of capability names without commas, not {self.requires!r}"
            )
        for capability in self.requires:
            check_text(capability, "requires", MAX_NAME_BYTES)
        if self.resources is not None:
            if not isinstance(self.resources, Mapping):
                raise ConfigError(f"resources must be a mapping, not {self.resources!r}")
            for kind, amount in self.resources.items():
                if kind not in RESOURCE_KINDS:
                    raise ConfigError(
                        f"unknown resource {kind!r}; resources are {', '.join(RESOURCE_KINDS)}"
                    )
                _number(f"resources[{kind!r}]", amount)
        if self.idempotency_key is not None and (
            not isinstance(self.idempotency_key, str)
            or not self.idempotency_key
            or len(self.idempotency_key) > 500
            or "\x00" in self.idempotency_key
        ):
            raise ConfigError(
                "idempotency_key must be a non-empty string of at most 500 characters "
                "without NUL bytes"
            )
        if self.idempotency_key is not None:
            check_text(self.idempotency_key, "idempotency_key", 4 * 500)
        return self


OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(TaskOptions)) - {"queue"}


class Task(Generic[P, R]):
    """A function registered with an :class:`~accord.App`.

    Calling it runs the function here and now; :meth:`submit` records it in the
    store for a node to run and returns a :class:`~accord.Handle`.
    """

    def __init__(
        self,
        app: App,
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
        self.app = app
        self.fn = fn
        self.options = options.validated()
        self.workflow = workflow
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", options.name)
        self.__wrapped__ = fn

    @property
    def name(self) -> str:
        return self.options.name

    def __repr__(self) -> str:
        kind = "workflow" if self.workflow else "task"
        return f"<{kind} {self.name} of app {self.app.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def with_options(self, **options: Any) -> Task[P, R]:
        """A copy of this task with some options changed, for one submission."""
        unknown = set(options) - OPTION_NAMES
        if unknown:
            raise ConfigError(
                f"unknown task option(s) {sorted(unknown)}; known: {sorted(OPTION_NAMES)}"
            )
        if "name" in options:
            raise ConfigError("a task's name cannot be changed per submission")
        changed = dataclasses.replace(self.options, **options)
        return Task(self.app, self.fn, changed, workflow=self.workflow, _one_submission=True)

    def _new_task(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[NewTask, list[Any]]:
        opts = self.options
        data, refs = serde.dumps_args(
            args, kwargs, is_ref=_is_handle, ref_key=_ref_key, task_name=self.name
        )
        limit = self.app.max_payload
        if len(data) > limit:
            raise PayloadTooLargeError(
                f"the arguments of {self.name}() take {len(data)} bytes, over the limit of "
                f"{limit}; put large data in the object store and pass a reference"
            )
        size = opts.size
        if callable(size):
            size = _number(f"size({self.name} arguments)", size(*args, **kwargs))
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
        self.app._check_open()
        ctx = context.current()
        if ctx is not None and ctx.app is not self.app:
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
        _, ids = self.app.store.submit(
            tasks, run=NewRun(app=self.app.name, name=self.name, rooted=rooted)
        )
        return [Handle(self.app, task_id, self.name) for task_id in ids]

    def _add_child(self, ctx: context.TaskContext, new: NewTask, refs: list[Any]) -> Handle[R]:
        # Numbered by call, before anything can fail: a re-executed parent
        # numbers the same calls alike.
        new.seq = ctx.next_seq()
        handle: Handle[R] = Handle(self.app, None, self.name, owner=ctx)
        ctx.add(new, handle, refs)
        return handle


def _is_handle(obj: Any) -> bool:
    return isinstance(obj, Handle)


def _ref_key(obj: Any) -> object:
    return id(obj) if obj._id is None else obj._id


def _top_level_dep(handle: Handle[Any]) -> int:
    return handle.id
