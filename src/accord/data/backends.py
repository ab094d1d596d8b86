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
import fcntl
import io
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from accord.errors import (
    ConfigError,
    ObjectNotFound,
    StorageFullError,
    StoreError,
    StoreUnavailableError,
)
from accord.store.sql.objects import CHUNK, ObjectsMixin

__all__ = [
    "CHUNK",
    "Backend",
    "Database",
    "DbUpload",
    "LocalDir",
    "Remote",
    "Upload",
    "alive",
    "os_error",
]


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


# -- a directory --------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalDir(Backend):
    """A directory, sharded by the digest's first two bytes (``ab/cd/<digest>``).

    A put publishes its bytes, then records the row, holding a shared lock
    on ``<root>/lock``; the collector takes the lock exclusively to look for
    the row a last time and remove the bytes. So no put is ever between the
    two steps while bytes go, and no bytes are hidden from a reader for a
    moment. Temporary files are named after their writer (pid and host): the
    collector removes those whose writer on this host is dead, and another
    host's once they are older than the grace.
    """

    publish_first = True

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self._tmp = self.root / "tmp"
        self._trash = self.root / "trash"  # left by collectors of earlier versions

    def _file(self, digest: str) -> Path:
        return self.root / digest[:2] / digest[2:4] / digest

    def begin(self) -> Upload:
        name = f"{os.getpid()}-{uuid.uuid4().hex}-{socket.gethostname()}.part"
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
            return _LocalUpload(self, self._tmp / name)
        except OSError as exc:
            raise os_error(exc, self.location) from exc

    def has(self, digest: str) -> bool:
        return self._file(digest).is_file()

    def path(self, digest: str) -> str | None:
        return str(self._file(digest))

    def open(self, digest: str) -> IO[bytes]:
        try:
            return self._file(digest).open("rb")
        except FileNotFoundError:
            raise self.missing(digest) from None
        except OSError as exc:
            raise os_error(exc, self.location) from exc

    @contextlib.contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        path = self.root / "lock"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno != errno.EROFS or not path.exists():
                raise os_error(exc, self.location) from exc
            fd = os.open(path, os.O_RDONLY)  # a read-only volume: locks still work
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # releases the lock

    def publishing(self) -> contextlib.AbstractContextManager[object]:
        return self._locked(fcntl.LOCK_SH)

    def collect(self, digest: str, recorded: Callable[[], bool]) -> None:
        with self._locked(fcntl.LOCK_EX):
            if recorded():
                return
            try:
                self._file(digest).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise os_error(exc, self.location) from exc

    def set_aside(self, digest: str) -> None:
        damaged = self.root / "damaged"
        try:
            damaged.mkdir(exist_ok=True)
            os.replace(self._file(digest), damaged / digest)
        except FileNotFoundError:
            pass  # set aside by another reader meanwhile
        except OSError as exc:
            raise os_error(exc, self.location) from exc

    def set_aside_at(self, digest: str) -> str | None:
        aside = self.root / "damaged" / digest
        return str(aside) if aside.exists() else None

    def probe(self) -> None:
        if not self.root.is_dir():
            return
        try:
            self._tmp.mkdir(exist_ok=True)
            fd, name = _tempfile(self._tmp)
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            raise os_error(exc, self.location) from exc

    def digests(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for first in sorted(self.root.iterdir()):
            if len(first.name) != 2 or not first.is_dir():
                continue
            for second in sorted(first.iterdir()):
                for file in sorted(second.iterdir()):
                    if len(file.name) == 64:
                        yield file.name

    def clear_parts(self, older_than: float, recorded: Callable[[str], bool]) -> int:
        removed = 0
        damaged = self.root / "damaged"
        for file in sorted(damaged.iterdir()) if damaged.is_dir() else []:
            if not recorded(file.name) or self.has(file.name):  # collected, or put again
                file.unlink(missing_ok=True)
                removed += 1
        here = socket.gethostname()
        for place in (self._tmp, self._trash):
            if not place.is_dir():
                continue
            for file in place.iterdir():
                pid, _, rest = file.name.partition("-")
                _, _, host = rest.removesuffix(".part").partition("-")
                try:
                    if host == here and pid.isdigit():
                        stale = not alive(int(pid))
                    else:  # another host's put, or an old name: by age
                        stale = file.stat().st_mtime < older_than
                    if stale:
                        file.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise os_error(exc, self.location) from exc
        return removed


def _tempfile(where: Path) -> tuple[int, str]:
    name = str(where / f"probe-{uuid.uuid4().hex}")
    return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), name


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


