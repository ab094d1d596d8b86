"""Task options: what ``@app.task(...)`` takes, each checked when it is given."""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from accord._checks import check_name, check_text
from accord.errors import ConfigError
from accord.scheduling.policy import RESOURCE_KINDS
from accord.store.records import LEASE_LOSSES

MAX_NAME_BYTES = 256
_MAX_INT = 2**63 - 1


def number(name: str, value: Any, *, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, not {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, not {value!r}")
    if value < minimum or (strict and value == minimum):
        bound = "greater than" if strict else "at least"
        raise ConfigError(f"{name} must be {bound} {minimum}, not {value!r}")
    return float(value)


def integer(name: str, value: Any, *, minimum: int | None = None) -> int:
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
    lease_losses: int = LEASE_LOSSES
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
    # Options the app's hooks declare (accord.hooks.Hook.options), checked by them.
    hooked: Mapping[str, Any] = field(default_factory=dict)

    def validated(self) -> TaskOptions:
        check_name(self.name, "task name")
        check_name(self.queue, "queue")
        integer("priority", self.priority)
        number("weight", self.weight)
        if not callable(self.size):
            number("size", self.size)
        integer("retries", self.retries, minimum=0)
        integer("lease_losses", self.lease_losses, minimum=1)
        number("backoff", self.backoff, strict=True)
        number("max_backoff", self.max_backoff)
        if self.max_backoff < self.backoff:
            raise ConfigError(
                f"max_backoff ({self.max_backoff}) must be at least backoff ({self.backoff})"
            )
        if self.timeout is not None:
            number("timeout", self.timeout, strict=True)
        number("delay", self.delay)
        if isinstance(self.deadline, datetime.datetime):
            if self.deadline.tzinfo is None:
                raise ConfigError(
                    "deadline must be timezone-aware (for example datetime.now(timezone.utc) + "
                    "timedelta(minutes=5)), or a number of seconds after submission"
                )
        elif self.deadline is not None:
            number("deadline (seconds after submission)", self.deadline, strict=True)
        if self.concurrency is not None:
            integer("concurrency", self.concurrency, minimum=1)
        if self.rate is not None:
            number("rate (tasks per second)", self.rate, strict=True)
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
                number(f"resources[{kind!r}]", amount)
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


OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(TaskOptions)) - {"queue", "hooked"}
