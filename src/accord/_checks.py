"""Checks of the names and strings given to accord, shared by every layer.

Both backends must take the same decision on the same input: PostgreSQL's
``text`` cannot hold NUL and SQLite's can, and neither driver can encode a
lone surrogate (what ``os.listdir`` returns for an undecodable file name).
So text is checked here, before anything is written, and refused with a
:class:`~accord.errors.ConfigError` that says what was wrong.

Names (of apps, tasks, queues, limit keys, mailboxes and topics) follow one
rule, :func:`check_name`. Free text that accord records on a task's behalf
(error messages, tracebacks) is never refused: :func:`clean_text` makes it
storable instead, so that recording an attempt cannot fail on its text.
"""

from __future__ import annotations

import math
from typing import Any

from accord.errors import ConfigError

MAX_NAME_CHARS = 200
NAME_PUNCTUATION = "_-.:"
NAME_RULE = (
    f"a name is 1 to {MAX_NAME_CHARS} letters (of any script), digits, '_', '-', '.' or ':', "
    "starting with a letter, a digit or '_' (for example 'my-app', 'billing.v2')"
)
# Past this, a payload limit would overrun what either store holds in one
# value (PostgreSQL: 1 GB a field; SQLite: 10^9 bytes by default).
MAX_PAYLOAD_LIMIT = 512 * 1024 * 1024
MAX_KEY_BYTES = 1024
"""Longest state key or messaging name, namespace included, in UTF-8 bytes."""


def check_text(text: str, what: str, limit: int) -> None:
    """Refuse ``text`` if no store can hold it: a NUL, a lone surrogate, or
    more than ``limit`` UTF-8 bytes (``ConfigError`` with ``argument`` = ``what``)."""
    if "\x00" in text:
        # PostgreSQL's text cannot hold NUL and SQLite's can: refused on both,
        # so that a name works on one backend exactly when it works on the other.
        raise ConfigError(
            f"{what} {text[:80]!r} contains a NUL character ('\\x00'), which no accord store "
            "accepts in names; remove it, or encode the name (hex, base64) first",
            argument=what,
        )
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ConfigError(
            f"{what} {text[:80]!r} is not valid text (it holds a lone surrogate, as "
            "os.listdir returns for undecodable file names); give a string that encodes "
            "as UTF-8 (os.fsencode(name).decode('utf-8', 'replace'), say)",
            argument=what,
        ) from None
    if size > limit:
        raise ConfigError(
            f"{what} {text[:40]!r}... is {size} bytes long, over the limit of {limit} "
            "(namespace included)",
            argument=what,
        )


def check_string(value: object, what: str, *, limit: int, empty: bool = False) -> str:
    """A string that every store holds as it is (see :func:`check_text`)."""
    if not isinstance(value, str):
        raise ConfigError(
            f"{what} must be a string, not {type(value).__name__} ({value!r})", argument=what
        )
    if not value and not empty:
        raise ConfigError(f"{what} is empty; give a non-empty string", argument=what)
    check_text(value, what, limit)
    return value


def _name_char(ch: str) -> bool:
    # Python's identifier characters (letters of any script, digits, combining
    # marks, '_'), plus the punctuation people put in names.
    return ch in NAME_PUNCTUATION or ("_" + ch).isidentifier()


def check_name(name: object, what: str) -> str:
    """Check a name by the one rule for apps, tasks, queues, limit keys,
    mailboxes and topics (:data:`NAME_RULE`); return it.

    Refused names raise :class:`~accord.errors.ConfigError` naming the
    offending character, the same on every backend.
    """
    if not isinstance(name, str):
        raise ConfigError(
            f"{what} {name!r} is invalid: it must be a string, not {type(name).__name__}; "
            f"{NAME_RULE}",
            argument=what,
        )
    if not name:
        raise ConfigError(f"{what} '' is invalid: it is empty; {NAME_RULE}", argument=what)
    check_text(name, what, 4 * MAX_NAME_CHARS)
    if len(name) > MAX_NAME_CHARS:
        raise ConfigError(
            f"{what} {name[:40]!r}... is invalid: it is {len(name)} characters long, over the "
            f"limit of {MAX_NAME_CHARS}; {NAME_RULE}",
            argument=what,
        )
    for position, ch in enumerate(name):
        if not _name_char(ch):
            shown = "a space" if ch == " " else f"{ch!r} (U+{ord(ch):04X})"
            raise ConfigError(
                f"{what} {name!r} is invalid: it contains {shown} at position {position}; "
                f"{NAME_RULE}",
                argument=what,
            )
    first = name[0]
    if not (first == "_" or first.isidentifier() or first.isdecimal()):
        raise ConfigError(
            f"{what} {name!r} is invalid: it starts with {first!r}; {NAME_RULE}",
            argument=what,
        )
    return name