class _LocalUpload(Upload):
    def __init__(self, backend: LocalDir, path: Path) -> None:
        self.backend = backend
        self.path = path
        self.file: io.BufferedWriter | None = None
        try:
            self.file = path.open("xb")
        except OSError as exc:
            raise os_error(exc, backend.location) from exc

    def write(self, data: bytes | memoryview) -> None:
        assert self.file is not None
        try:
            self.file.write(data)
        except OSError as exc:
            raise os_error(exc, self.backend.location) from exc

    def finish(self) -> None:
        assert self.file is not None
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
        except OSError as exc:
            raise os_error(exc, self.backend.location) from exc

    def publish(self, digest: str) -> None:
        final = self.backend._file(digest)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            raise os_error(exc, self.backend.location) from exc

    def abort(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


# -- the database -------------------------------------------------------------
class Database(Backend):
    """Chunks of 1 MiB in the store's own database (PostgreSQL's default):
    every host that reaches the store reaches every object."""

    location = "database"

    def __init__(self, store: ObjectsMixin) -> None:
        self.store = store
        self.location = f"the database of {store.url}"

    def begin(self) -> Upload:
        return DbUpload(self.store)

    def has(self, digest: str) -> bool:
        return self.store.object_chunks_exist(digest)

    def open(self, digest: str) -> IO[bytes]:
        first = self.store.object_chunk(digest, 0)
        if first is None and (
            self.store.object_row(digest) is None or self.set_aside_at(digest) is not None
        ):
            raise self.missing(digest)
        # A row without chunks reads as nothing: the reader's check says damaged.
        return _DbReader(self.store, digest, first)  # type: ignore[return-value]

    def collect(self, digest: str, recorded: Callable[[], bool]) -> None:
        pass  # the row and its chunks went together (object_forget)

    def set_aside(self, digest: str) -> None:
        self.store.object_chunks_move(digest, _DAMAGED + digest)

    def set_aside_at(self, digest: str) -> str | None:
        name = _DAMAGED + digest
        return f"{self.location}, chunks {name}" if self.store.object_chunks_exist(name) else None

    def clear_parts(self, older_than: float, recorded: Callable[[str], bool]) -> int:
        removed = self.store.object_uploads_drop(older_than)
        for name in self.store.object_chunks_names(_DAMAGED):
            digest = name.removeprefix(_DAMAGED)
            if not recorded(digest) or self.has(digest):  # collected, or put again
                self.store.object_chunks_move(name, None)
                removed += 1
        return removed

    def digests(self) -> Iterator[str]:
        for row in self.store.object_rows():
            if row.location == "database":
                yield row.digest


class DbUpload(Upload):
    """Chunks written under ``upload:<id>``; the commit renames them (with the
    catalogue row, in one transaction: see :meth:`Objects._record`)."""

    def __init__(self, store: ObjectsMixin) -> None:
        self.store = store
        self.name = store.object_upload()
        self.seq = 0
        self.buffer = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        self.buffer += data
        while len(self.buffer) >= CHUNK:
            self.store.object_chunk_write(self.name, self.seq, bytes(self.buffer[:CHUNK]))
            del self.buffer[:CHUNK]
            self.seq += 1

    def finish(self) -> None:
        if self.buffer or self.seq == 0:
            self.store.object_chunk_write(self.name, self.seq, bytes(self.buffer))
            self.buffer.clear()
            self.seq += 1

    def publish(self, digest: str) -> None:
        pass  # the catalogue's commit publishes (object_chunks_commit)

    def abort(self) -> None:
        self.store.object_uploads_drop(0.0, upload=self.name)


_DAMAGED = "damaged:"  # the name the chunks of a damaged object are set aside under


class _DbReader(io.RawIOBase):
    def __init__(self, store: ObjectsMixin, digest: str, first: bytes | None) -> None:
        self.store = store
        self.digest = digest
        self.seq = 1  # the first chunk is read already (None: there is none)
        self.pending = first or b""
        self.done = first is None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or offset < 0:
            raise io.UnsupportedOperation("objects in the database seek from the start only")
        self.seq, skip = divmod(offset, CHUNK)  # every chunk but the last is CHUNK long
        chunk = self.store.object_chunk(self.digest, self.seq)
        self.done = chunk is None
        self.pending = b"" if chunk is None else chunk[skip:]
        self.seq += chunk is not None
        return offset

    def readinto(self, buffer: Any) -> int:
        while not self.pending and not self.done:
            chunk = self.store.object_chunk(self.digest, self.seq)
            if chunk is None:
                self.done = True
            else:
                self.pending = chunk
                self.seq += 1
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


# -- any fsspec URL -----------------------------------------------------------
# Names (anywhere in an exception's class hierarchy) of the drivers' errors for
# an endpoint that cannot be reached: botocore's EndpointConnectionError and
# timeouts, aiohttp's connection errors. Matched by name, so that no driver is
# imported here.
_UNREACHABLE = frozenset(
    {"ConnectionError", "ClientConnectionError", "ConnectTimeoutError", "ReadTimeoutError"}
)


class Remote(Backend):
    """Any fsspec file system (``s3://bucket/prefix``, ``gs://``, ``file:///mnt/nfs``)."""

    def __init__(self, url: str, **options: Any) -> None:
        try:
            import fsspec
        except ImportError:
            raise ConfigError(
                f"ACCORD_OBJECTS={url} needs fsspec and the driver for its scheme: "
                "pip install 'accord[objects]' (and s3fs, gcsfs or adlfs)"
            ) from None
        # No cached listings: other hosts put and collect objects here, and a
        # listing cached by one find() would say an object they published since
        # is absent (exists() and open() consult it), until the process ends.
        options.setdefault("use_listings_cache", False)
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError) as exc:
            raise ConfigError(
                f"ACCORD_OBJECTS={url} cannot be used: {exc}; use a URL such as "
                "s3://bucket/prefix or file:///mnt/shared"
            ) from None
        self.root = root.rstrip("/")
        self.location = url

    def _file(self, digest: str) -> str:
        return f"{self.root}/{digest[:2]}/{digest[2:4]}/{digest}"

    def _error(self, what: str, exc: Exception) -> Exception:
        """The accord error for the driver's ``exc`` raised trying to ``what``."""
        where = self.location
        names = {cls.__name__ for cls in type(exc).__mro__}
        if isinstance(exc, ConnectionError | TimeoutError) or names & _UNREACHABLE:
            return StoreUnavailableError(
                f"the object store at {where} cannot be reached to {what}: {exc}; retry once "
                "it is back, or check its endpoint (for s3://, AWS_ENDPOINT_URL)",
                location=where,
            )
        # A PermissionError without an errno is the driver's 403 (a local one has EACCES).
        refused = isinstance(exc, PermissionError) and exc.errno is None
        if refused or any("Credential" in name for name in names):
            return ConfigError(
                f"the object store at {where} refused to {what} ({exc}); check the "
                "credentials (for s3://, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or "
                "AWS_PROFILE) and that they may read and write there",
                location=where,
            )
        if isinstance(exc, FileNotFoundError):  # in writing: the bucket is not there
            return ConfigError(
                f"the object store at {where} cannot {what}: {exc}; create the bucket, or "
                "point ACCORD_OBJECTS at one that exists",
                location=where,
            )
        if isinstance(exc, OSError):
            return os_error(exc, where)
        return StoreError(
            f"the object store at {where} failed to {what}: {exc}; check the URL and the "
            "credentials",
            location=where,
        )

    def _call(self, what: str, fn: Any, *args: Any, writing: bool = False) -> Any:
        """``fn(*args)``, its errors made accord's. FileNotFoundError passes
        through where the caller treats it as an absent object, unless
        ``writing``: then it means the place itself (the bucket) is missing."""
        try:
            return fn(*args)
        except FileNotFoundError as exc:
            if not writing:
                raise
            raise self._error(what, exc) from exc
        except Exception as exc:
            raise self._error(what, exc) from exc

    def begin(self) -> Upload:
        return _RemoteUpload(self, f"{self.root}/tmp/{uuid.uuid4().hex}.part")

    def has(self, digest: str) -> bool:
        return bool(self._call("look up an object", self.fs.exists, self._file(digest)))

    def open(self, digest: str) -> IO[bytes]:
        try:
            file = self._call("read an object", self.fs.open, self._file(digest), "rb")
        except FileNotFoundError:
            raise self.missing(digest) from None
        return _RemoteReader(self, digest, file)  # type: ignore[return-value]

    # No lock spans hosts here: the row is recorded before the bytes are
    # published, and the collector moves the bytes aside, then looks for the
    # row again and puts them back if a put recorded it meanwhile.
    def collect(self, digest: str, recorded: Callable[[], bool]) -> None:
        token = f"{self.root}/trash/{digest}.{uuid.uuid4().hex}"
        try:
            self._call("collect an object", self.fs.mv, self._file(digest), token)
        except FileNotFoundError:
            return
        if recorded():
            self._restore(digest, token)
        else:
            self._drop(token)

    def set_aside(self, digest: str) -> None:
        aside = f"{self.root}/damaged/{digest}"
        try:
            self._call("set a damaged object aside", self.fs.mv, self._file(digest), aside)
        except FileNotFoundError:
            pass

    def set_aside_at(self, digest: str) -> str | None:
        aside = f"{self.root}/damaged/{digest}"
        found = self._call("look up a damaged object", self.fs.exists, aside)
        return aside if found else None

    def _restore(self, digest: str, token: str) -> None:
        if self.has(digest):
            self._drop(token)
        else:
            self._call("restore an object", self.fs.mv, token, self._file(digest))

    def _drop(self, token: str) -> None:
        try:
            self._call("delete an object", self.fs.rm, token)
        except FileNotFoundError:
            pass

    def clear_parts(self, older_than: float, recorded: Callable[[str], bool]) -> int:
        """Uploads that died under tmp/, and bytes a collector that died had
        moved aside under trash/ (put back if their row is there again), once
        older than ``older_than``."""
        removed = 0
        try:
            damaged = self._call("list leftovers", self.fs.find, f"{self.root}/damaged")
        except FileNotFoundError:
            damaged = []
        for path in damaged:
            digest = path.rsplit("/", 1)[-1]
            if not recorded(digest) or self.has(digest):  # collected, or put again
                self._drop(path)
                removed += 1
        for place in ("tmp", "trash"):
            try:
                found = self._call("list leftovers", self.fs.find, f"{self.root}/{place}")
            except FileNotFoundError:
                continue
            for path in found:
                try:
                    when = self._call("look up a leftover", self.fs.modified, path)
                except (FileNotFoundError, NotImplementedError):
                    continue
                if when.timestamp() >= older_than:
                    continue
                digest = path.rsplit("/", 1)[-1].partition(".")[0]
                if place == "trash" and len(digest) == 64 and recorded(digest):
                    self._restore(digest, path)
                else:
                    self._drop(path)
                    removed += 1
        return removed

    def digests(self) -> Iterator[str]:
        try:
            found = self._call("list objects", self.fs.find, self.root)
        except FileNotFoundError:
            return
        for path in sorted(found):
            # Only <ab>/<cd>/<abcd...> under the root (not tmp/ or trash/, and
            # judged below the root, which may itself have a "tmp" in it).
            parts = path.removeprefix(f"{self.root}/").split("/")
            name = parts[-1]
            if len(parts) == 3 and len(name) == 64 and parts[:2] == [name[:2], name[2:4]]:
                yield name

    def path(self, digest: str) -> str | None:
        protocol = self.fs.protocol
        local = "file" in (protocol if isinstance(protocol, tuple) else (protocol,))
        return self._file(digest) if local else None


