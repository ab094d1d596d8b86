"""PostgreSQL's errors as accord's: one context manager, :class:`pg_errors`.

The store runs every attempt of a transaction or a read inside
``with pg_errors(url, what, retry_for):`` (see
:meth:`~accord.store.postgres.connections.PgConnections._retrying`), which
turns a driver error that is not retried into accord's by :func:`translate`,
keeping it as ``__cause__``. :func:`refusal` tells a connection the server
refused for good (wrong password, missing role or database) from an outage.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import psycopg
import psycopg.errors
import psycopg_pool

from accord.errors import (
    ConflictError,
    SchemaError,
    StorageFullError,
    StoreError,
    StoreUnavailableError,
    StoreURLError,
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


class Refusal(NamedTuple):
    """Why the server turned a connection away for good (see :func:`refusal`)."""

    kind: str  # "password", "role", "access" or "database"
    reason: str  # the line of the error that says so
    name: str | None  # the role or database it names, where it does


# A wrong password, a missing role or database, a user the server does not let
# in: trying again mends none of them, so they are never retried as an outage.
# Known by SQLSTATE where the error carries one; libpq reports a failed
# connection attempt without it (psycopg/psycopg#1188), so then by the server's
# message. A server that words it in another language (lc_messages) is
# retried as before.
_REFUSED_STATES = {"28000": "access", "28P01": "password", "3D000": "database", "42501": "access"}
_REFUSED_TEXTS = (
    (re.compile(r'database "(?P<name>[^"]*)" does not exist'), "database"),
    (re.compile(r'role "(?P<name>[^"]*)" does not exist'), "role"),
    # password, md5/scram, peer, ident, LDAP, RADIUS, cert, GSSAPI, SSPI
    (re.compile(r"authentication failed for user"), "password"),
    (re.compile(r"fe_sendauth: no password supplied"), "password"),
    (
        re.compile(
            r"no pg_hba\.conf entry for|pg_hba\.conf rejects connection"
            r"|is not permitted to log in|permission denied for database"
        ),
        "access",
    ),
)
# Not refusals, whatever their words: the server is starting or stopping
# (57P03), or has no connection to spare (53300): these mend themselves.


def _matched(text: str) -> Refusal | None:
    for pattern, kind in _REFUSED_TEXTS:
        found = pattern.search(text)
        if found is not None:
            start = text.rfind("\n", 0, found.start()) + 1
            end = text.find("\n", found.end())
            line = text[start : None if end < 0 else end].strip().removeprefix("- ")
            return Refusal(kind, line, found.groupdict().get("name"))
    return None


def refusal(exc: BaseException) -> Refusal | None:
    """Why ``exc`` is a connection the server refused for good, or None
    (not a connection error, or one that may mend itself)."""
    if not isinstance(exc, psycopg.Error):
        return None
    if not isinstance(exc, psycopg.OperationalError) and exc.pgconn is None:
        return None  # a statement's error (42501 on a table is no refused connection)
    text = str(exc).strip()
    state = exc.sqlstate or exc.diag.sqlstate
    if state is not None:
        kind = _REFUSED_STATES.get(state)
        if kind is None:
            return None
        # The words, where known, tell which (28000 is a missing role, a
        # pg_hba.conf rule or a role without LOGIN alike) and name it.
        found = _matched(text)
        return found or Refusal(kind, text.splitlines()[0] if text else state, None)
    found = _matched(text)
    if found is None and exc.pgconn is not None and exc.pgconn.needs_password:
        # libpq's own words, whatever the language: a password is asked, none given
        found = Refusal("password", text.splitlines()[0] if text else "no password", None)
    return found


_HINTS = {
    "password": "check the user name and password in the store URL (or in the password "
    "file, ~/.pgpass)",
    "role": "check the user name in the store URL: the server has no role {name}",
    "access": "the server does not let this user in: check the user name in the store URL, "
    "or have the role granted LOGIN and CONNECT on the database, and a pg_hba.conf entry "
    "for this host",
    "database": "check the database name in the store URL: accord does not create "
    "databases; create it (CREATE DATABASE {name}, or createdb {name}), then "
    "`accord migrate` makes accord's tables in it",
}


def refused(found: Refusal, url: str) -> StoreURLError:
    """The error for a connection to ``url`` refused for good."""
    hint = _HINTS[found.kind].format(name=found.name or "<name>")
    return StoreURLError(
        f"the store {url} refused the connection: {found.reason}; {hint}",
        url=url,
        reason=found.reason,
    )


def translate(exc: BaseException, what: str, url: str, retry_for: float) -> Exception:
    """Turn a driver error met while ``what`` into accord's."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    found = refusal(exc)
    if found is not None:
        return refused(found, url)
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
