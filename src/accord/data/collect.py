"""The collector and the checker of the object store: ``accord objects gc``
and ``accord objects verify``.

The collector removes a catalogue row only if its object was last put before
the grace period and nothing references it, then asks the backend to take
the bytes unless a put recorded the object again meanwhile
(:meth:`~accord.data.backends.Backend.collect`); afterwards it takes bytes
whose row went with a collector that died, and what dead puts left behind.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from accord.data.backends import CHUNK
from accord.data.ref import ObjectRef
from accord.errors import (
    ConfigError,
    CorruptedError,
    ObjectNotFound,
    StoreUnavailableError,
)
from accord.store.records import ObjectRow
from accord.store.sql.objects import digests_in

if TYPE_CHECKING:  # the store of objects is the caller; it imports this module
    from accord.data.objects import Objects

DEFAULT_GRACE = 3600.0


@dataclass
class GcReport:
    """What a collection found: the objects it removed (or would), and kept."""

    collected: list[ObjectRow] = field(default_factory=list)
    kept: int = 0
    referenced: int = 0
    freed_bytes: int = 0


@dataclass
class Problem:
    """An object that ``verify`` found damaged or missing."""

    digest: str
    location: str
    problem: str


def verify(objects: Objects) -> list[Problem]:
    """Re-hash every object of ``objects``; the damaged and the missing ones.
    A store that cannot be reached raises: that says nothing of any object."""
    problems: list[Problem] = []
    where = objects.backend.location
    for row in objects.store.object_rows():
        try:
            with objects._open_stored(ObjectRef(row.digest, row.size, row.kind)) as file:
                while file.read(CHUNK):
                    pass
        except ObjectNotFound:
            problems.append(Problem(row.digest, where, "missing"))
        except StoreUnavailableError:
            raise
        except Exception as exc:  # CorruptObjectError, or the backend failing on this one
            problems.append(Problem(row.digest, where, str(exc)))
    return problems


def gc(objects: Objects, *, dry_run: bool = False, grace: float = DEFAULT_GRACE) -> GcReport:
    """Remove the objects nothing references: no task of a run the store
    keeps, no state key's current or retained revision, no undelivered
    mailbox message, no retained topic message, no pin; and none put in the
    last ``grace`` seconds (a value between its put and the commit that
    references it)."""
    if not isinstance(grace, int | float) or not math.isfinite(grace) or grace < 0:
        raise ConfigError(f"grace must be a number of seconds at least 0, not {grace!r}")
    store, backend = objects.store, objects.backend
    if not dry_run:
        backend.probe()  # a read-only volume: say so before changing anything
    cutoff = store.now() - grace
    rows = store.object_rows()
    referenced = _reachable(objects, store.object_references(), rows)
    report = GcReport(referenced=len(referenced))

    def recorded(digest: str) -> bool:
        return store.object_row(digest) is not None

    for row in rows:
        if row.pinned or row.touched_at >= cutoff or row.digest in referenced:
            report.kept += 1
            continue
        if dry_run:
            report.collected.append(row)
            report.freed_bytes += row.size
            continue
        if not store.object_forget(row.digest, cutoff):
            report.kept += 1  # put again meanwhile, or pinned
            continue
        backend.collect(row.digest, functools.partial(recorded, row.digest))
        report.collected.append(row)
        report.freed_bytes += row.size
    if not dry_run:
        known = {row.digest for row in rows}
        for digest in list(backend.digests()):
            if digest not in known and not recorded(digest):
                # Bytes whose row went with a collector that died.
                backend.collect(digest, functools.partial(recorded, digest))
        backend.clear_parts(cutoff, recorded)
    return report


def _reachable(objects: Objects, roots: set[str], rows: list[ObjectRow]) -> set[str]:
    """``roots`` and every object referenced inside a referenced value (a
    spilled value holds references to the arrays moved out of it)."""
    kinds = {row.digest: row for row in rows}
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        digest = todo.pop()
        if digest in seen:
            continue
        seen.add(digest)
        row = kinds.get(digest)
        if row is None or row.kind != "value":
            continue
        try:
            data = objects.read_bytes(ObjectRef(row.digest, row.size, row.kind))
        except (ObjectNotFound, CorruptedError):
            continue  # verify reports it; what it referenced cannot be known
        todo.extend(digests_in(data) - seen)
    return seen


__all__ = ["DEFAULT_GRACE", "GcReport", "Problem", "gc", "verify"]
