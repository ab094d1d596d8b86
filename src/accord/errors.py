"""Errors raised by accord.

Every error a caller can cause derives from :class:`AccordError` and says
what was wrong and what to do about it. The hierarchy is drawn by what the
caller will *do*::

    AccordError
    +-- ConfigError            fix the configuration or the call (also a ValueError)
    |   +-- StoreURLError          the store URL cannot be used
    |   +-- SchemaError            the file is not an accord store, or is too new
    |   +-- PayloadTooLargeError   a value or message is over the size limit
    |   +-- UnstorableError        the store refused a value as invalid for it; fix the value
    |   +-- ClosedError            the app or store was closed; make a new one
    +-- NotFoundError          the id or name does not exist (also a LookupError)
    |   +-- StoreNotFoundError     no store at that URL (a reading command creates none)
    |   +-- CompactedError         that revision's history was compacted; re-read
    |   +-- ObjectNotFound         no object with that digest in the object store asked
    +-- ConflictError          someone else won a race; re-read and decide
    |   +-- FencedError            this attempt lost its lease; stop side effects
    |   +-- LeaseExpiredError      a state lease expired or was revoked; its keys are gone
    +-- StoreError             the store failed; maybe retry
    |   +-- StoreUnavailableError  the server cannot be reached; retry later
    |   +-- StorageFullError       the disk is full; free space
    |   +-- CorruptedError         stored data failed its checksum
    |       +-- CorruptObjectError     an object's bytes do not hash to its digest
    +-- TaskError              a task did not produce a value
        +-- TaskFailed             it raised, timed out or crashed
        +-- TaskCancelled          it was cancelled (also by a failed dependency)

    Retry (Exception)          raised by a task to ask for another attempt
    WorkerShutdown (BaseException)  stops a task when its node is stopping

Errors pickle and carry structured attributes; ``code`` is stable and
``status_code`` is what an HTTP front end returns for it.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AccordError(Exception):
    """Root of accord's errors."""

    code: ClassVar[str] = "accord_error"
    status_code: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        for key, value in details.items():
            setattr(self, key, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.details))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[AccordError], message: str, details: dict[str, Any]) -> AccordError:
    return cls(message, **details)


class ConfigError(AccordError, ValueError):
    """The configuration or the arguments of a call are invalid."""

    code = "invalid"
    status_code = 422


class StoreURLError(ConfigError):
    """A store URL names an unknown scheme or an unusable location."""

    code = "bad_store_url"


class SchemaError(ConfigError):
    """The database is not an accord store, or was written by a newer accord."""

    code = "bad_schema"


class PayloadTooLargeError(ConfigError):
    """A state value or a message is over its size limit; store large data in
    the object store and pass a reference."""

    code = "payload_too_large"
    status_code = 413


class UnstorableError(ConfigError):
    """The store refused a value as invalid for it (text its encoding cannot
    hold, a number out of its range): the same value would be refused again,
    so this is never retried as an outage. Nothing was written."""

    code = "unstorable"


class ClosedError(ConfigError):
    """The app or store was closed; like a closed file, it cannot be used again."""

    code = "closed"


class NotFoundError(AccordError, LookupError):
    """A task, run, node or key does not exist."""

    code = "not_found"
    status_code = 404


class StoreNotFoundError(NotFoundError):
    """No accord store exists at the URL, and the caller asked not to create
    one (commands that only read or change what exists never create a store:
    a mistyped path would otherwise show an empty one)."""

    code = "store_not_found"


class CompactedError(NotFoundError):
    """History at a revision was compacted away (a read, watch or rollback
    asked for it). ``revision`` is what was asked, ``compacted`` the oldest
    revision still kept: re-read the current state and go on from there."""

    code = "compacted"
    status_code = 410


class ObjectNotFound(NotFoundError):
    """No object with this digest is in the object store that was asked."""

    code = "object_not_found"


class ConflictError(AccordError):
    """A write lost a race or its expectation did not hold."""

    code = "conflict"
    status_code = 409


class FencedError(ConflictError):
    """A write was made for a task attempt that no longer holds its lease."""

    code = "fenced"


class LeaseExpiredError(ConflictError):
    """A state-store lease expired or was revoked; the keys tied to it are gone."""

    code = "lease_expired"


class StoreError(AccordError):
    """The store could not complete an operation."""

    code = "store_error"
    status_code = 503


class StoreUnavailableError(StoreError):
    """The store could not be reached (server down, network cut).

    ``outcome_unknown`` is true when the connection failed while a commit was
    in flight: the change may or may not have been recorded.
    """

    code = "store_unavailable"


class StorageFullError(StoreError):
    """The store's disk is full."""

    code = "storage_full"
    status_code = 507


class CorruptedError(StoreError):
    """Stored data does not match its checksum."""

    code = "corrupted"
    status_code = 500


class CorruptObjectError(CorruptedError):
    """An object's bytes do not hash to its digest (or are cut short): it is
    never returned; ``accord objects verify`` lists every such object."""

    code = "corrupt_object"


class TaskError(AccordError):
    """A task did not produce a value."""

    code = "task_error"


class TaskFailed(TaskError):
    """A task raised, timed out or crashed, on its last allowed attempt.

    ``error_type`` is the name of the exception the task raised and
    ``traceback`` the remote traceback, when there was one.
    """

    code = "task_failed"


class TaskCancelled(TaskError):
    """A task was cancelled, directly or because a dependency failed."""

    code = "task_cancelled"


class Retry(Exception):
    """Raise inside a task to ask for another attempt after ``delay`` seconds.

    The attempt still counts towards the task's ``retries``.
    """

    def __init__(self, reason: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_retry, (self.reason, self.delay))


def _rebuild_retry(reason: str, delay: float | None) -> Retry:
    return Retry(reason, delay=delay)


class WorkerShutdown(BaseException):
    """Raised in a task's thread when its node stops; user code must not swallow it."""
