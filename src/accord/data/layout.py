"""How objects' bytes are laid out: numpy arrays in their own memory layout
behind a small header (so a read can map them), files and streams in chunks.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
from collections.abc import Callable, Iterator
from typing import IO, Any, BinaryIO

from accord import serde
from accord.data.backends import CHUNK, os_error
from accord.data.reader import corrupt, damage
from accord.data.ref import ObjectRef
from accord.errors import ConfigError

_NPY = b"ACNPY1"
_HEAD = struct.Struct(">I")


def array_header(array: Any) -> bytes:
    meta = serde.dumps(
        [
            array.dtype.str,
            list(array.shape),
            bool(array.flags.f_contiguous and not array.flags.c_contiguous),
        ]
    )
    head = _NPY + _HEAD.pack(len(meta)) + meta
    return head + b"\0" * (-len(head) % 64)  # the data starts 64-byte aligned


def array_from(buffer: Any) -> Any:
    import numpy as np

    view = memoryview(buffer)
    if bytes(view[: len(_NPY)]) != _NPY:
        raise ConfigError("the object is not a numpy array")
    (length,) = _HEAD.unpack_from(view, len(_NPY))
    start = len(_NPY) + _HEAD.size
    dtype, shape, fortran = serde.loads(bytes(view[start : start + length]))
    offset = start + length + (-(start + length) % 64)
    array = np.frombuffer(view, dtype=np.dtype(dtype), offset=offset)
    return array.reshape(shape, order="F" if fortran else "C")


def map_verified(
    path: str, ref: ObjectRef, location: str, missing: Callable[[str], Exception | None]
) -> mmap.mmap:
    """The file at ``path`` mapped, once its bytes are checked against ``ref``."""
    try:
        with open(path, "rb") as file:
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        error = missing(ref.digest)
        if error is None:
            raise
        raise error from None
    except OSError as exc:
        raise os_error(exc, location) from exc
    why = damage(ref.digest, ref.size, (hashlib.sha256(mapped).hexdigest(), len(mapped)))
    if why is not None:
        raise corrupt(ref.digest, location, why)
    return mapped


def chunks(stream: IO[bytes] | BinaryIO) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK):
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise ConfigError("put_stream needs a binary stream (opened with 'rb')")
        yield chunk
