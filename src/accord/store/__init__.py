"""Stores: where every durable fact of accord lives.

``open_store(url)`` picks the backend from the URL:

- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``: the
  embedded store, one file shared by every process on one machine. The
  file is created owner-only (0600; its directory, when accord makes it,
  0700); ``?file_mode=0640`` sets another mode, ``busy_timeout=SECONDS``
  how long to wait for another process's lock. Other parameters are refused.
- ``postgresql://user:password@host:port/database``: the shared store for
  nodes on many machines (needs ``pip install 'accord[postgres]'``).
"""

from __future__ import annotations

import os

from accord.errors import StoreNotFoundError, StoreURLError
from accord.store.base import Store
from accord.store.sqlite.store import SqliteStore
from accord.store.sqlite.url import DEFAULT_FILE_MODE, make_store_dir, parse_url

DEFAULT_URL = "sqlite:///.accord/accord.db"

__all__ = ["DEFAULT_URL", "SqliteStore", "Store", "open_store", "resolve_url"]


def resolve_url(url: str | None) -> str:
    """The store URL to use: the argument, else ``ACCORD_STORE``, else the default."""
    if url is None:
        url = os.environ.get("ACCORD_STORE") or DEFAULT_URL
    return url


def open_store(url: str | None = None, *, create: bool = True) -> Store:
    """Open the store named by ``url`` (see :func:`resolve_url`).

    ``create=False``: raise :class:`~accord.errors.StoreNotFoundError` where
    no store exists yet, instead of creating one."""
    url = resolve_url(url)
    if not isinstance(url, str) or not url.strip():
        raise StoreURLError(f"store URL {url!r} is empty; use sqlite:///path/to/file.db", url=url)
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise StoreURLError(
            f"store URL {url!r} has no scheme; use sqlite:///path/to/file.db or postgresql://host/db",
            url=url,
        )
    if scheme == "sqlite":
        path, options = parse_url(url)
        if not create and (
            not os.path.exists(path) or (os.path.isfile(path) and os.path.getsize(path) == 0)
        ):
            what = "is empty" if os.path.exists(path) else "does not exist"
            raise StoreNotFoundError(
                f"no accord store at {url}: {os.path.abspath(path)} {what}; check --store "
                "or ACCORD_STORE (accord migrate creates a store)",
                url=url,
            )
        if path == DEFAULT_URL.removeprefix("sqlite:///"):
            make_store_dir(path, options.get("file_mode", DEFAULT_FILE_MODE))
        return SqliteStore(path, **options)
    if scheme in ("postgresql", "postgres"):
        try:
            from accord.store.postgres import PgStore
        except ImportError as exc:
            raise StoreURLError(
                f"the PostgreSQL store needs psycopg ({exc}); install it with "
                "pip install 'accord[postgres]'",
                url=url,
            ) from None
        return PgStore(url, create=create)
    raise StoreURLError(
        f"store URL {url!r} has unknown scheme {scheme!r}; use sqlite:///path/to/file.db "
        "or postgresql://user:password@host:port/database",
        url=url,
    )
