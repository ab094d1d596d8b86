"""The fsspec backend: objects under any URL its drivers reach (``s3://``,
``gs://``, ``az://``), with the drivers' errors made accord's.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any

from accord.data.backends import Backend, Upload, os_error
from accord.errors import (
    ConfigError,
    StoreError,
    StoreUnavailableError,
)

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


__all__ = ["Remote"]
