"""Moving an object's bytes between local files at the speed of a plain copy.

A verified copy costs a hash of every byte on top of the copy itself. Here
the kernel copies (``copy_file_range``, else ``sendfile``, else reads and
writes), and the hash of what was written runs on one core while the other
makes the copy durable: the digest is always that of the bytes stored, never
of a source that may change meanwhile. hashlib, the copies and ``fsync`` all
release the GIL, so the two threads run at once.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable
from typing import Any

# Errors that mean "this way of copying is not offered here": try the next.
_UNOFFERED = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}
_STEP = 1 << 30
_BLOCK = 4 * 1024 * 1024


def kernel_copy(source: int, target: int) -> int:
    """Copy what is left of file descriptor ``source`` to ``target``; the bytes copied."""
    total = 0
    for copy in (_copy_file_range, _sendfile):
        try:
            while n := copy(source, target):
                total += n
            return total
        except OSError as exc:
            if exc.errno not in _UNOFFERED or total:
                raise
    while data := os.read(source, _BLOCK):
        view = memoryview(data)
        while view:
            view = view[os.write(target, view) :]
        total += len(data)
    return total


def _copy_file_range(source: int, target: int) -> int:
    if not hasattr(os, "copy_file_range"):
        raise OSError(errno.ENOSYS, "copy_file_range")
    return os.copy_file_range(source, target, _STEP)


def _sendfile(source: int, target: int) -> int:
    return os.sendfile(target, source, None, _STEP)


def hash_stream(file: Any, block: int = _BLOCK) -> tuple[str, int]:
    """The sha256 and size of what is left to read of ``file`` (read into
    one reused buffer of ``block`` bytes)."""
    digest, size = hashlib.sha256(), 0
    buffer = bytearray(max(1, block))
    view = memoryview(buffer)
    while n := file.readinto(buffer):
        digest.update(view[:n])
        size += n
    return digest.hexdigest(), size


def hash_path(path: str | os.PathLike[str]) -> tuple[str, int]:
    """The sha256 and size of the file at ``path``."""
    with open(path, "rb", buffering=0) as file:
        return hash_stream(file, min(_BLOCK, os.fstat(file.fileno()).st_size))


def beside(work: Callable[[], Any], other: Callable[[], Any]) -> Any:
    """Run ``other`` on a second thread while ``work`` runs here; ``work``'s
    result once both are done (the first error of either is raised)."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            other()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, name="accord-objects")
    thread.start()
    try:
        result = work()
    finally:
        thread.join()
    if failed:
        raise failed[0]
    return result


def synced_copy(source: int, target: int, written: str) -> tuple[str, int]:
    """Copy what is left of file descriptor ``source`` into ``target`` (the
    open file at ``written``) and make it durable; the sha256 and size of
    what was written."""
    kernel_copy(source, target)
    digest: tuple[str, int] = beside(lambda: hash_path(written), lambda: os.fsync(target))
    return digest


__all__ = ["beside", "hash_path", "hash_stream", "kernel_copy", "synced_copy"]
