"""What reading the state store returns: entries, changes, transaction results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from accord.store.records import ChangeKind


@dataclass(frozen=True, slots=True)
class Entry:
    """A key's value with the revision of its last change and its version."""

    key: str
    value: Any
    revision: int
    version: int
    create_revision: int
    lease: int | None


@dataclass(frozen=True, slots=True)
class Change:
    """One change of one key: ``kind`` is ``"put"`` or ``"delete"`` (value None)."""

    kind: ChangeKind
    key: str
    value: Any
    revision: int
    version: int
    at: float


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Whether the compares held (then-branch) or not (else-branch), the
    revision written (the current one if nothing changed) and how many keys
    changed."""

    succeeded: bool
    revision: int
    changed: int


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    name: str
    revision: int
    created_at: float
