"""The hooks of an app or a store, and telling them of events.

A :class:`Hooks` keeps, for each event, the hooks that override its
method, so an event nobody listens to costs one dictionary lookup. A hook
that raises is logged (with its traceback the first time, then at most once
a minute with a count) and the others are told all the same: a plugin never
stops a node or fails a commit.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from accord.errors import ConfigError
from accord.hooks.events import TaskEvent
from accord.hooks.hook import METHODS, Hook, OptionCheck

log = logging.getLogger("accord.hooks")

# After a hook's first failure is logged with its traceback, further ones
# are summed up at most this often.
QUIET_SECONDS = 60.0

Event = Any
TaskOptionsOf = Callable[[str, str], Mapping[str, Any]]


class Hooks:
    """A set of :class:`~accord.hooks.Hook` objects (``app.hooks``).

    ``reserved`` names the options a hook may not declare (the built-in task
    options); ``task_options(queue, name)`` gives a registered task's values
    of the declared ones, which task events then carry.
    """

    def __init__(
        self, *, reserved: Iterable[str] = (), task_options: TaskOptionsOf | None = None
    ) -> None:
        self._reserved = frozenset(reserved)
        # A bound method (the runtime's) is held weakly: a store that tells
        # these hooks must not keep the runtime that owns them alive.
        self._task_options: Callable[[], TaskOptionsOf | None] | None = None
        if inspect.ismethod(task_options):
            self._task_options = weakref.WeakMethod(task_options)
        elif task_options is not None:
            self._task_options = lambda: task_options
        self._hooks: tuple[Hook, ...] = ()
        self._table: dict[str, tuple[Callable[[Any], None], ...]] = {}
        self._included: tuple[Hooks, ...] = ()
        self._lock = threading.Lock()
        self._failures = 0
        self._quiet: dict[tuple[int, str], tuple[float, int]] = {}

    def __iter__(self) -> Iterator[Hook]:
        return iter(self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)

    def __repr__(self) -> str:
        return f"<Hooks {[type(h).__name__ for h in self._hooks]}>"

    @property
    def failures(self) -> int:
        """How many times a hook raised."""
        return self._failures

    def add(self, hook: Hook) -> Hook:
        """Tell ``hook`` of events from now on; returns it."""
        if not isinstance(hook, Hook):
            raise ConfigError(
                f"a hook is an instance of a subclass of accord.hooks.Hook, not {hook!r}; "
                "subclass Hook and override the methods of the events you need"
            )
        with self._lock:
            if any(h is hook for h in self._hooks):
                raise ConfigError(f"hook {hook!r} is added already")
            declared = self.declared()
            for name, check in dict(type(hook).options).items():
                where = f"option {name!r} of hook {type(hook).__name__}"
                if not isinstance(name, str) or not name.isidentifier():
                    raise ConfigError(f"{where}: an option name is a Python identifier")
                if name in self._reserved:
                    raise ConfigError(f"{where}: {name!r} is a built-in task option")
                if name in declared:
                    raise ConfigError(f"{where}: another hook of this app declares it already")
                if not callable(check):
                    raise ConfigError(f"{where}: its check must be callable, not {check!r}")
            self._hooks = (*self._hooks, hook)
            self._rebuild()
        return hook

    def remove(self, hook: Hook) -> None:
        """Tell ``hook`` of nothing more."""
        with self._lock:
            if not any(h is hook for h in self._hooks):
                raise ConfigError(f"hook {hook!r} is not added")
            self._hooks = tuple(h for h in self._hooks if h is not hook)
            self._rebuild()

    def include(self, other: Hooks) -> None:
        """Tell ``other``'s hooks of this set's events too (a store shared by
        several apps tells each app's hooks)."""
        with self._lock:
            if other is not self and all(o is not other for o in self._included):
                self._included = (*self._included, other)

    def declared(self) -> dict[str, OptionCheck]:
        """The task options the hooks declare, with their checks."""
        return {name: check for hook in self._hooks for name, check in type(hook).options.items()}

    def check_options(
        self, options: Mapping[str, Any], known: Iterable[str] = ()
    ) -> dict[str, Any]:
        """``options`` (task options beyond the ``known`` built-in ones)
        checked by the hooks that declare them; one that no hook declares is
        refused, naming every option there is."""
        declared = self.declared()
        unknown = sorted(set(options) - set(declared))
        if unknown:
            hooked = f"; declared by this app's hooks: {sorted(declared)}" if declared else ""
            raise ConfigError(
                f"unknown task option(s) {unknown}; known: {sorted(known)}{hooked} (a hook's "
                "options are known once the hook is added, before the task is defined)"
            )
        checked: dict[str, Any] = {}
        for name, value in options.items():
            try:
                checked[name] = declared[name](value)
            except (ValueError, TypeError, ConfigError) as exc:
                raise ConfigError(f"task option {name!r} (declared by a hook): {exc}") from exc
        return checked

    def wants(self, method: str) -> bool:
        """Whether some hook here (or in an included set) listens to ``method``."""
        return method in self._table or any(o.wants(method) for o in self._included)

    def emit(self, method: str, event: Event) -> None:
        """Tell every hook that listens to ``method`` of ``event``."""
        targets = self._table.get(method)
        if targets:
            lookup = self._task_options() if self._task_options is not None else None
            if lookup is not None and isinstance(event, TaskEvent):
                try:
                    options = lookup(event.queue, event.name)
                except Exception:  # a lookup must not stop the teller either
                    log.exception("could not read the options of task %s", event.name)
                    options = {}
                if options:
                    event = dataclasses.replace(event, options=options)
            for call in targets:
                try:
                    call(event)
                except Exception:
                    self._failed(call, method)
        for other in self._included:
            other.emit(method, event)

    def deliver(self, pending: Iterable[tuple[str, Event]]) -> None:
        """Tell each ``(method, event)`` in order."""
        for method, event in pending:
            self.emit(method, event)

    def _rebuild(self) -> None:
        table: dict[str, tuple[Callable[[Any], None], ...]] = {}
        for method in METHODS:
            base = getattr(Hook, method)
            calls = tuple(
                getattr(hook, method)
                for hook in self._hooks
                if getattr(type(hook), method) is not base
            )
            if calls:
                table[method] = calls
        self._table = table

    def _failed(self, call: Callable[[Any], None], method: str) -> None:
        self._failures += 1
        owner = getattr(call, "__self__", call)
        key = (id(owner), method)
        now = time.monotonic()
        count = 0
        with self._lock:
            last = self._quiet.get(key)
            if last is None:
                self._quiet[key] = (now, 0)
                first = True
            elif now - last[0] >= QUIET_SECONDS:
                self._quiet[key] = (now, 0)
                first = False
                count = last[1] + 1
            else:
                self._quiet[key] = (last[0], last[1] + 1)
                return
        if first:
            log.exception("hook %s failed in %s (it goes on being called)", owner, method)
        else:
            log.warning(
                "hook %s failed in %s %d more time(s) in the last %.0fs",
                owner,
                method,
                count,
                QUIET_SECONDS,
            )
