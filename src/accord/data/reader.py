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
from collections.abc import Callable
from typing import IO, Any

from accord.errors import CorruptObjectError


def corrupt(digest: str, location: str, why: str) -> CorruptObjectError:
    return CorruptObjectError(
        f"object {digest} in {location} is damaged ({why}); it was not returned. Run "
        "`accord objects verify` to list every damaged object, then put the data again",
        digest=digest,
        location=location,
    )


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
        # The bytes held back until the hash of everything before them is known.
        self.tail = b""

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
        if hashed != self.size:
            raise self._fail(f"{hashed} bytes, not {self.size}")
        if self.hash.hexdigest() != self.digest:
            raise self._fail("its bytes do not hash to its digest")
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
            self.tail = b""
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = len(view)
        if self.verified and not self.tail:
            data = self.raw.read(want) or b""
        else:
            # Read on, but hand over nothing past what was hashed and keep at
            # least one byte back until the end is reached and the digest checked.
            while not self.verified and len(self.tail) <= want:
                chunk = self.raw.read(max(want, 64 * 1024))
                if not chunk:
                    self._check(self.pos + len(self.tail))
                    break
                self.hash.update(chunk)
                self.tail += chunk
                if self.pos + len(self.tail) > self.size:
                    raise self._fail(f"more than {self.size} bytes")
            n = min(want, len(self.tail) if self.verified else len(self.tail) - 1)
            data, self.tail = self.tail[:n], self.tail[n:]
        view[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def close(self) -> None:
        self.raw.close()
        super().close()
