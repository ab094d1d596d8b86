"""Periodic tasks of an app: ``@app.schedule(cron=...)`` or ``every=...``.

:func:`define` checks a schedule where it is declared (a bad rule, policy or
arguments raise :class:`~accord.errors.ConfigError` at once) and records it
with the app's runtime. A node of the app writes the definitions to the store
when it starts (:class:`Firing`) and then asks the store, at most once a
second, to fire what is due: the store decides, by its clock, so each slot
fires once across all nodes (:mod:`accord.store.sql.schedules`). The rules,
the slots (cron in UTC) and the catch-up policies are in
:mod:`accord.scheduling.periodic`.
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from accord import serde
from accord._checks import check_name
from accord.errors import AccordError, ConfigError
from accord.scheduling.periodic import (
    Rule,
    ScheduleDef,
    check_catch_up,
    check_rule,
)
from accord.store.records import NewTask
from accord.tasks.registry import Runtime
from accord.tasks.task import Task

log = logging.getLogger("accord.schedules")

# A node asks the store for due schedules at most this often (seconds).
FIRE_INTERVAL = 1.0

_SCHEDULES: WeakKeyDictionary[Runtime, dict[str, Schedule]] = WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class Schedule:
    """A periodic task of an app: which task, when, with what arguments."""

    name: str
    task: Task[Any, Any]
    rule: Rule
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    catch_up: str
    data: bytes  # the serialised arguments every firing submits

    def definition(self) -> ScheduleDef:
        return ScheduleDef(self.name, self.task.name, self.rule, self.data, self.catch_up)


def define(
    runtime: Runtime,
    task: Task[Any, Any],
    *,
    cron: str | None,
    every: dt.timedelta | float | None,
    args: tuple[Any, ...] | list[Any],
    kwargs: Mapping[str, Any] | None,
    catch_up: str,
    name: str | None,
) -> Schedule:
    """Check and record a schedule of ``task`` (``@app.schedule``)."""
    label = name if name is not None else task.name
    what = f"schedule {label!r} of app {runtime.name!r}"
    rule = check_rule(cron, every, what)
    policy = check_catch_up(catch_up, what)
    label = check_name(label, "schedule name")
    if not isinstance(args, tuple | list):
        raise ConfigError(f"{what}: args must be a tuple of positional arguments, not {args!r}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ConfigError(f"{what}: kwargs must be a dict of keyword arguments, not {kwargs!r}")
    call_args, call_kwargs = tuple(args), dict(kwargs or {})
    try:
        inspect.signature(task.fn).bind(*call_args, **call_kwargs)
    except TypeError as exc:
        raise ConfigError(f"{what}: {task.name}() cannot take these arguments: {exc}") from None
    except ValueError:
        pass  # no signature to check against (some builtins)
    try:
        data, _ = serde.dumps_args(
            call_args, call_kwargs, is_ref=_never, ref_key=id, task_name=task.name
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"{what}: its arguments cannot be serialised: {exc}") from None
    if len(data) > runtime.max_payload:
        raise ConfigError(
            f"{what}: its arguments take {len(data)} bytes, over the app's max_payload "
            f"({runtime.max_payload})"
        )
    known = _SCHEDULES.setdefault(runtime, {})
    if label in known:
        raise ConfigError(
            f"app {runtime.name!r} already has a schedule named {label!r}; pass name=..."
        )
    schedule = Schedule(label, task, rule, call_args, call_kwargs, policy, data)
    known[label] = schedule
    return schedule


def schedules_of(runtime: Runtime) -> dict[str, Schedule]:
    """The schedules an app defines, by name."""
    return dict(_SCHEDULES.get(runtime, {}))


class Firing:
    """A node's side of its app's schedules: writes the definitions when the
    node starts, then asks the store to fire due ones (:meth:`tick`)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        defined = schedules_of(runtime)
        runtime.store.define_schedules(runtime.name, [s.definition() for s in defined.values()])
        # What each firing submits: the task with its options (the store puts
        # in the definition's arguments and the slot's idempotency key).
        self.templates: dict[str, NewTask] = {
            s.name: s.task._new_task(s.args, s.kwargs)[0] for s in defined.values()
        }
        self._next = 0.0

    def tick(self, now: float) -> bool:
        """Fire due schedules if a second passed since the last look
        (``now``: monotonic seconds); True if some fired (there is new work)."""
        if not self.templates or now < self._next:
            return False
        # A fixed cadence, not one that drifts by the loop's lateness each time.
        self._next += FIRE_INTERVAL
        if self._next <= now:
            self._next = now + FIRE_INTERVAL
        try:
            fired = self.runtime.store.fire_schedules(self.runtime.name, self.templates)
        except AccordError as exc:
            log.warning("could not fire schedules: %s", exc)
            return False
        for f in fired:
            log.info("schedule %s fired run %d", f.name, f.run_id)
        return bool(fired)


def _never(obj: object) -> bool:
    return False
