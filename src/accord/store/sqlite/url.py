"""The ``sqlite://`` URL of the embedded store, and the directory of its file.

:func:`parse_url` splits a URL into the file path and the store's options
(``file_mode``, ``busy_timeout``; others are refused); :func:`make_store_dir`
creates the file's directory, private by default.
"""

from __future__ import annotations

import math
import os
from typing import Any

from accord.errors import StoreURLError

DEFAULT_FILE_MODE = 0o600
DEFAULT_BUSY_TIMEOUT = 30.0
URL_PARAMETERS = ("file_mode", "busy_timeout")
URL_SYNTAX = (
    "sqlite:///relative/path.db or sqlite:////absolute/path.db, optionally followed by "
    "?file_mode=0640 and/or &busy_timeout=SECONDS"
)


def parse_url(url: str) -> tuple[str, dict[str, Any]]:
    """The file path and the store options of an ``sqlite://`` URL.

    The path is taken as written (no %-decoding), up to the first ``?``;
    what follows are parameters, each known or refused (a parameter left in
    the path would silently name another file).
    """
    rest = url.removeprefix("sqlite://")
    path, _, query = rest.partition("?")
    if not path.startswith("/") or path == "/":
        raise StoreURLError(f"store URL {url!r} has no file path; use {URL_SYNTAX}", url=url)
    path = path[1:]
    if path in ("", ":memory:"):
        raise StoreURLError(
            f"store URL {url!r}: an in-memory database cannot be shared between "
            "processes; give a file path",
            url=url,
        )
    options: dict[str, Any] = {}
    for item in query.split("&") if query else []:
        key, eq, value = item.partition("=")
        if key not in URL_PARAMETERS:
            hint = ""
            if key in ("mode", "cache", "immutable", "vfs", "nolock", "psow"):
                hint = " (SQLite's own URI options are not supported: accord needs to write)"
            raise StoreURLError(
                f"store URL {url!r}: unknown parameter {key!r}{hint}; the parameters are "
                f"{', '.join(URL_PARAMETERS)} ({URL_SYNTAX})",
                url=url,
            )
        if not eq or key in options:
            raise StoreURLError(
                f"store URL {url!r}: parameter {key!r} needs one value, as in {key}=...",
                url=url,
            )
        options[key] = _url_value(url, key, value)
    return path, options


def _url_value(url: str, key: str, value: str) -> Any:
    if key == "file_mode":
        digits = value.removeprefix("0o")
        if not 3 <= len(digits) <= 4 or any(c not in "01234567" for c in digits):
            raise StoreURLError(
                f"store URL {url!r}: file_mode {value!r} is not an octal mode; use three or four "
                "octal digits, for example file_mode=0600 (owner only) or 0640 (group reads)",
                url=url,
            )
        mode = int(digits, 8)
        if mode & ~0o777 or mode & 0o600 != 0o600:
            raise StoreURLError(
                f"store URL {url!r}: file_mode {value!r} must let the owner read and write "
                "(0600 at least) and hold permission bits alone (at most 0777)",
                url=url,
            )
        return mode
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not math.isfinite(seconds) or seconds < 0:
        raise StoreURLError(
            f"store URL {url!r}: busy_timeout {value!r} is not a number of seconds (>= 0)",
            url=url,
        )
    return seconds


def dir_mode(file_mode: int) -> int:
    """The mode of a directory made for store files of ``file_mode``: who may
    read the files may list the directory."""
    return file_mode | 0o100 | ((file_mode & 0o044) >> 2)


def make_store_dir(path: str, file_mode: int = DEFAULT_FILE_MODE) -> None:
    """Create the directory of the store file ``path`` (0700 for the default
    file mode) if it does not exist; an existing directory is left as it is."""
    parent = os.path.dirname(path) or "."
    if os.path.isdir(parent):
        return
    mode = dir_mode(file_mode)
    os.makedirs(parent, mode=mode, exist_ok=True)
    os.chmod(parent, mode)  # the umask may have taken bits away
