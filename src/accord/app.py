"""The entry object: an :class:`App` owns its configuration, its store and its tasks."""

from __future__ import annotations

import datetime
import inspect
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from accord._checks import check_name, check_payload_limit
from accord.errors import ClosedError, ConfigError, NotFoundError
from accord.handles import Handle, Run
from accord.scheduling.policy import POLICIES, Policy, policy_named
from accord.store import Store, open_store, resolve_url
from accord.store.base import NewRun
from accord.tasks import Task, TaskOptions

if TYPE_CHECKING:
    from accord.messaging import Mailbox, Topic
    from accord.state import State
    from accord.worker.node import Node

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024


class App:
    """An application: a name, a store and the tasks registered with it.

    ``name`` follows accord's one rule for names (letters of any script,
    digits, ``_``, ``-``, ``.``, ``:``; see ``docs/guide.md``): it is also the
    queue of the app's tasks and the namespace of its state. ``max_payload``
    (bytes, 1 to 512 MiB) limits a task's arguments and its result.

    ``store`` is a store URL or a :class:`~accord.store.Store`; by default the
    URL comes from ``ACCORD_STORE``, else ``sqlite:///.accord/accord.db``. The
    store is opened on first use, so defining an app at module level costs
    nothing. Use the app as a context manager to close it.

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
    ) -> None:
        # One rule for every name (accord._checks.check_name): an app name is
        # also its tasks' queue and its state's namespace.
        self.name = check_name(name, "app name")
        self._store: Store | None = store if isinstance(store, Store) else None
        self._url = None if isinstance(store, Store) else store
        if self._url is not None and not isinstance(self._url, str):
            raise ConfigError(f"store must be a URL string or a Store, not {store!r}")
        self.max_payload = check_payload_limit(max_payload)
        if isinstance(policy, str):
            policy = policy_named(policy)
        elif not isinstance(policy, Policy):
            raise ConfigError(
                f"policy must be a name ({', '.join(POLICIES)}) or an object with a key() "
                f"method, not {policy!r}"
            )
        self.policy: Policy = policy
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._closed = False
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        self.module: str = caller.f_globals.get("__name__", "") if caller else ""

    def __repr__(self) -> str:
        return f"<App {self.name}>"

    # -- store ------------------------------------------------------------
    @property
    def store(self) -> Store:
        """The app's store, opened on first use."""
        self._check_open()
        if self._store is None:
            self._store = open_store(self._url)
        return self._store

    @property
    def store_url(self) -> str:
        return self._store.url if self._store is not None else resolve_url(self._url)

    @property
    def state(self) -> State:
        """The app's namespace of the state store (keys under ``<app name>/``)."""
        from accord.state import State

        return State(self.store, f"{self.name}/")

    def mailbox(self, name: str) -> Mailbox:
        """The mailbox ``name`` (store-wide): point-to-point messages."""
        from accord.messaging import Mailbox

        return Mailbox(self.store, name)

    def topic(self, name: str) -> Topic:
        """The topic ``name`` (store-wide): broadcast messages."""
        from accord.messaging import Topic

        return Topic(self.store, name)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"app {self.name!r} is closed; create a new App to use it again")

    def close(self) -> None:
        """Close the store; the app cannot be used afterwards."""
        if self._store is not None:
            self._store.close()
        self._closed = True

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

    def _register(
        self, fn: Callable[..., Any] | None, options: dict[str, Any], *, workflow: bool
    ) -> Any:
        from accord.tasks import OPTION_NAMES

        unknown = set(options) - OPTION_NAMES
        if unknown:
            raise ConfigError(
                f"unknown task option(s) {sorted(unknown)}; known: {sorted(OPTION_NAMES)}"
            )
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
                self, func, TaskOptions(name=name, queue=self.name, **options), workflow=workflow
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
        if workflow.app is not self:
            raise ConfigError(f"{workflow!r} belongs to another app, not to {self!r}")
        self._check_open()
        new, refs = workflow._new_task(args, kwargs)
        new.deps = [h.id for h in refs]
        run_id, _ = self.store.submit([new], run=NewRun(app=self.name, name=workflow.name))
        return Run(self, run_id)

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
        return Run(self, run_id)

    def handle(self, task_id: int) -> Handle[Any]:
        info = self.store.task(task_id)
        return Handle(self, task_id, info.name)

    # -- nodes --------------------------------------------------------------
    def node(self, **options: Any) -> Node:
        """A node that runs this app's tasks (see :class:`accord.worker.Node`)."""
        from accord.worker.node import Node

        return Node(self, **options)

    def live_nodes(self, within: float = 30.0) -> int:
        now = self.store.now()
        return sum(
            1
            for n in self.store.nodes()
            if n.queue == self.name and n.state == "running" and now - n.heartbeat_at < within
        )

    def embedded_node(self, **options: Any) -> _Embedded:
        """A context that runs a node in this process unless one is alive."""
        return _Embedded(self, options)

    def locator(self) -> str:
        """How another process finds this app: ``module:`` (searched by name)."""
        module = self.module
        if module == "__main__":
            main = sys.modules.get("__main__")
            spec = getattr(main, "__spec__", None)
            if spec is not None and spec.name:
                module = spec.name
        return f"{module}:{self.name}"


class _Embedded:
    def __init__(self, app: App, options: dict[str, Any]) -> None:
        self.app = app
        self.options = options
        self.node: Node | None = None

    def __enter__(self) -> Node | None:
        if self.app.live_nodes() == 0:
            self.node = self.app.node(**self.options)
            self.node.start()
        return self.node

    def __exit__(self, *exc: Any) -> None:
        if self.node is not None:
            self.node.stop()
            self.node.join()

    def check(self) -> None:
        """Raise the error that stopped the in-process node, if one did
        (its slots cannot load the app, say): waiting on would never end."""
        if self.node is not None and self.node._error is not None:
            raise self.node._error

    def wait(self, run: Run, timeout: float | None = None) -> Any:
        """``run.wait(timeout)``, but raise the node's error if it stops on one."""
        if self.node is None:
            return run.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return run.wait(0.5 if left is None else min(0.5, left))
            except TimeoutError:
                self.check()
                if left is not None and left <= 0.5:
                    raise


def locate(spec: str) -> App:
    """Find an app from ``module:attribute`` or ``module:app_name``."""
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ConfigError(f"app {spec!r} must look like module:app")
    if module_name == "__main__" and "__mp_main__" in sys.modules:
        module = sys.modules["__mp_main__"]
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"cannot import module {module_name!r} for app {spec!r}: {exc}; run from the "
                "directory that holds it or add it to PYTHONPATH",
                module=module_name,
            ) from exc
    found = getattr(module, attr, None) if attr else None
    if isinstance(found, App):
        return found
    apps = [v for v in vars(module).values() if isinstance(v, App)]
    for candidate in apps:
        if not attr or candidate.name == attr:
            return candidate
    raise NotFoundError(
        f"module {module_name!r} has no accord.App named {attr!r}"
        + (f" (it has {', '.join(a.name for a in apps)})" if apps else ""),
        module=module_name,
    )


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
    if not isinstance(found, Task):
        raise NotFoundError(f"{spec!r} is not a task or workflow (decorate it with @app.workflow)")
    return found
