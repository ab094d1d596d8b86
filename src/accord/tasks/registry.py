"""The runtime of an app: what the layers below the :class:`~accord.App` need of it.

Tasks, handles, a running attempt's context and the node hold a
:class:`Runtime`, never the ``App``: its name (also the queue of its tasks and
the namespace of its state), its store (opened on first use), the payload
limit, the scheduling policy, the table of registered tasks and how another
process finds it (:meth:`Runtime.locator`). The ``App`` is the user's face of
one runtime; it adds registration, runs, state and messaging on top.
"""

from __future__ import annotations

import importlib
import sys
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeAlias

from accord._checks import check_name, check_payload_limit
from accord.data import DEFAULT_INLINE_LIMIT, Objects
from accord.errors import ClosedError, ConfigError, NotFoundError
from accord.hooks import Hooks
from accord.scheduling.policy import POLICIES, Policy, policy_named
from accord.store import Store, open_store, resolve_url
from accord.tasks.options import OPTION_NAMES, TaskOptions

DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024


class Registered(Protocol):
    """What the layers below need of a registered task: its name, function
    and options."""

    @property
    def name(self) -> str: ...

    @property
    def fn(self) -> Callable[..., Any]: ...

    @property
    def options(self) -> TaskOptions: ...


class Runtime:
    """One app's name, store, limits, policy, tasks and hooks (see the module docstring)."""

    def __init__(
        self,
        name: str,
        store: str | Store | None = None,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        policy: Policy | str = "cost",
        module: str = "",
        inline_limit: int = DEFAULT_INLINE_LIMIT,
        objects: str | None = None,
    ) -> None:
        # One rule for every name (accord._checks.check_name): an app name is
        # also its tasks' queue and its state's namespace.
        self.name = check_name(name, "app name")
        self._store: Store | None = store if isinstance(store, Store) else None
        self._url = None if isinstance(store, Store) else store
        if self._url is not None and not isinstance(self._url, str):
            raise ConfigError(f"store must be a URL string or a Store, not {store!r}")
        self.max_payload = max_payload
        self.inline_limit = check_payload_limit(inline_limit, "inline_limit")
        self._objects_url = objects
        self._objects: Objects | None = None
        self.policy = policy  # a name is looked up
        self.tasks: dict[str, Registered] = {}
        # Plugins told of what this app's node and store do (accord.hooks);
        # the store tells them once it is open.
        self.hooks = Hooks(reserved=OPTION_NAMES, task_options=self._hooked_options)
        if self._store is not None:
            self._store.hooks.include(self.hooks)
        self.module = module
        self.closed = False

    def __repr__(self) -> str:
        return f"<Runtime {self.name}>"

    @property
    def max_payload(self) -> int:
        """The largest task arguments or result, in bytes (1 to 512 MiB)."""
        return self._max_payload

    @max_payload.setter
    def max_payload(self, value: int) -> None:
        self._max_payload = check_payload_limit(value)

    @property
    def policy(self) -> Policy:
        """The scheduling policy the app's nodes claim by."""
        return self._policy

    @policy.setter
    def policy(self, value: Policy | str) -> None:
        if isinstance(value, str):
            value = policy_named(value)
        elif not isinstance(value, Policy):
            raise ConfigError(
                f"policy must be a name ({', '.join(POLICIES)}) or an object with a key() "
                f"method, not {value!r}"
            )
        self._policy = value

    @property
    def store(self) -> Store:
        """The store, opened on first use."""
        self.check_open()
        if self._store is None:
            self._store = open_store(self._url)
            self._store.hooks.include(self.hooks)
        return self._store

    @property
    def objects(self) -> Objects:
        """The object store (beside the store unless ``ACCORD_OBJECTS`` names
        another place), opened on first use."""
        if self._objects is None or self._objects.store is not self.store:
            store = self.store
            self._objects = Objects(store, self._objects_url, inline_limit=self.inline_limit)
        return self._objects

    @property
    def store_url(self) -> str:
        return self._store.url if self._store is not None else resolve_url(self._url)

    @property
    def store_opened(self) -> bool:
        return self._store is not None

    def use_store(self, url: str) -> None:
        """Use the store at ``url`` from now on (as ``--store`` asks).

        Before the store is opened this only changes the URL; once it is
        open, a store at another URL is refused (its tasks, handles and nodes
        already hold the open one)."""
        if not isinstance(url, str) or not url:
            raise ConfigError(f"a store URL is a non-empty string, not {url!r}")
        if self._store is None:
            self._url = url
        elif self._store.url != resolve_url(url):
            raise ConfigError(
                f"app {self.name!r} already uses the store {self._store.url}; choose the store "
                "before the app is first used"
            )

    def reopen(self, url: str | None = None) -> None:
        """Close the store if it is open; open it again (at ``url`` if given)
        on next use, also after :meth:`close`: a module-level app that serves
        one test's store, then the next's."""
        if self._store is not None:
            self._store.close()
        self._store = None
        if url is not None:
            self._url = url
        self.closed = False

    def _hooked_options(self, queue: str, name: str) -> Mapping[str, Any]:
        """The hook-declared options of this app's task ``name``."""
        task = self.tasks.get(name) if queue == self.name else None
        return {} if task is None else task.options.hooked

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError(f"app {self.name!r} is closed; create a new App to use it again")

    def close(self) -> None:
        """Close the store; the runtime cannot be used afterwards."""
        if self._store is not None:
            self._store.close()
        self.closed = True

    def locator(self) -> str:
        """How another process finds this app: ``module:name`` (searched by name)."""
        module = self.module
        if module == "__main__":
            main = sys.modules.get("__main__")
            spec = getattr(main, "__spec__", None)
            if spec is not None and spec.name:
                module = spec.name
        return f"{module}:{self.name}"


