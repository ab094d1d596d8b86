"""The object store: durable, content-addressed objects that every node sees.

``app.objects`` puts values, files and streams and reads them back by their
:class:`~accord.data.ref.ObjectRef`. The bytes live in one backend
(:mod:`accord.data.backends`): a directory beside a SQLite store, the
database itself on PostgreSQL, or any fsspec URL named by ``ACCORD_OBJECTS``.
The catalogue of objects is in the store of record, not in any process, so an
object outlives whoever put it.

A put writes the bytes under a temporary name and makes them durable, then
publishes them under their digest and records the object in the catalogue
(each backend orders and guards these two steps its own way; see
:meth:`Backend.collect`). The collector (:meth:`Objects.gc`) removes a
catalogue row only if the object was last put before its grace period, then
asks the backend to take the bytes unless a put recorded the object again
meanwhile. So a put that returned is never undone by a collector running
beside it, and a value between its put and the commit that references it is
safe for the grace period. A read that finds an object damaged sets its bytes
aside, so that a put of the same bytes repairs it.

Where the bytes are not in a local directory, each host reads them through
its bounded cache (:mod:`accord.data.cache`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

from accord import serde
from accord.data import collect
from accord.data.backends import CHUNK, Backend, Upload, aborting, os_error
from accord.data.cache import Cache
from accord.data.collect import DEFAULT_GRACE, GcReport, Problem
from accord.data.copying import hash_stream, synced_copy
from accord.data.database import Database, DbUpload
from accord.data.layout import array_from, array_header, chunks, map_verified
from accord.data.local import LocalDir, LocalUpload
from accord.data.reader import VerifiedReader, corrupt, damage
from accord.data.ref import ObjectRef, check_ref
from accord.data.remote import Remote
from accord.errors import ConfigError, CorruptObjectError, ObjectNotFound, StoreError
from accord.store.records import ObjectRow
from accord.store.sql.objects import ObjectsMixin

log = logging.getLogger("accord.data")
_SLICE = 8 * 1024 * 1024
DEFAULT_INLINE_LIMIT = 1024 * 1024

# Weak: the current object store must not keep its store (and files) open.
_current: weakref.ref[Objects] | None = None
_current_lock = threading.Lock()


def current() -> Objects:
    """The object store of the app that last opened one in this process (in a
    node's slot process, the app running the task)."""
    found = _current() if _current is not None else None
    if found is None:
        raise ConfigError(
            "no object store is open in this process; read the reference with app.objects.get(ref)"
        )
    return found


def backend_for(store: ObjectsMixin, url: str | None = None) -> Backend:
    """Where ``store``'s objects live: ``url`` (else ``ACCORD_OBJECTS``), else a
    directory beside a SQLite file, else the database itself."""
    url = url or os.environ.get("ACCORD_OBJECTS") or None
    if url is not None:
        if not isinstance(url, str) or not url.strip():
            raise ConfigError(f"object store URL {url!r} is empty; use a directory or s3://...")
        if url == "database":
            return Database(store)
        scheme, sep, rest = url.partition("://")
        if not sep:
            return LocalDir(Path(url).expanduser())
        if scheme == "file":
            return LocalDir(Path(rest))
        return Remote(url)
    path = getattr(store, "path", None)
    if isinstance(path, str) and path != ":memory:":
        return LocalDir(Path(path).resolve().parent / "objects")
    return Database(store)


class Objects:
    """The object store of one store of record (see the module docstring).

    ``inline_limit``: task arguments, results, state values and message
    payloads larger than this (bytes) move through the object store by
    themselves; they come back as the value.
    """

    def __init__(
        self,
        store: object,
        url: str | None = None,
        *,
        inline_limit: int = DEFAULT_INLINE_LIMIT,
        cache: Cache | bool = True,
    ) -> None:
        global _current
        if not isinstance(store, ObjectsMixin):
            raise ConfigError(f"the store {store!r} has no object catalogue")
        self.store: ObjectsMixin = store
        self.backend = backend_for(store, url)
        self.inline_limit = inline_limit
        # Bytes that live elsewhere are read through this host's cache.
        self.cache: Cache | None = None
        if isinstance(cache, Cache):
            self.cache = cache
        elif cache and not isinstance(self.backend, LocalDir):
            self.cache = Cache.from_env()
        with _current_lock:
            _current = weakref.ref(self)

    def __repr__(self) -> str:
        return f"<Objects at {self.backend.location}>"

    @property
    def location(self) -> str:
        return self.backend.location

    # -- putting -------------------------------------------------------------
    def put(self, value: Any) -> ObjectRef:
        """Store ``value`` (bytes as they are, a numpy array in its own layout,
        anything else serialised) and return its reference."""
        if isinstance(value, bytes | bytearray | memoryview):
            data = memoryview(value).cast("B")
            return self._put_parts([data], "bytes")
        np = serde._numpy()
        if np is not None and isinstance(value, np.ndarray):
            if value.dtype.hasobject or value.dtype.names is not None:
                raise TypeError(
                    "numpy arrays of Python objects or with named fields cannot be stored"
                )
            if not (value.flags.c_contiguous or value.flags.f_contiguous):
                value = np.ascontiguousarray(value).reshape(value.shape)
            # The bytes as they lie in memory (a view of C or Fortran order).
            body = memoryview(value.ravel(order="K")).cast("B") if value.size else memoryview(b"")
            return self._put_parts([memoryview(array_header(value)), body], "ndarray")
        return self._put_parts([memoryview(serde.dumps(value, what="the object"))], "value")

    def put_file(self, path: str | os.PathLike[str]) -> ObjectRef:
        """Store the bytes of the file at ``path``, streamed (memory stays flat)."""
        path = Path(path)
        try:
            source = path.open("rb", buffering=0)
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}", path=str(path)) from None
        with source:
            if isinstance(self.backend, LocalDir):
                # The kernel copies; what was written is hashed while it is synced.
                upload = self.backend.begin()
                assert isinstance(upload, LocalUpload)
                with aborting(upload):
                    digest, size = upload.copy_in(source.fileno())
                    found = self._existing(digest)
                    if found is not None:
                        upload.abort()
                        return found
                    return self._commit(upload, digest, size, "bytes")
            # Elsewhere the digest comes first: an object that is there is not sent again.
            digest, size = hash_stream(source)
            source.seek(0)
            found = self._existing(digest)
            if found is not None:
                return found
            return self._write(chunks(source), "bytes", expect=(digest, size))

    def put_stream(self, stream: IO[bytes] | BinaryIO) -> ObjectRef:
        """Store the bytes read from ``stream`` to its end, in chunks."""
        if not hasattr(stream, "read"):
            raise ConfigError(f"put_stream needs a readable binary file, not {stream!r}")
        return self._write(chunks(stream), "bytes")

    def _put_parts(self, parts: list[memoryview], kind: str) -> ObjectRef:
        # The digest first: a value stored already (a dataset passed to task
        # after task) costs its hash and a lookup, and no write at all.
        hashed = hashlib.sha256()
        for part in parts:
            hashed.update(part)
        size = sum(p.nbytes for p in parts)
        found = self._existing(hashed.hexdigest())
        if found is not None:
            return found
        if isinstance(self.backend, LocalDir):
            # Not hashed again: bytes that another thread changed meanwhile
            # would be stored under a digest they do not match, and every read
            # checks it, so they are never returned. Written in slices of 8 MiB
            # (one write of hundreds of MiB can take ten times as long).
            upload = self.backend.begin()
            with aborting(upload):
                for piece in _slices(parts, _SLICE):
                    upload.write(piece)
                upload.finish()
                return self._commit(upload, hashed.hexdigest(), size, kind)
        return self._write(_slices(parts, CHUNK), kind, expect=(hashed.hexdigest(), size))

    def _existing(self, digest: str) -> ObjectRef | None:
        """The object ``digest`` if it is whole here (its grace starts over)."""
        row = self.store.object_touch(digest)
        if row is not None and self.backend.has(digest):
            return ObjectRef(row.digest, row.size, row.kind)
        return None

    def _write(
        self,
        chunks: Iterable[bytes | memoryview],
        kind: str,
        expect: tuple[str, int] | None = None,
    ) -> ObjectRef:
        upload = self.backend.begin()
        with aborting(upload):
            digest = hashlib.sha256()
            size = 0
            for chunk in chunks:
                digest.update(chunk)
                upload.write(chunk)
                size += len(chunk)
            upload.finish()
            hexdigest = digest.hexdigest()
            if expect is not None and expect != (hexdigest, size):
                raise ConfigError("the data changed while it was being stored; put it again")
            if expect is None:
                found = self._existing(hexdigest)
                if found is not None:
                    upload.abort()
                    return found
            return self._commit(upload, hexdigest, size, kind)

    def _commit(self, upload: Upload, digest: str, size: int, kind: str) -> ObjectRef:
        """Publish the durable bytes of ``upload`` as ``digest`` and record them."""
        if isinstance(upload, DbUpload):
            row = self.store.object_chunks_commit(upload.name, digest, size, kind, "database")
        elif self.backend.publish_first:
            with self.backend.publishing():
                upload.publish(digest)
                row = self.store.object_record(digest, size, kind, self.backend.location)
        else:
            row = self.store.object_record(digest, size, kind, self.backend.location)
            try:
                upload.publish(digest)
            except BaseException:
                self._unrecord(digest, row.touched_at)
                raise
        return ObjectRef(row.digest, row.size, row.kind)

    def _unrecord(self, digest: str, touched_at: float) -> None:
        """A publish failed after the row went in: take the row out again
        (unless the bytes are there after all), so no row lacks its bytes."""
        try:
            if self.backend.has(digest):
                return
        except StoreError:
            pass  # the store cannot be asked: take no chance on a row without bytes
        self.store.object_forget(digest, touched_at + 1e-6)

    # -- reading -------------------------------------------------------------
    def ref(self, digest: str) -> ObjectRef:
        """The reference to the object whose digest is ``digest`` (as printed)."""
        text = digest.strip().lower().removeprefix("sha256:") if isinstance(digest, str) else digest
        probe = ObjectRef(text, 0, "bytes")  # checks the digest's form
        row = self.store.object_row(probe.digest)
        if row is None:
            raise self.backend.missing(probe.digest)
        return ObjectRef(row.digest, row.size, row.kind)

    def open(self, ref: ObjectRef) -> io.BufferedReader:
        """The object as a readable, seekable binary file that checks the digest."""
        ref = check_ref(ref)
        copy = self._cached(ref)
        if copy is not None:
            try:
                raw = copy.open("rb")
            except FileNotFoundError:
                pass  # evicted by another process meanwhile: read it from the store
            else:
                cache = self.cache
                assert cache is not None
                where = (
                    f"this host's cache, {copy} (the copy is removed: a new read fetches "
                    f"it again from {self.location})"
                )
                reader = VerifiedReader(
                    raw, ref.digest, ref.size, where, lambda: cache.discard(ref.digest)
                )
                return io.BufferedReader(reader, CHUNK)
        return self._open_stored(ref)

    def _open_stored(self, ref: ObjectRef) -> io.BufferedReader:
        """The store's own copy, verified (never this host's cached one)."""
        stored = self._open_backend(ref.digest)
        reader = VerifiedReader(
            stored, ref.digest, ref.size, self.backend.location, lambda: self._set_aside(ref)
        )
        return io.BufferedReader(reader, CHUNK)

    def _open_backend(self, digest: str) -> IO[bytes]:
        try:
            return self.backend.open(digest)
        except ObjectNotFound:
            raise self._missing(digest) from None

    def _missing(self, digest: str) -> Exception:
        """The error for bytes of ``digest`` that are not there: damaged (and
        set aside by an earlier read), or missing."""
        aside = self.backend.set_aside_at(digest)
        if aside is not None and self.store.object_row(digest) is not None:
            return corrupt(
                digest,
                self.backend.location,
                f"found damaged by an earlier read and set aside to {aside}",
            )
        return self.backend.missing(digest)

    def _set_aside(self, ref: ObjectRef) -> None:
        """The store's copy of ``ref`` failed its digest: if it still does
        (a put may have repaired it meanwhile), move it aside, so that a put
        of the same bytes stores them anew."""
        try:
            with self.backend.open(ref.digest) as raw:
                if damage(ref.digest, ref.size, hash_stream(raw, CHUNK)) is None:
                    return
            self.backend.set_aside(ref.digest)
        except (ObjectNotFound, OSError) as exc:
            log.warning("object %s is damaged and could not be set aside: %s", ref.digest, exc)

    def _cached(self, ref: ObjectRef) -> Path | None:
        """This host's copy of ``ref``, made now if there is none (None where
        there is no cache or the object is larger than it)."""
        if self.cache is None or ref.size == 0:
            return None
        found = self.cache.lookup(ref.digest, ref.size)
        if found is not None:
            if self.store.object_row(ref.digest) is None:  # collected since
                self.cache.discard(ref.digest)
                raise self.backend.missing(ref.digest)
            return found
        with self._open_backend(ref.digest) as raw:
            try:
                return self.cache.fill(ref.digest, ref.size, raw, self.backend.location)
            except CorruptObjectError:
                self._set_aside(ref)
                raise

    def read_bytes(self, ref: ObjectRef) -> bytes:
        """The object's bytes, verified."""
        with self.open(ref) as file:
            return file.read()

    def get(self, ref: ObjectRef) -> Any:
        """The object's value: bytes for ``put_file``/``put_stream``/bytes, a
        read-only numpy array (memory-mapped where the bytes are a local file),
        else the value that was put."""
        ref = check_ref(ref)
        if ref.kind == "ndarray":
            return array_from(self._mapped(ref))
        data = self.read_bytes(ref)
        if ref.kind == "value":
            return serde.loads(data, offload=self)
        return data

    def _mapped(self, ref: ObjectRef) -> Any:
        """The verified bytes of ``ref``, by memory map where they are a local
        file (the backend's own, or this host's cached copy)."""
        if ref.size == 0:
            return self.read_bytes(ref)
        path = self.backend.path(ref.digest)
        if path is not None:
            try:
                return map_verified(path, ref, self.backend.location, self._missing)
            except CorruptObjectError:
                self._set_aside(ref)
                raise
        for _ in range(2):  # a cached copy that fails is fetched again, once
            copy = self._cached(ref)
            if copy is None:
                break
            try:
                return map_verified(str(copy), ref, str(copy), lambda digest: None)
            except (FileNotFoundError, CorruptObjectError):
                assert self.cache is not None
                self.cache.discard(ref.digest)
        return self.read_bytes(ref)

    def get_file(self, ref: ObjectRef, path: str | os.PathLike[str]) -> Path:
        """Write the object to ``path`` (whole, or not at all)."""
        ref = check_ref(ref)
        target = Path(path)
        part = target.with_name(f".{target.name}.part")
        try:
            local = self._local_file(ref)
            with part.open("wb") as out:
                if local is None:
                    with self.open(ref) as stream:
                        shutil.copyfileobj(stream, out, CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
                else:  # the kernel copies; the copy is hashed while it is synced
                    source, where, on_corrupt = local
                    out.flush()
                    with source:
                        written = synced_copy(source.fileno(), out.fileno(), str(part))
                    why = damage(ref.digest, ref.size, written)
                    if why is not None:
                        on_corrupt()
                        raise corrupt(ref.digest, where, why)
            os.replace(part, target)
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise os_error(exc, str(target)) from exc
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return target

    def _local_file(self, ref: ObjectRef) -> tuple[IO[bytes], str, Callable[[], None]] | None:
        """A local file with the bytes of ``ref`` (the store's, or this host's
        copy), opened: (the file, where it is, what to do if it is damaged)."""
        path = self.backend.path(ref.digest)
        file: IO[bytes]
        if path is not None:
            try:
                file = open(path, "rb", buffering=0)
            except FileNotFoundError:
                raise self._missing(ref.digest) from None
            return file, self.backend.location, lambda: self._set_aside(ref)
        copy = self._cached(ref)
        if copy is None:
            return None
        try:
            file = copy.open("rb", buffering=0)
        except FileNotFoundError:
            return None  # evicted by another process meanwhile: read it from the store
        cache = self.cache
        assert cache is not None
        return file, f"this host's cache, {copy}", lambda: cache.discard(ref.digest)

    # -- keeping -------------------------------------------------------------
    def pin(self, ref: ObjectRef) -> None:
        """Keep the object whatever references it (until :meth:`unpin`)."""
        if not self.store.object_pin(check_ref(ref).digest, True):
            raise self.backend.missing(ref.digest)

    def unpin(self, ref: ObjectRef) -> None:
        if not self.store.object_pin(check_ref(ref).digest, False):
            raise self.backend.missing(ref.digest)

    def ls(self, run: int | None = None) -> list[ObjectRow]:
        """The objects recorded (those the tasks of run ``run`` reference)."""
        if run is None:
            return self.store.object_rows()
        return self.store.object_rows(sorted(self.store.object_references(run)))

    def verify(self) -> list[Problem]:
        """Re-hash every object; the damaged and the missing ones."""
        return collect.verify(self)

    def gc(self, *, dry_run: bool = False, grace: float = DEFAULT_GRACE) -> GcReport:
        """Remove the objects nothing references (see :func:`accord.data.collect.gc`)."""
        return collect.gc(self, dry_run=dry_run, grace=grace)

    # -- the claim check (serde.Offload) ----------------------------------------
    def stash(self, data: bytes) -> bytes:
        return self._put_parts([memoryview(data)], "value").pack()

    def stash_array(self, array: Any) -> bytes:
        return self.put(array).pack()

    def fetch(self, claim: bytes) -> Any:
        return self.get(ObjectRef.unpack(claim))

    def fetch_bytes(self, claim: bytes) -> bytes:
        return self.read_bytes(ObjectRef.unpack(claim))


def _slices(parts: list[memoryview], step: int) -> Iterator[memoryview]:
    """``parts`` in pieces of at most ``step`` bytes (an empty part as one empty piece)."""
    for part in parts:
        for at in range(0, max(part.nbytes, 1), step):
            yield part[at : at + step]


__all__ = ["GcReport", "Objects", "Problem", "current"]
