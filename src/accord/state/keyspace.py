"""A namespace of the state store: reads, writes, history, snapshots."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from accord import _attempt, serde
from accord._checks import (
    MAX_KEY_BYTES,
    check_int,
    check_key,
    check_seconds,
    check_text,
)
from accord.errors import (
    ConfigError,
    PayloadTooLargeError,
)
from accord.state.lease import Lease
from accord.state.locks import Election, Lock
from accord.state.records import Change, Entry, SnapshotInfo
from accord.state.txn import Txn
from accord.state.watch import Watch
from accord.store.records import Fence, KvChange, KvDelete, KvRow
from accord.store.state_base import StateStore

if TYPE_CHECKING:
    from accord.store.base import Store


MAX_VALUE_BYTES = 1024 * 1024
"""Largest serialised value; keep larger data outside the store and its path here."""


class State:
    """A namespace of the state store (see the module docstring).

    Usually reached as ``app.state``; ``State(store)`` is the root namespace
    of a store (every key, as the CLI sees them). Safe to share between
    threads.

    Example::

        rev = app.state.put("config/lr", 0.01)
        entry = app.state.get("config/lr")
        app.state.put("config/lr", 0.02, expect_version=entry.version)
    """

    def __init__(
        self,
        store: Store | StateStore,
        prefix: str = "",
        *,
        max_value: int = MAX_VALUE_BYTES,
        offload: serde.Offload | None = None,
    ) -> None:
        if not isinstance(store, StateStore):
            raise ConfigError(f"the store {store!r} has no state store")
        if prefix:
            check_text(prefix, "namespace", MAX_KEY_BYTES)
        self._store = store
        self.prefix = prefix
        self.max_value = max_value
        # Where values over the inline limit go (the app's object store), if anywhere.
        self.offload = offload

    def __repr__(self) -> str:
        return f"<State {self.prefix or '(root)'} at {self._store.url}>"

    @property
    def store(self) -> StateStore:
        return self._store

    # -- namespaces ---------------------------------------------------------
    def scope(self, name: str) -> State:
        """The namespace ``name`` inside this one (keys under ``<prefix><name>/``)."""
        check_key(name, "namespace")
        return State(
            self._store, f"{self.prefix}{name}/", max_value=self.max_value, offload=self.offload
        )

    def run(self, run_id: int) -> State:
        """The namespace of a run: ``runs/<run_id>/``."""
        return self.scope(f"runs/{check_int(run_id, 'run id', minimum=1)}")

    def agent(self, name: str) -> State:
        """The namespace of an agent: ``agents/<name>/``."""
        return self.scope(f"agents/{check_key(name, 'agent name')}")

    # -- helpers --------------------------------------------------------------
    def _key(self, key: object, what: str = "key") -> str:
        check_key(key, what)
        full = self.prefix + str(key)
        if self.prefix:
            check_text(full, what, MAX_KEY_BYTES)
        return full

    def _prefix(self, prefix: object) -> str:
        if not isinstance(prefix, str):
            raise ConfigError(
                f"prefix must be a string, not {type(prefix).__name__}", argument="prefix"
            )
        check_text(prefix, "prefix", MAX_KEY_BYTES)
        full = self.prefix + prefix
        if self.prefix:
            check_text(full, "prefix", MAX_KEY_BYTES)
        return full

    def _rel(self, key: str) -> str:
        return key[len(self.prefix) :]

    def _encode(self, key: str, value: Any) -> bytes:
        data = serde.dumps(
            value, what=f"the value of state key {self._rel(key)!r}", offload=self.offload
        )
        if len(data) > self.max_value:
            raise PayloadTooLargeError(
                f"the value of state key {self._rel(key)!r} takes {len(data)} bytes, over the "
                f"limit of {self.max_value}; put large data in the object store "
                "(app.objects.put) and keep its reference here: app.state does that by itself "
                "for values over the app's inline_limit",
                key=key,
                size=len(data),
                limit=self.max_value,
            )
        return data

    def _fence(self) -> tuple[Fence, int | None]:
        fence = _attempt.fence_for(self._store.url)
        return fence, (fence[0] if fence else None)

    def _entry(self, row: KvRow) -> Entry:
        return Entry(
            self._rel(row.key),
            serde.loads(row.value, self.offload),
            row.revision,
            row.version,
            row.create_revision,
            row.lease_id,
        )

    def _change(self, c: KvChange) -> Change:
        return Change(
            c.kind,
            self._rel(c.key),
            serde.loads(c.value, self.offload),
            c.revision,
            c.version,
            c.at,
        )

    def _revision_arg(self, revision: object, what: str) -> int | None:
        if revision is None:
            return None
        return check_int(revision, what)

    # -- reads ----------------------------------------------------------------
    def revision(self) -> int:
        """The store's current revision (of the last write transaction)."""
        return self._store.kv_status().revision

    def get(self, key: str, *, revision: int | None = None) -> Entry | None:
        """The key's entry (at ``revision`` if given), or ``None`` if absent.

        Raises :class:`~accord.CompactedError` for a revision before the
        compaction point and :class:`~accord.ConfigError` for a future one.
        """
        full = self._key(key)
        row, _ = self._store.kv_get(full, self._revision_arg(revision, "revision"))
        return None if row is None else self._entry(row)

    def value(self, key: str, default: Any = None) -> Any:
        """The key's value, or ``default`` if it is absent."""
        entry = self.get(key)
        return default if entry is None else entry.value

    def get_prefix(
        self, prefix: str = "", *, revision: int | None = None, limit: int | None = None
    ) -> list[Entry]:
        """Every key under ``prefix`` in key order (at ``revision`` if given)."""
        full = self._prefix(prefix)
        if limit is not None:
            check_int(limit, "limit", minimum=1)
        rows, _ = self._store.kv_range(full, self._revision_arg(revision, "revision"), limit)
        return [self._entry(r) for r in rows]

    def history(
        self,
        key: str,
        *,
        prefix: bool = False,
        start_revision: int = 0,
        end_revision: int | None = None,
        limit: int | None = None,
    ) -> list[Change]:
        """The kept changes of ``key`` (or, with ``prefix``, of every key under
        it), oldest first. Compaction drops old changes but keeps each key's
        value at the compaction point."""
        full = self._prefix(key) if prefix else self._key(key)
        if limit is not None:
            check_int(limit, "limit", minimum=1)
        changes = self._store.kv_history(
            full,
            prefix,
            check_int(start_revision, "start_revision"),
            self._revision_arg(end_revision, "end_revision"),
            limit,
        )
        return [self._change(c) for c in changes]

    # -- writes ---------------------------------------------------------------
    def txn(self) -> Txn:
        """Start a compare/then/else transaction (see :class:`Txn`)."""
        return Txn(self)

    def put(
        self,
        key: str,
        value: Any,
        *,
        expect_version: int | None = None,
        lease: Lease | int | None = None,
    ) -> int:
        """Write ``key`` and return the new revision.

        With ``expect_version`` the write happens only if the key is at that
        version (0: only if it is absent), else :class:`~accord.ConflictError`
        (with ``key``, ``expected`` and ``actual``) and nothing is written.
        With ``lease`` the key is deleted when the lease ends.
        """
        txn = Txn(self)
        if expect_version is not None:
            txn.compare(key, "version", "==", expect_version)
        result = txn.then_put(key, value, lease=lease)._commit(conflict=True)
        return result.revision

    def create(self, key: str, value: Any, *, lease: Lease | int | None = None) -> int:
        """Write ``key`` only if it is absent; :class:`~accord.ConflictError` otherwise."""
        return self.put(key, value, expect_version=0, lease=lease)

    def delete(self, key: str, *, expect_version: int | None = None) -> bool:
        """Delete ``key``; ``False`` if it was absent. ``expect_version`` as in :meth:`put`."""
        txn = Txn(self)
        if expect_version is not None:
            txn.compare(key, "version", "==", expect_version)
        return txn.then_delete(key)._commit(conflict=True).changed > 0

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix`` (in one revision); return how many."""
        full = self._prefix(prefix)
        if not full:
            raise ConfigError(
                "delete_prefix('') on the root namespace would delete every key of the store; "
                "name a prefix"
            )
        fence, task_id = self._fence()
        outcome = self._store.kv_txn([], [KvDelete(full, True)], [], fence=fence, task_id=task_id)
        return outcome.changed

    # -- watches --------------------------------------------------------------
    def watch(
        self, prefix: str = "", *, start_revision: int | None = None, exact: bool = False
    ) -> Watch:
        """Iterate over every change under ``prefix`` (or of the one key
        ``prefix`` with ``exact``) from ``start_revision`` on (default: changes
        after now), in revision order, each exactly once.

        Resume after a restart from :attr:`Watch.revision` (or from the last
        change's revision + 1 once all changes of that revision are handled):
        nothing is missed. A start before the compaction point raises
        :class:`~accord.CompactedError`, now or while the watch lags behind
        a compaction; a start after the next revision raises
        :class:`~accord.ConfigError`.
        """
        full = self._key(prefix, "watched key") if exact else self._prefix(prefix)
        status = self._store.kv_status()
        if start_revision is None:
            start = status.revision + 1
        else:
            start = check_int(start_revision, "start_revision")
            if start > status.revision + 1:
                raise ConfigError(
                    f"start_revision {start} is in the future: the store is at revision "
                    f"{status.revision}, so watch from {status.revision + 1} at most",
                    revision=start,
                    current=status.revision,
                )
            start = max(start, 1)
        watch = Watch(self, full, not exact, start)
        watch._fill()  # a compacted start raises here, not at the first next()
        return watch

    # -- snapshots, rollback, compaction ----------------------------------------
    def snapshot(self, name: str) -> int:
        """Name the current revision; return it. Snapshots hold compaction back."""
        fence, _ = self._fence()
        return self._store.kv_snapshot(self._key(name, "snapshot name"), fence=fence)

    def snapshots(self) -> list[SnapshotInfo]:
        """This namespace's snapshots, oldest first."""
        return [
            SnapshotInfo(self._rel(s.name), s.revision, s.created_at)
            for s in self._store.kv_snapshots(self.prefix)
        ]

    def delete_snapshot(self, name: str) -> bool:
        fence, _ = self._fence()
        return self._store.kv_delete_snapshot(self._key(name, "snapshot name"), fence=fence)

    def rollback(self, prefix: str = "", *, to: str | int) -> int:
        """Make every key under ``prefix`` what it was at a snapshot (``to`` a
        name) or a revision (``to`` an int), as one new revision; return it.

        History is kept: the rollback is a new write whose versions go on
        counting, so a compare-and-set that expects a version read before the
        rollback fails. Keys that were tied to a lease that has since ended
        stay deleted. Nothing differs: nothing is written and the current
        revision is returned.
        """
        full = self._prefix(prefix)
        fence, task_id = self._fence()
        if isinstance(to, str):
            outcome = self._store.kv_rollback(
                full,
                True,
                snapshot=self._key(to, "snapshot name"),
                fence=fence,
                task_id=task_id,
            )
        else:
            outcome = self._store.kv_rollback(
                full,
                True,
                revision=check_int(to, "rollback revision"),
                fence=fence,
                task_id=task_id,
            )
        return outcome.revision

    def compact(self, revision: int | None = None, *, keep: int | None = None) -> int:
        """Drop history before ``revision`` (default: the current revision, or
        the last ``keep`` revisions kept); return the compaction point reached.

        Compaction is store-wide. It keeps each key's value at the point and
        never passes the oldest snapshot. Reads, watches and rollbacks before
        the point raise :class:`~accord.CompactedError`.
        """
        current = self.revision()
        if revision is None:
            target = current if keep is None else current - check_int(keep, "keep") + 1
        else:
            if keep is not None:
                raise ConfigError("give compact() a revision or keep=, not both")
            target = check_int(revision, "compaction revision")
        if target < 1:
            return self._store.kv_status().compacted
        fence, _ = self._fence()
        return self._store.kv_compact(target, fence=fence)

    def set_retention(self, keep: int | None) -> None:
        """Keep about the last ``keep`` revisions of history, compacting as
        writes go on (``None``: keep everything, the default). Store-wide."""
        if keep is not None:
            check_int(keep, "keep", minimum=1)
        self._store.kv_set_retention(keep)

    # -- leases and recipes ---------------------------------------------------------
    def lease(self, ttl: float) -> Lease:
        """Grant a lease of ``ttl`` seconds. Keys put with it are deleted once
        it is revoked or not kept alive for ``ttl`` seconds. Use it as a
        context manager to keep it alive from a thread and revoke it at the end.
        """
        seconds = check_seconds(ttl, "lease ttl")
        fence, _ = self._fence()
        row = self._store.lease_grant(seconds, fence=fence)
        return Lease(self._store, row.id, seconds, row.expires_at, fence)

    def lock(self, name: str, *, ttl: float = 10.0) -> Lock:
        """A lock named ``name`` in this namespace (key ``locks/<name>``)."""
        return Lock(self, name, ttl=ttl)

    def election(self, name: str) -> Election:
        """A leader election named ``name`` in this namespace (key ``elections/<name>``)."""
        return Election(self, name)
