"""The database backend: objects in 1 MiB chunks in the store's own database
(PostgreSQL's default), so every host that reaches the store reaches them.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import IO, Any

from accord.data.backends import Backend, Upload
from accord.store.sql.objects import CHUNK, ObjectsMixin


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
    catalogue row, in one transaction: see :meth:`Objects._commit`)."""

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


__all__ = ["Database", "DbUpload"]
