"""The state store: versioned keys shared by every agent, task and node.

Modelled on etcd's data model, served from accord's own store:

- Keys are strings in namespaces. ``app.state`` is the app's namespace
  (keys under ``<app>/``); ``app.state.run(run_id)`` and
  ``app.state.agent(name)`` are namespaces inside it, and inside a task
  ``accord.current().state`` is its run's. Values are anything
  :mod:`accord.serde` takes.
- Every write transaction takes the next global revision. An entry carries
  the revision of its last change and its version (the number of writes to
  the key, never reused, also across a delete or a rollback).
- :meth:`State.txn` compares value, version or revisions of several keys and
  then applies puts and deletes, all or nothing; ``put(..., expect_version=)``
  is the one-key compare-and-set and raises :class:`~accord.ConflictError`
  when it loses.
- :meth:`State.watch` yields every change under a key or prefix from a
  revision on, in revision order, with no gap and no duplicate, also across
  restarts (resume from :attr:`Watch.revision`).
- History, named snapshots, rollback (a new revision equal to an old one),
  compaction with a retention setting.
- Leases keep keys alive while their owner does; :class:`Lock` and
  :class:`Election` are recipes on top, with fencing tokens.

Inside a task attempt every write carries the attempt's fence and is refused
(:class:`~accord.FencedError`, nothing written) once the attempt has lost its
lease.
"""

from __future__ import annotations

from accord._checks import MAX_KEY_BYTES
from accord.state.keyspace import MAX_VALUE_BYTES, State
from accord.state.lease import Lease
from accord.state.locks import Election, Leadership, Lock
from accord.state.records import Change, Entry, SnapshotInfo, TxnResult
from accord.state.txn import Txn
from accord.state.watch import WATCH_PAGE, Watch
from accord.store.records import ChangeKind

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "WATCH_PAGE",
    "Change",
    "ChangeKind",
    "Election",
    "Entry",
    "Leadership",
    "Lease",
    "Lock",
    "SnapshotInfo",
    "State",
    "Txn",
    "TxnResult",
    "Watch",
]
