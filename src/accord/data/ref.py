"""``ObjectRef``: the small value that names an object of the object store."""

from __future__ import annotations

import re
import struct
from typing import TYPE_CHECKING, Any

from accord import serde
from accord.errors import ConfigError
from accord.store.sql.objects import MARKER

if TYPE_CHECKING:
    pass

EXT_OBJECT_REF = 10
KINDS = ("bytes", "ndarray", "value")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_SIZE = struct.Struct(">Q")


class ObjectRef:
    """An object: the sha256 digest of its bytes (hex), its size in bytes and
    its kind (``bytes``, ``ndarray`` or ``value``).

    A reference is a small value: pass it to tasks, return it, put it in state
    or send it in a message. ``ref.get()`` reads the object through the object
    store of the app running the current task (else of the app that last opened
    its object store in this process).
    """

    # Not a dataclass: msgspec would encode one as a plain dict.
    __slots__ = ("digest", "kind", "size")

    def __init__(self, digest: str, size: int, kind: str) -> None:
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise ConfigError(
                f"object digest {digest!r} is not a sha256 digest (64 lower-case hex "
                "digits); copy it from `accord objects ls`"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ConfigError(f"object size {size!r} is not a whole number of bytes")
        if kind not in KINDS:
            raise ConfigError(f"object kind {kind!r} is not one of {', '.join(KINDS)}")
        self.digest = digest
        self.size = size
        self.kind = kind

    def __repr__(self) -> str:
        return f"ObjectRef({self.digest[:12]}..., size={self.size}, kind={self.kind!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ObjectRef):
            return NotImplemented
        return (self.digest, self.size, self.kind) == (other.digest, other.size, other.kind)

    def __hash__(self) -> int:
        return hash(self.digest)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ObjectRef, (self.digest, self.size, self.kind))

    def __str__(self) -> str:
        return self.digest

    def get(self) -> Any:
        """The object's value (see :meth:`Objects.get`)."""
        from accord.data.objects import current

        return current().get(self)

    def open(self) -> Any:
        """The object as a readable binary file (see :meth:`Objects.open`)."""
        from accord.data.objects import current

        return current().open(self)

    def pack(self) -> bytes:
        """The reference as stored: the marker, the digest, the size, the kind."""
        return MARKER + bytes.fromhex(self.digest) + _SIZE.pack(self.size) + self.kind.encode()

    @classmethod
    def unpack(cls, data: bytes) -> ObjectRef:
        head = len(MARKER)
        if not data.startswith(MARKER) or len(data) < head + 40:
            raise ConfigError("a stored object reference is damaged")
        digest = data[head : head + 32].hex()
        (size,) = _SIZE.unpack_from(data, head + 32)
        return cls(digest, size, data[head + 40 :].decode())


def _unpack_ref(data: bytes) -> ObjectRef:
    return ObjectRef.unpack(data)


serde.register_ext(ObjectRef, EXT_OBJECT_REF, ObjectRef.pack, _unpack_ref)


def check_ref(ref: object) -> ObjectRef:
    """``ref``, if it is an ObjectRef; a clear error if it is not."""
    if not isinstance(ref, ObjectRef):
        raise ConfigError(
            f"expected an ObjectRef (from app.objects.put), not {type(ref).__qualname__}; "
            "for a digest as text use app.objects.ref(digest)"
        )
    return ref
