"""A node's bounded cache of objects whose bytes live elsewhere (S3, the database).

The first read of such an object on a host copies its bytes, verified, into
the cache directory (``ab/<digest>``); later reads, in any process of the
host, open the copy, and numpy arrays are memory-mapped from it. The
directory is bounded by size: after each copy the least recently used files
go until the total fits (a hit refreshes a file's time). Nothing in it is
needed: a file that is missing, evicted by another process or deleted with
the whole directory is fetched again, and a copy that fails its digest is
removed and fetched again.

``ACCORD_CACHE_SIZE`` (``4G``, ``512M``, ``0`` for no cache; default 2G) and
``ACCORD_CACHE_DIR`` (default ``~/.cache/accord/objects``) set it; ``accord
node --cache-size/--cache-dir`` set them for a node and its slot processes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import IO

from accord.data.backends import abandoned, part_name
from accord.data.reader import corrupt, damage
from accord.errors import ConfigError

log = logging.getLogger("accord.data")
DEFAULT_CACHE_SIZE = 2 * 1024**3
CHUNK = 1024 * 1024
STALE_PART = 3600.0  # seconds: a partial copy of another host idle this long is left over
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


def parse_size(text: str | int, what: str = "ACCORD_CACHE_SIZE") -> int:
    """Bytes from ``512M``, ``4G``, ``1.5GiB`` or a plain number of bytes."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    match = _SIZE.fullmatch(str(text))
    if match is None:
        raise ConfigError(
            f"{what}={text!r} is not a size; write bytes or a number with K, M, G or T "
            "(such as 512M or 4G), or 0 for no cache"
        )
    return int(float(match[1]) * _UNITS[match[2].upper()])


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "accord" / "objects"


class Cache:
    """Verified copies of objects in ``root``, at most ``limit`` bytes in all."""

    def __init__(self, root: str | Path, limit: int = DEFAULT_CACHE_SIZE) -> None:
        self.root = Path(root).expanduser()
        self.limit = parse_size(limit)
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"<Cache {self.root} limit={self.limit}>"

    @classmethod
    def from_env(cls) -> Cache | None:
        """The cache the environment sets, or None where it is turned off."""
        size = os.environ.get("ACCORD_CACHE_SIZE")
        limit = DEFAULT_CACHE_SIZE if size is None else parse_size(size)
        if limit == 0:
            return None
        root = os.environ.get("ACCORD_CACHE_DIR") or default_dir()
        return cls(root, limit)

    def _file(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def lookup(self, digest: str, size: int) -> Path | None:
        """The cached copy of ``digest`` (its use recorded), or None."""
        file = self._file(digest)
        try:
            if file.stat().st_size != size:
                self.discard(digest)
                return None
            os.utime(file)
        except OSError:  # not there (never, evicted, deleted), or unreadable
            return None
        self.hits += 1
        return file

    def fill(self, digest: str, size: int, source: IO[bytes], location: str) -> Path | None:
        """Copy ``source`` (the object's bytes, from ``location``) into the
        cache, checking its digest; None where it is larger than the cache."""
        if size > self.limit:
            return None
        self.misses += 1
        part = self.root / "tmp" / part_name()
        try:
            part.parent.mkdir(parents=True, exist_ok=True)  # each time: it may have gone
            out = part.open("xb")
        except OSError as exc:
            self._unusable(exc)
            return None
        try:
            with out:
                hashed, total = hashlib.sha256(), 0
                while chunk := source.read(CHUNK):
                    hashed.update(chunk)
                    total += len(chunk)
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        self._unusable(exc)
                        return None
            why = damage(digest, size, (hashed.hexdigest(), total))
            if why is not None:
                raise corrupt(digest, location, why)
            file = self._file(digest)
            try:
                file.parent.mkdir(parents=True, exist_ok=True)
                os.replace(part, file)
            except OSError as exc:
                self._unusable(exc)
                return None
        finally:
            part.unlink(missing_ok=True)
        self.trim()
        return file

    def _unusable(self, exc: OSError) -> None:
        """A cache that cannot be written is read around, never an error."""
        log.warning(
            "the object cache at %s cannot be written (%s); reading without it",
            self.root,
            exc.strerror or exc,
        )

    def discard(self, digest: str) -> None:
        """Forget the copy of ``digest`` (damaged, or of the wrong size)."""
        self._file(digest).unlink(missing_ok=True)

    def files(self) -> list[tuple[float, int, Path]]:
        """Every cached copy: (last use, size, path)."""
        found: list[tuple[float, int, Path]] = []
        if not self.root.is_dir():
            return found
        for shard in self.root.iterdir():
            if len(shard.name) != 2 or not shard.is_dir():
                continue
            for file in shard.iterdir():
                try:
                    stat = file.stat()
                except FileNotFoundError:
                    continue  # evicted by another process meanwhile
                found.append((stat.st_mtime, stat.st_size, file))
        return found

    def used(self) -> int:
        return sum(size for _, size, _ in self.files())

    def clear_parts(self) -> int:
        """Remove partial copies whose filler died (killed mid-fill; another
        host's once idle for STALE_PART); the number removed."""
        removed = 0
        try:
            parts = list((self.root / "tmp").iterdir())
        except OSError:
            return removed
        for part in parts:
            try:
                if abandoned(part, time.time() - STALE_PART):
                    part.unlink()
                    removed += 1
            except OSError:
                continue  # finished or removed by another process meanwhile
        return removed

    def trim(self) -> int:
        """Remove the least recently used copies until the cache fits (and
        the partial copies of fills that died); the bytes freed."""
        self.clear_parts()
        files = sorted(self.files())
        total = sum(size for _, size, _ in files)
        freed = 0
        for _, size, file in files:
            if total <= self.limit:
                break
            file.unlink(missing_ok=True)
            total -= size
            freed += size
        return freed


__all__ = ["DEFAULT_CACHE_SIZE", "Cache", "parse_size"]
