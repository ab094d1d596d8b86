"""The directory backend: objects as files, sharded by digest (the embedded
default, beside a SQLite store; also any shared mount through ``file://``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from accord.data.backends import Backend, Upload, abandoned, os_error, part_name
from accord.data.copying import synced_copy


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(root: Path, place: Path) -> None:
    """Make ``place`` and the folders between it and ``root``, each made one
    durable in its parent."""
    for level in reversed([place, *place.parents]):
        if level == root or root not in level.parents:
            continue
        try:
            level.mkdir()
        except FileExistsError:
            continue
        _fsync_dir(level.parent)


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
        name = part_name()
        if not self._tmp.is_dir():  # the first put here (or tmp/ was removed)
            try:
                self._tmp.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise os_error(exc, self.location) from exc
        return LocalUpload(self, self._tmp / name)

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
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
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
        for place in (self._tmp, self._trash):
            if not place.is_dir():
                continue
            for file in place.iterdir():
                try:
                    if abandoned(file, older_than):
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


class LocalUpload(Upload):
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

    def copy_in(self, source: int) -> tuple[str, int]:
        """Copy the open file ``source`` in, durably (:meth:`finish` is done);
        the sha256 and size of what was written."""
        assert self.file is not None
        try:
            self.file.flush()
            written = synced_copy(source, self.file.fileno(), str(self.path))
            self.file.close()
        except OSError as exc:
            raise os_error(exc, self.backend.location) from exc
        return written

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
            try:
                os.replace(self.path, final)
            except FileNotFoundError:
                if not self.path.exists():
                    raise
                _make_dirs(self.backend.root, final.parent)  # a new shard
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


__all__ = ["LocalDir", "LocalUpload"]
