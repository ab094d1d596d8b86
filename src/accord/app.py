"""The entry object: an :class:`App` owns its configuration, its store and its tasks."""

from __future__ import annotations

import datetime
import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ParamSpec, TypeVar, cast, overload

from accord.data import DEFAULT_INLINE_LIMIT, Objects
from accord.errors import ConfigError, NotFoundError
from accord.hooks import Hook, Hooks
from accord.messaging import Mailbox, Topic
from accord.scheduling.policy import Policy
from accord.state import State
from accord.store import Store
from accord.tasks import Handle, Run, Task, TaskOptions
from accord.tasks.options import OPTION_NAMES
from accord.tasks.registry import DEFAULT_MAX_PAYLOAD, Runtime, find, register_face
from accord.tasks.schedules import define as define_schedule
from accord.worker.embedded import Embedded
from accord.worker.node import Node

P = ParamSpec("P")
R = TypeVar("R")


class App:
    """An application: a name, a store and the tasks registered with it.

    ``name`` follows accord's one rule for names (letters of any script,
    digits, ``_``, ``-``, ``.``, ``:``; see ``docs/guide.md``): it is also the
    queue of the app's tasks and the namespace of its state. ``max_payload``
    (bytes, 1 to 512 MiB) limits a task's arguments and its result.

    ``store`` is a store URL or a :class:`~accord.store.Store`; by default the
    URL comes from ``ACCORD_STORE``, else ``sqlite:///.accord/accord.db``. The
    store is opened on first use, so defining an app at module level costs
    nothing. Use the app as a context manager to close it. ``hooks`` are
    plugins told of what the app's nodes and store do (:mod:`accord.hooks`);
    add them before defining tasks that use the options they declare.

    Example::

        app = accord.App("pipeline")

        @app.task(retries=2)
        def double(x: int) -> int:
            return 2 * x

        with app:
            print(double.submit(21).result(timeout=10))
    """

    def __init__(
        self,
        name: str,
        store: str | Store | None = None,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        policy: Policy | str = "cost",
        hooks: Iterable[Hook] = (),
        inline_limit: int = DEFAULT_INLINE_LIMIT,
        objects: str | None = None,
    ) -> None:
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        module: str = caller.f_globals.get("__name__", "") if caller else ""
        self.runtime = Runtime(
            name,
            store,
            max_payload=max_payload,
            policy=policy,
            module=module,
            inline_limit=inline_limit,
            objects=objects,
        )
        for hook in hooks:
            self.runtime.hooks.add(hook)
        register_face(self, self.runtime)

    @property
    def name(self) -> str:
        return self.runtime.name

    @property
    def max_payload(self) -> int:
        """The largest task arguments or result, in bytes."""
        return self.runtime.max_payload

    @max_payload.setter
    def max_payload(self, value: int) -> None:
        self.runtime.max_payload = value

    @property
    def policy(self) -> Policy:
        """The scheduling policy of the app's nodes."""
        return self.runtime.policy

    @policy.setter
    def policy(self, value: Policy | str) -> None:
        self.runtime.policy = value

    @property
    def hooks(self) -> Hooks:
        """The app's hooks (:mod:`accord.hooks`): ``app.hooks.add(hook)``."""
        return self.runtime.hooks

    @property
    def tasks(self) -> dict[str, Task[Any, Any]]:
        """The registered tasks and workflows, by name."""
        return cast("dict[str, Task[Any, Any]]", self.runtime.tasks)

    @property
    def module(self) -> str:
        return self.runtime.module

    def __repr__(self) -> str:
        return f"<App {self.name}>"

    # -- store ------------------------------------------------------------
    @property
    def store(self) -> Store:
        """The app's store, opened on first use."""
        return self.runtime.store

    @property
    def store_url(self) -> str:
        return self.runtime.store_url

    @property
    def objects(self) -> Objects:
        """The object store: ``app.objects.put(value)``, ``.get(ref)``, ``.open(ref)``."""
        return self.runtime.objects

    def use_store(self, url: str) -> None:
        """Use the store at ``url`` (before the app's first use; see :meth:`Runtime.use_store`)."""
        self.runtime.use_store(url)

    @property
    def state(self) -> State:
        """The app's namespace of the state store (keys under ``<app name>/``)."""
        return State(self.store, f"{self.name}/", offload=self.runtime.objects)

    def mailbox(self, name: str) -> Mailbox:
        """The mailbox ``name`` (store-wide): point-to-point messages."""
        return Mailbox(self.store, name, offload=self.runtime.objects)

    def topic(self, name: str) -> Topic:
        """The topic ``name`` (store-wide): broadcast messages."""
        return Topic(self.store, name, offload=self.runtime.objects)

    def close(self) -> None:
        """Close the store; the app cannot be used afterwards."""
        self.runtime.close()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- registration -----------------------------------------------------
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        priority: int = 0,
        weight: float = 0.0,
        size: float | Callable[..., float] = 1.0,
        retries: int = 0,
        lease_losses: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        timeout: float | None = None,
        requires: Iterable[str] = (),
        resources: Mapping[str, float] | None = None,
        delay: float = 0.0,
        deadline: float | datetime.datetime | None = None,
        concurrency: int | None = None,
        rate: float | None = None,
        limit_key: str | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a function as a task (bare, or with keyword-only options).

        Options, checked here (a bad value raises :class:`ConfigError`):

        - ``priority`` (int): higher runs first. ``weight`` (>= 0) and ``size``
          (>= 0, or a function of the arguments): the cost C = w + d / v.
        - ``retries`` (>= 0): further attempts after a failure, waiting
          ``backoff * 2**(n-1)`` seconds with jitter, at most ``max_backoff``.
        - ``lease_losses`` (>= 1, default 3): a lease lost because the node
          died or hung does not use up retries; the task fails once it has
          lost this many (a task that kills every node that runs it ends).
        - ``timeout`` (> 0 seconds): the attempt is stopped (its process
          killed) and counts as failed.
        - ``requires``: capabilities a node must have; ``resources``: the
          ``cpu``/``gpu``/``memory`` slots the task needs.
        - ``delay``: seconds to wait before the task may start.
        - ``deadline``: seconds after submission (or an aware datetime) by
          which the task should finish; inside a priority band earlier
          deadlines go first, and a miss is recorded as an event.
        - ``concurrency``, ``rate``: at most this many running at once, and
          at most this many starts per second, across all nodes; shared by
          every task with the same ``limit_key`` (default: per task name).
        """
        return self._register(fn, options, workflow=False)

    @overload
    def workflow(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def workflow(
        self, fn: None = None, /, **options: Any
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def workflow(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a workflow: a task that submits tasks and returns a value
        or a handle. Start it with :meth:`start`; the run's value is the
        workflow's value (a returned handle's result, once it is ready)."""
        return self._register(fn, options, workflow=True)

    def schedule(
        self,
        cron: str | None = None,
        *,
        every: datetime.timedelta | float | None = None,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        catch_up: str = "skip",
        name: str | None = None,
        **options: Any,
    ) -> Callable[[Callable[P, R]], Task[P, R]]:
        """Run a task periodically: ``@app.schedule("*/5 * * * *")`` (cron,
        in UTC) or ``@app.schedule(every=timedelta(minutes=5))`` (counted from
        the Unix epoch), each firing a new run of the task with ``args`` and
        ``kwargs``. The function becomes a task of the app (``options`` are
        those of :meth:`task`; or decorate a task already made). Each slot
        fires once across all the app's nodes: the store decides. After
        downtime, ``catch_up="skip"`` fires once for the latest missed slot,
        ``"all"`` every missed one (the latest 100 at most). ``name`` defaults
        to the task's. See ``docs/guide.md`` ("Periodic tasks")."""

        def decorate(fn: Callable[P, R]) -> Task[P, R]:
            if isinstance(fn, Task):
                if fn.runtime is not self.runtime or options:
                    raise ConfigError(
                        f"@app.schedule over {fn!r}: stack it on a task of this app, with "
                        "the task's options on @app.task"
                    )
                task, made = fn, False
            else:
                named = {"name": name} if name is not None else {}
                task, made = self._register(fn, {**named, **options}, workflow=False), True
            try:
                define_schedule(
                    self.runtime,
                    task,
                    cron=cron,
                    every=every,
                    args=args,
                    kwargs=kwargs,
                    catch_up=catch_up,
                    name=name,
                )
            except ConfigError:
                if made:
                    self.tasks.pop(task.name, None)
                raise
            return task

        return decorate

    def _register(
        self, fn: Callable[..., Any] | None, options: dict[str, Any], *, workflow: bool
    ) -> Any:
        beyond = {name: options.pop(name) for name in sorted(set(options) - OPTION_NAMES)}
        if beyond:
            options["hooked"] = self.hooks.check_options(beyond, OPTION_NAMES)
        if "requires" in options and not isinstance(options["requires"], str):
            options["requires"] = tuple(options["requires"])

        def decorate(func: Callable[..., Any]) -> Task[Any, Any]:
            if not callable(func):
                raise ConfigError(f"@app.task decorates a function, not {func!r}")
            name = options.pop("name", None)
            if name is None:
                name = func.__qualname__
            if isinstance(name, str) and "<locals>" in name:
                raise ConfigError(
                    f"task {name} is defined inside a function; nodes find tasks by name, so "
                    "define it at module level or pass name=..."
                )
            if name in self.tasks:
                raise ConfigError(f"app {self.name!r} already has a task named {name!r}")
            task: Task[Any, Any] = Task(
                self.runtime,
                func,
                TaskOptions(name=name, queue=self.name, **options),
                workflow=workflow,
            )
            self.tasks[name] = task
            return task

        if fn is not None:
            return decorate(fn)
        return decorate

    # -- runs ---------------------------------------------------------------
    def start(self, workflow: Task[P, R], *args: P.args, **kwargs: P.kwargs) -> Run:
        """Start ``workflow`` as a new run, durable when this returns."""
        if not isinstance(workflow, Task):
            raise ConfigError(
                f"app.start() takes a function decorated with @app.workflow or @app.task, "
                f"not {workflow!r}"
            )
        if workflow.runtime is not self.runtime:
            raise ConfigError(f"{workflow!r} belongs to another app, not to {self!r}")
        return workflow.start(*args, **kwargs)

    def run(
        self,
        workflow: Task[P, R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """Start ``workflow`` and wait for its value, with a node in this
        process if no node of this app is running."""
        run = self.start(workflow, *args, **kwargs)
        embedded = self.embedded_node()
        with embedded:
            value: R = embedded.wait(run)
        return value

    def get_run(self, run_id: int) -> Run:
        self.store.run(run_id)
        return Run(self.runtime, run_id)

    def handle(self, task_id: int) -> Handle[Any]:
        info = self.store.task(task_id)
        return Handle(self.runtime, task_id, info.name)

    def prune(self, older_than: float, *, dry_run: bool = False) -> dict[str, int]:
        """Remove this app's runs that ended over ``older_than`` seconds ago, with
        their tasks, events and run state (:meth:`Store.prune`; ``accord prune``)."""
        return self.store.prune(older_than, dry_run=dry_run, app=self.name)

    # -- nodes --------------------------------------------------------------
    def node(self, **options: Any) -> Node:
        """A node that runs this app's tasks (see :class:`accord.worker.Node`)."""
        return Node(self.runtime, **options)

    def live_nodes(self, within: float = 30.0) -> int:
        """How many nodes of this app heartbeat within ``within`` seconds."""
        return Embedded.live_nodes(self.runtime, within)

    def embedded_node(self, **options: Any) -> Embedded:
        """A context that runs a node in this process unless one is alive."""
        return Embedded(self.runtime, options)

    def locator(self) -> str:
        """How another process finds this app: ``module:name`` (searched by name)."""
        return self.runtime.locator()


def locate(spec: str) -> App:
    """Find an app from ``module:attribute`` or ``module:app_name``."""
    found, runtime = find(spec)
    if isinstance(found, App):
        return found
    raise NotFoundError(f"{spec!r} names the runtime of app {runtime.name!r}, not an accord.App")


def locate_task(spec: str) -> Task[Any, Any]:
    """Find a task or workflow from ``module:function``."""
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{spec!r} must look like module:workflow")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import module {module_name!r}: {exc}; run from the directory that holds "
            "it or add it to PYTHONPATH"
        ) from exc
    found = getattr(module, attr, None)
    if isinstance(found, Task):
        return found
    if callable(found):
        raise NotFoundError(
            f"{spec!r} is a plain function, not a task or workflow: decorate it with "
            "@app.workflow (or @app.task)"
        )
    known = sorted(name for name, value in vars(module).items() if isinstance(value, Task))
    close = difflib.get_close_matches(attr, known, n=1)
    hint = (
        f"did you mean {close[0]!r}?"
        if close
        else f"it has {', '.join(known)}"
        if known
        else "it defines none (decorate functions with @app.workflow or @app.task)"
    )
    raise NotFoundError(f"no task or workflow {attr!r} in {module_name}; {hint}")
