"""Periodic tasks: the rules (a cron expression or a fixed period), their
slots, and what a late firing does (the catch-up policy).

Pure time arithmetic, shared by the decorator (``@app.schedule``, which checks
a rule when it is defined) and the store (which decides, by its own clock,
which slots are due and fires them; :mod:`accord.store.sql.schedules`).

- A *slot* is a moment a schedule is meant to fire at, in Unix seconds. Cron
  expressions are evaluated in **UTC** (croniter); ``every=`` periods are
  counted from the Unix epoch, so ``every=timedelta(minutes=5)`` fires at
  :00, :05, ... of every hour, on every node alike.
- ``catch_up="skip"`` (the default): when several slots were missed (no node
  ran, or the store was down), fire once, for the latest of them, and move on.
  ``catch_up="all"``: fire every missed slot, the latest :data:`MAX_CATCH_UP`
  at most (older ones are skipped and an event says how many).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from accord.errors import ConfigError

CATCH_UP = ("skip", "all")
# At most this many missed slots are fired at once with catch_up="all".
MAX_CATCH_UP = 100
# The shortest period of an ``every=`` schedule, in seconds.
MIN_EVERY = 1.0


@dataclass(frozen=True, slots=True)
class Rule:
    """When a schedule fires: a cron expression (UTC) or a period in seconds."""

    cron: str | None = None
    every: float | None = None

    def text(self) -> str:
        """The rule for people: ``cron */5 * * * *`` or ``every 300s``."""
        if self.cron is not None:
            return f"cron {self.cron}"
        return f"every {_seconds(self.every or 0.0)}s"

    def next_after(self, t: float) -> float:
        """The first slot strictly after ``t``."""
        if self.every is not None:
            return (math.floor(t / self.every) + 1) * self.every
        from croniter import croniter

        return float(croniter(self.cron, _utc(t)).get_next(float))

    def due(self, first: float, now: float, limit: int) -> tuple[list[float], int | None]:
        """The slots from ``first`` (a slot) up to ``now``, the latest ``limit``
        at most, oldest first; and how many earlier ones were left out (None:
        some, not counted, for a cron rule)."""
        if first > now:
            return [], 0
        if self.every is not None:
            last = math.floor(now / self.every)
            start = math.ceil(first / self.every - 1e-9)
            kept = range(max(start, last - limit + 1), last + 1)
            return [k * self.every for k in kept], max(0, last - start + 1 - limit)
        from croniter import croniter

        # Backwards from the latest slot not after now (cron slots are whole seconds).
        it = croniter(self.cron, _utc(math.floor(now) + 1))
        found: list[float] = []
        while True:
            slot = float(it.get_prev(float))
            if slot < first:
                return found[::-1], 0
            if len(found) == limit:
                return found[::-1], None
            found.append(slot)


def check_rule(cron: str | None, every: float | dt.timedelta | None, what: str) -> Rule:
    """The rule of ``@app.schedule(cron=... | every=...)``, or ConfigError."""
    if (cron is None) == (every is None):
        raise ConfigError(
            f"{what}: give exactly one of cron='*/5 * * * *' or every=timedelta(...), "
            f"not {'both' if cron is not None else 'neither'}"
        )
    if cron is not None:
        if not isinstance(cron, str) or not cron.strip():
            raise ConfigError(f"{what}: cron must be a cron expression (text), not {cron!r}")
        from croniter import CroniterError, croniter

        expression = " ".join(cron.split())
        try:
            croniter(expression, _utc(0.0)).get_next(float)
        except (CroniterError, ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{what}: bad cron expression {cron!r}: {exc}") from None
        return Rule(cron=expression)
    if isinstance(every, dt.timedelta):
        seconds = every.total_seconds()
    elif isinstance(every, int | float) and not isinstance(every, bool):
        seconds = float(every)
    else:
        raise ConfigError(f"{what}: every must be a timedelta or seconds, not {every!r}")
    if not math.isfinite(seconds) or seconds < MIN_EVERY:
        raise ConfigError(
            f"{what}: every must be at least {MIN_EVERY:g} second, not {_seconds(seconds)}s"
        )
    return Rule(every=seconds)


def check_catch_up(catch_up: object, what: str) -> str:
    if catch_up not in CATCH_UP:
        raise ConfigError(f"{what}: catch_up must be 'skip' or 'all', not {catch_up!r}")
    return str(catch_up)


def slot_key(app: str, name: str, slot: float) -> str:
    """The idempotency key of a schedule's firing for ``slot``: one task per slot."""
    return f"schedule:{app}:{name}:{_seconds(slot)}"


@dataclass(frozen=True, slots=True)
class ScheduleDef:
    """A schedule as an app defines it (written to the store when a node starts)."""

    name: str
    task: str
    rule: Rule
    args: bytes
    catch_up: str = "skip"


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """A schedule as the store holds it (``accord schedules``). ``state`` is
    ``active``, ``paused`` (``accord schedules pause``) or ``orphaned`` (the
    app's nodes no longer define it: it does not fire)."""

    app: str
    name: str
    task: str
    rule: str
    catch_up: str
    next_fire_at: float
    last_fired_at: float | None
    last_slot: float | None
    last_run_id: int | None
    fired: int
    state: str
    defined_at: float


@dataclass(frozen=True, slots=True)
class Fired:
    """One firing: the schedule, its slot and the run it made."""

    name: str
    slot: float
    run_id: int


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


def _seconds(value: float) -> str:
    """Seconds as text: whole ones without a fraction, else to the millisecond."""
    return str(int(value)) if value == int(value) else f"{value:.3f}"
