"""SQLite's errors as accord's: one context manager, :func:`sqlite_errors`.

Every place the SQLite store calls the driver runs inside
``with sqlite_errors(path):``, which turns ``sqlite3`` errors (and, where
asked, a value the driver cannot bind) into accord's errors by
:func:`translate`, keeping the driver's error as ``__cause__``.
"""

from __future__ import annotations

import os
import sqlite3

from accord.errors import SchemaError, StorageFullError, StoreError, StoreURLError, UnstorableError
from accord.store.errormap import ErrorMap

# What a driver raises for a value it cannot bind or store (NUL is stored
# as it is; a lone surrogate cannot be encoded; an int past 64 bits does not
# fit): the value is bad, not the store, and trying again cannot help.
BAD_VALUE = (UnicodeError, OverflowError)


def translate(exc: BaseException, path: str) -> Exception:
    """Turn a driver error into accord's, keeping it as ``__cause__``.

    Bad data (a value the driver cannot encode or the database refuses:
    ``sqlite3.DataError``, ``IntegrityError``) becomes
    :class:`~accord.errors.UnstorableError`, never a :class:`StoreError` that
    a caller would retry as an outage.
    """
    text = str(exc)
    if isinstance(exc, BAD_VALUE):
        err: Exception = UnstorableError(
            f"the store {path} cannot hold a value given to it ({type(exc).__name__}: {text}); "
            "nothing was written: fix the value",
            path=path,
        )
    elif isinstance(exc, sqlite3.DataError | sqlite3.IntegrityError):
        err = UnstorableError(
            f"the store {path} refused a value ({type(exc).__name__}: {text}); nothing was "
            "written: fix the value",
            path=path,
        )
    elif "disk is full" in text or getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        err = StorageFullError(
            f"the store's disk is full ({path}); free space and retry: nothing was written",
            path=path,
        )
    elif "file is not a database" in text or "malformed" in text:
        err = SchemaError(
            f"{path} is not an accord database ({text}); give the store URL of another file",
            path=path,
        )
    elif "locked" in text or "busy" in text:
        err = StoreError(f"the store {path} stayed locked by another process: {text}", path=path)
    elif "unable to open" in text:
        if os.path.isdir(path):
            why = "it is a directory; give the path of a file in it, for example " + (
                f"sqlite:///{os.path.join(path, 'accord.db')}"
            )
        else:
            why = "check that its directory exists and is writable"
        err = StoreURLError(f"cannot open the store file {path}: {text}; {why}", path=path)
    else:
        err = StoreError(f"the store {path} failed: {text}", path=path)
    err.__cause__ = exc
    return err


class sqlite_errors(ErrorMap):
    """``with sqlite_errors(path):`` raises a driver error of the block as
    accord's (see :func:`translate`).

    With ``values``, also a value the driver could not bind (:data:`BAD_VALUE`),
    where the block binds the caller's values.
    """

    __slots__ = ("caught", "path")

    def __init__(self, path: str, *, values: bool = False) -> None:
        self.path = path
        self.caught = (sqlite3.Error, *BAD_VALUE) if values else (sqlite3.Error,)

    def translate(self, exc: BaseException) -> Exception:
        return translate(exc, self.path)
