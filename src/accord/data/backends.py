"""Where the bytes of objects live: a directory, the database, or an fsspec URL.

Every backend writes an object's bytes under a temporary name, makes them
durable, and only then publishes them under their digest, so a reader never
sees part of an object under its digest. A directory publishes, then
records the catalogue row, under a lock the collector excludes; a remote
store records the row first and publishes after (no lock spans its hosts);
the database does both in one transaction.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from accord.errors import (
    ConfigError,
    ObjectNotFound,
    StorageFullError,
    StoreError,
)
from accord.store.sql.objects import CHUNK


def os_error(exc: OSError, where: str) -> Exception:
    """A clear accord error for a failed write or read at ``where``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(
            f"no space left for the object store at {where}; free space or point "
            "ACCORD_OBJECTS at a larger volume (nothing was half-written)",
            path=where,
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return ConfigError(
            f"the object store at {where} cannot be written ({exc.strerror}); make it "
            "writable or point ACCORD_OBJECTS at a writable volume",
            path=where,
        )
    return StoreError(f"the object store at {where} failed: {exc}", path=where)


class Backend(abc.ABC):
    """The bytes of objects, by digest."""

    location: str  # what ``accord objects`` prints as where objects live

    @abc.abstractmethod
    def begin(self) -> Upload:
        """A new object being written under a temporary name."""

    @abc.abstractmethod
    def has(self, digest: str) -> bool: ...

    @abc.abstractmethod
    def open(self, digest: str) -> IO[bytes]:
        """The stored bytes, unverified; :class:`ObjectNotFound` if absent."""

    # Whether a put publishes its bytes before it records the catalogue row
    # (under :meth:`publishing`, which the collector's :meth:`collect`
    # excludes), or records the row first and publishes after.
    publish_first = False

    def publishing(self) -> contextlib.AbstractContextManager[object]:
        """Held by a put from publishing its bytes to recording their row."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    def collect(self, digest: str, recorded: Callable[[], bool]) -> None:
        """Remove the bytes of ``digest``, whose row went, unless ``recorded()``
        says a put recorded the object again meanwhile."""

    @abc.abstractmethod
    def set_aside(self, digest: str) -> None:
        """Move the damaged bytes of ``digest`` out of the way (kept for a look,
        and so that a put of the same bytes stores them anew)."""

    @abc.abstractmethod
    def set_aside_at(self, digest: str) -> str | None:
        """Where damaged bytes of ``digest`` were set aside, if they were."""

    def probe(self) -> None:
        """Raise the error a write here would meet (before a collection starts)."""
        return None

    def clear_parts(self, older_than: float, recorded: Callable[[str], bool]) -> int:
        """Remove what puts and collectors that died left behind; the count."""
        return 0

    @abc.abstractmethod
    def digests(self) -> Iterator[str]:
        """Every digest whose bytes are here."""

    def path(self, digest: str) -> str | None:
        """A local file that holds the bytes (for memory maps), if there is one."""
        return None

    def missing(self, digest: str) -> ObjectNotFound:
        return ObjectNotFound(
            f"object {digest} is not in the object store at {self.location}; was it put "
            "through another store (ACCORD_OBJECTS), or collected by `accord objects gc` "
            "while nothing referenced it?",
            digest=digest,
            location=self.location,
        )


class Upload(abc.ABC):
    """Bytes being written; ``publish`` makes them the object ``digest``."""

    @abc.abstractmethod
    def write(self, data: bytes | memoryview) -> None: ...

    @abc.abstractmethod
    def finish(self) -> None:
        """Make what was written durable (not yet visible under a digest)."""

    @abc.abstractmethod
    def publish(self, digest: str) -> None: ...

    @abc.abstractmethod
    def abort(self) -> None: ...


@contextlib.contextmanager
def aborting(upload: Upload) -> Iterator[None]:
    """Throw ``upload`` away if what is done with it fails."""
    try:
        yield
    except BaseException:
        upload.abort()
        raise


def part_name() -> str:
    """A temporary file's name that says who writes it (pid and host)."""
    return f"{os.getpid()}-{uuid.uuid4().hex}-{socket.gethostname()}.part"


def abandoned(part: Path, older_than: float) -> bool:
    """Whether the temporary file ``part`` (named by :func:`part_name`) was
    left by a writer that is gone: one of this host that died, or another
    host's (or one named otherwise) not written to since ``older_than``."""
    pid, _, rest = part.name.partition("-")
    host = rest.removesuffix(".part").partition("-")[2]
    if host == socket.gethostname() and pid.isdigit():
        return not alive(int(pid))
    return part.stat().st_mtime < older_than


def alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


__all__ = ["CHUNK", "Backend", "Upload", "abandoned", "aborting", "alive", "os_error", "part_name"]