class _RemoteUpload(Upload):
    def __init__(self, backend: Remote, path: str) -> None:
        self.backend = backend
        self.path = path
        self.finished = False
        self.file = backend._call("start an upload", backend.fs.open, path, "wb", writing=True)

    def write(self, data: bytes | memoryview) -> None:
        self.backend._call("write an object", self.file.write, data, writing=True)

    def finish(self) -> None:
        # Closing completes the upload (on S3, the multipart upload's completion).
        self.backend._call("finish an upload", self.file.close, writing=True)
        self.finished = True

    def publish(self, digest: str) -> None:
        backend = self.backend
        if backend.has(digest):
            self.abort()
        else:
            backend._call(
                "publish an object", backend.fs.mv, self.path, backend._file(digest), writing=True
            )

    @staticmethod
    def _buffered(file: Any) -> bool:
        """Whether ``file`` is fsspec's buffered file (S3's, GCS's, Azure's), which
        sends its bytes in parts and completes the upload when it is closed."""
        try:
            from fsspec.spec import AbstractBufferedFile
        except ImportError:
            return False
        return isinstance(file, AbstractBufferedFile)

    def abort(self) -> None:
        # Best effort throughout: the put is failing already, and what is left
        # under tmp/ is never visible under a digest.
        file = self.file
        buffered = self._buffered(file)
        if buffered and not file.forced:
            # Never completed: throw it away (S3 aborts the multipart upload).
            # Closing would send the rest of the buffer and complete the upload
            # only for it to be deleted, and leave it behind if that failed.
            with contextlib.suppress(Exception):
                file.discard()
            file.closed = True  # nor may the file's __del__ complete it
            return
        if buffered and not self.finished:  # completing it failed: abort what is left
            with contextlib.suppress(Exception):
                file.discard()
        with contextlib.suppress(Exception):
            if not file.closed:
                file.close()
        with contextlib.suppress(Exception):
            self.backend.fs.rm(self.path)


class _RemoteReader(io.RawIOBase):
    """An object's file in the remote store, its driver's errors made accord's:
    a read can fail long after the open succeeded (the server went away, a
    collector took the object), and a remote file fetches as it is read."""

    def __init__(self, backend: Remote, digest: str, file: Any) -> None:
        self.backend = backend
        self.digest = digest
        self.file = file

    def _do(self, fn: Any, *args: Any) -> Any:
        try:
            return self.backend._call("read an object", fn, *args)
        except FileNotFoundError:
            raise self.backend.missing(self.digest) from None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return bool(self.file.seekable())

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return int(self._do(self.file.seek, offset, whence))

    def tell(self) -> int:
        return int(self.file.tell())

    def read(self, size: int = -1) -> bytes:
        return bytes(self._do(self.file.read, size))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.file.close()
        super().close()