class HasRuntime(Protocol):
    """What an ``App`` is to the layers below it: the face of a runtime."""

    @property
    def runtime(self) -> Runtime: ...


AppLike: TypeAlias = "Runtime | HasRuntime"
"""An ``App`` or its runtime: what ``Node``, ``Handle`` and ``Run`` take."""


def as_runtime(value: AppLike) -> Runtime:
    """``value`` if it is a runtime, else the runtime of the app it is."""
    runtime = runtime_of(value)
    if runtime is None:
        raise ConfigError(f"expected an accord.App, not {value!r}")
    return runtime


# The objects that are the face of a runtime (each App, registered as it is
# made): how a Node, Handle or Run given an App finds its runtime, and a slot
# process finds an app by name in its module.
_faces: weakref.WeakKeyDictionary[object, Runtime] = weakref.WeakKeyDictionary()


def register_face(face: object, runtime: Runtime) -> None:
    """Record ``face`` (an ``App``) as what users hold of ``runtime``."""
    _faces[face] = runtime


def runtime_of(value: object) -> Runtime | None:
    """The runtime ``value`` is, or is the face of (an ``App``), else None."""
    if isinstance(value, Runtime):
        return value
    try:
        return _faces.get(value)
    except TypeError:  # not hashable or not weakly referable: not an app
        return None


def find(spec: str) -> tuple[Any, Runtime]:
    """The object named by ``module:attribute`` or ``module:app_name`` that is
    an app's runtime or its face (an ``App``), with its runtime."""
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
    runtime = runtime_of(found)
    if runtime is not None:
        return found, runtime
    apps = [(v, r) for v in vars(module).values() if (r := runtime_of(v)) is not None]
    for candidate, runtime in apps:
        if not attr or runtime.name == attr:
            return candidate, runtime
    raise NotFoundError(
        f"module {module_name!r} has no accord.App named {attr!r}"
        + (f" (it has {', '.join(r.name for _, r in apps)})" if apps else ""),
        module=module_name,
    )
