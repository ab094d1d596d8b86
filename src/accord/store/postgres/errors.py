"""PostgreSQL's errors as accord's: one context manager, :class:`pg_errors`.

The store runs every attempt of a transaction or a read inside
``with pg_errors(url, what, retry_for):`` (see
:meth:`~accord.store.postgres.connections.PgConnections._retrying`), which
turns a driver error that is not retried into accord's by :func:`translate`,
keeping it as ``__cause__``.
"""

from __future__ import annotations

import psycopg
import psycopg.errors
import psycopg_pool

from accord.errors import (
    ConflictError,
    SchemaError,
    StorageFullError,
    StoreError,
    StoreUnavailableError,
    UnstorableError,
)
from accord.store.errormap import ErrorMap

_RACES = (
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    psycopg.errors.UniqueViolation,
)
_MAX_RACES = 8
# What psycopg raises, before sending anything, for a value it cannot send:
# text the connection's encoding cannot hold (a lone surrogate; a character
# missing from a LATIN1 database), an int past what it adapts.
_BAD_VALUE = (UnicodeError, OverflowError)


def translate(exc: BaseException, what: str, url: str, retry_for: float) -> Exception:
    """Turn a driver error met while ``what`` into accord's."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, psycopg.errors.DiskFull):
        return StorageFullError(
            f"the store {url} is out of disk space while {what}; free space "
            "and retry: nothing was written",
            url=url,
        )
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return ConflictError(f"{what} kept colliding with another writer: {text}")
    if isinstance(exc, (psycopg.DataError, psycopg.IntegrityError, *_BAD_VALUE)):
        # The value is bad, not the server: the same statement would fail
        # again, so it must never be retried as an outage.
        return UnstorableError(
            f"the store {url} cannot hold a value while {what} "
            f"({type(exc).__name__}: {text}); nothing was written: fix the value",
            url=url,
        )
    if isinstance(exc, psycopg.OperationalError | psycopg_pool.PoolTimeout):
        return StoreUnavailableError(
            f"cannot reach the store {url} while {what} (tried for "
            f"{retry_for:g}s): {text}; check that PostgreSQL is running and "
            "reachable from this host",
            url=url,
        )
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
        return SchemaError(
            f"the store {url} lacks accord's tables ({text}); run `accord migrate`",
            url=url,
        )
    return StoreError(f"the store {url} failed while {what}: {text}", url=url)


# What pg_errors turns into accord's errors.
_CAUGHT = (psycopg.Error, psycopg_pool.PoolTimeout, *_BAD_VALUE)


class pg_errors(ErrorMap):
    """``with pg_errors(url, what, retry_for):`` raises a driver error of the
    block (or a value it could not send) as accord's (see :func:`translate`)."""

    __slots__ = ("retry_for", "url", "what")

    caught = _CAUGHT

    def __init__(self, url: str, what: str, retry_for: float) -> None:
        self.url = url
        self.what = what
        self.retry_for = retry_for

    def translate(self, exc: BaseException) -> Exception:
        return translate(exc, self.what, self.url, self.retry_for)
