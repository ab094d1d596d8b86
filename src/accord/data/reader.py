"""A readable, seekable file over an object that checks its digest.

Read from the start to the end, the bytes are hashed as they pass and the
last read raises :class:`~accord.errors.CorruptObjectError` instead of
returning if the digest does not match, so a reader never takes in a whole
object that is wrong. The first seek elsewhere verifies the whole object
once before any byte is served from there.
"""

from __future__ import annotations

import hashlib
import io
import queue
from collections.abc import Callable
from typing import IO, Any

from accord.data.copying import beside
from accord.errors import CorruptObjectError


def damage(digest: str, size: int, found: tuple[str, int]) -> str | None:
    """What is wrong with bytes that hash to ``found`` (digest, size) for the
    object ``digest`` of ``size`` bytes; None if nothing."""
    if found[1] != size:
        return f"{found[1]} bytes, not {size}"
    if found[0] != digest:
        return "its bytes do not hash to its digest"
    return None


def corrupt(digest: str, location: str, why: str) -> CorruptObjectError:
    return CorruptObjectError(
        f"object {digest} in {location} is damaged ({why}); it was not returned. Run "
        "`accord objects verify` to list every damaged object, then put the data again",
        digest=digest,
        location=location,
    )


_PIECE = 4 * 1024 * 1024


def _read_hashing(raw: IO[bytes], want: int, digest: Any) -> list[bytes]:
    """Up to ``want`` bytes of ``raw`` in pieces, hashed into ``digest`` on a
    second thread as they arrive (reading and hashing both release the GIL)."""
    if want <= 2 * _PIECE:
        pieces: list[bytes] = []
        got = 0
        while got < want and (piece := raw.read(want - got)):
            pieces.append(piece)
            digest.update(piece)
            got += len(piece)
        return pieces or [b""]
    ready: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def hash_all() -> None:
        while (piece := ready.get()) is not None:
            digest.update(piece)

    def read_all() -> list[bytes]:
        pieces: list[bytes] = []
        got = 0
        try:
            while got < want and (piece := raw.read(min(_PIECE, want - got))):
                pieces.append(piece)
                ready.put(piece)
                got += len(piece)
        finally:
            ready.put(None)
        return pieces

    found: list[bytes] = beside(read_all, hash_all)
    return found


class VerifiedReader(io.RawIOBase):
    """The object ``digest`` of ``size`` bytes, read from ``raw`` (seekable or not)."""

    def __init__(
        self,
        raw: IO[bytes],
        digest: str,
        size: int,
        location: str,
        on_corrupt: Callable[[], None] | None = None,
    ) -> None:
        self.raw = raw
        self.on_corrupt = on_corrupt  # a cached copy that fails is removed
        self.digest = digest
        self.size = size
        self.location = location
        self.hash = hashlib.sha256()
        self.pos = 0
        self.verified = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def _fail(self, why: str) -> CorruptObjectError:
        if self.on_corrupt is not None:
            self.on_corrupt()
        return corrupt(self.digest, self.location, why)

    def _check(self, hashed: int) -> None:
        why = damage(self.digest, self.size, (self.hash.hexdigest(), hashed))
        if why is not None:
            raise self._fail(why)
        self.verified = True

    def verify(self) -> None:
        """Hash the whole object now (raises if it is damaged)."""
        if self.verified:
            return
        self._rewind(0)
        self.hash = hashlib.sha256()
        hashed = 0
        while chunk := self.raw.read(1024 * 1024):
            self.hash.update(chunk)
            hashed += len(chunk)
        self._check(hashed)

    def _rewind(self, offset: int) -> None:
        if self.raw.seekable():
            self.raw.seek(offset)
        elif offset != self.pos:
            raise io.UnsupportedOperation("this object's store reads it from the start only")

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {
            io.SEEK_SET: offset,
            io.SEEK_CUR: self.pos + offset,
            io.SEEK_END: self.size + offset,
        }[whence]
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        if target != self.pos or self.verified:
            self.verify()
            self._rewind(target)
            self.pos = target
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.verified:
            n = self.raw.readinto(view)  # type: ignore[attr-defined]
            self.pos += n or 0
            return n or 0
        # Read straight into the caller's buffer, hashing what passes; the read
        # that reaches the end checks the digest and raises instead of
        # returning, so the last bytes of a damaged object are never handed over.
        want = min(len(view), self.size - self.pos)
        n = self.raw.readinto(view[:want]) if want else 0  # type: ignore[attr-defined]
        n = n or 0
        self.hash.update(view[:n])
        if self.pos + n == self.size:
            self._at_end()
        elif n == 0:
            self._check(self.pos)  # shorter than its size: raises
        self.pos += n
        return n

    def readall(self) -> bytes:
        """The rest of the object in one piece (``read()``), checked."""
        if self.verified:
            data = self.raw.read() or b""
        else:
            want = self.size - self.pos
            pieces = _read_hashing(self.raw, want, self.hash)
            got = sum(len(piece) for piece in pieces)
            data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            if got < want:
                self._check(self.pos + got)  # raises
            self._at_end()
        self.pos += len(data)
        return data

    def _at_end(self) -> None:
        """Every byte of the object was hashed: nothing may follow, and the digest must match."""
        if self.raw.read(1):
            raise self._fail(f"more than {self.size} bytes")
        self._check(self.size)

    def close(self) -> None:
        self.raw.close()
        super().close()