def check_payload_limit(value: object, what: str = "max_payload") -> int:
    """A size limit in bytes: an integer from 1 to :data:`MAX_PAYLOAD_LIMIT`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"{what} must be a whole number of bytes, not {type(value).__name__} {value!r}",
            argument=what,
        )
    if not 1 <= value <= MAX_PAYLOAD_LIMIT:
        raise ConfigError(
            f"{what} must be from 1 to {MAX_PAYLOAD_LIMIT} bytes (512 MiB), not {value!r}; "
            "put larger data in the object store and pass a reference",
            argument=what,
        )
    return value


# -- text recorded on a task's behalf -------------------------------------------

MAX_ERROR_CHARS = 16 * 1024
MAX_TRACEBACK_CHARS = 64 * 1024


def clean_text(text: str, limit: int) -> str:
    """``text`` made storable on every backend, keeping it readable.

    NUL becomes the four characters ``\\x00`` and a lone surrogate its
    ``\\udcXX`` escape (as ``ascii()`` would show them); text over ``limit``
    characters keeps its start and its end, with a note of what was cut.
    """
    if not text.isascii() or "\x00" in text:
        if "\x00" in text:
            text = text.replace("\x00", "\\x00")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        keep = max(limit - 80, 0)
        head, tail = keep * 3 // 4, keep - keep * 3 // 4
        cut = len(text) - head - tail
        text = f"{text[:head]}\n... [{cut} characters cut] ...\n{text[len(text) - tail :]}"
    return text


def ascii_text(text: str, limit: int) -> str:
    """``text`` in ASCII alone (escapes for the rest): what a store whose
    encoding lacks some characters still holds."""
    return clean_text(text, limit).encode("ascii", "backslashreplace").decode("ascii")


def describe_exception(exc: BaseException) -> str:
    """The message of ``exc``, whatever its ``__str__`` and ``__repr__`` do."""
    try:
        text = str(exc)
        if not isinstance(text, str):  # a str subclass whose __str__ misbehaves
            raise TypeError("__str__ returned a non-string")
        if text:
            return text
    except Exception as inner:
        try:
            shown = repr(exc)
        except Exception:
            shown = f"<{type_name(exc)} object>"
        return f"{shown} (its str() raised {type_name(inner)}: {_plain(inner)})"
    try:
        return repr(exc)
    except Exception:
        return f"<{type_name(exc)} object>"


def _plain(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "?"


def type_name(value: object) -> str:
    name: Any = getattr(type(value), "__name__", None)
    return name if isinstance(name, str) else "object"


def seconds_or_none(value: object) -> float | None:
    """``value`` if it is a finite, non-negative number of seconds, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return float(value)


# -- keys, counts and durations (the state store and messaging) ------------
def check_key(name: object, what: str, *, limit: int = MAX_KEY_BYTES) -> str:
    """Validate a key, prefix or name: a non-empty string of valid text, no NUL,
    at most ``limit`` UTF-8 bytes. The same names are refused on every backend
    (:class:`~accord.ConfigError` with ``argument`` = ``what``)."""
    if not isinstance(name, str):
        raise ConfigError(
            f"{what} must be a string, not {type(name).__name__} ({name!r})", argument=what
        )
    if not name:
        raise ConfigError(f"{what} is empty; give a non-empty string", argument=what)
    check_text(name, what, limit)
    return name


def check_int(value: object, what: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an integer, not {value!r}")
    if value < minimum:
        raise ConfigError(f"{what} must be at least {minimum}, not {value}")
    if value >= 1 << 62:
        raise ConfigError(f"{what} {value} is too large")
    return value


def check_seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{what} must be a number of seconds, not {value!r}")
    seconds = float(value)
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"{what} must be a positive, finite number of seconds, not {value!r}")
    return seconds


def check_delay(value: object, what: str) -> float:
    """A finite number of seconds >= 0 (never NaN: the backends store it differently)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value < float("inf")
    ):
        raise ConfigError(f"{what} must be a finite number of seconds >= 0, not {value!r}")
    return float(value)


def check_timeout(value: object, what: str = "timeout") -> float | None:
    """How long to wait: ``None`` or ``inf`` (no limit), else seconds >= 0; never NaN."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{what} must be a number of seconds >= 0 or None, not {value!r}")
    seconds = float(value)
    if not seconds >= 0:
        raise ConfigError(f"{what} must be a number of seconds >= 0 or None, not {value!r}")
    return None if seconds == float("inf") else seconds
