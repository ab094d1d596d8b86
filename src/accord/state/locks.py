"""Locks and elections: recipes on leases, with fencing tokens."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from accord import _attempt
from accord._checks import (
    check_key,
    check_seconds,
    check_timeout,
)
from accord.errors import (
    ConflictError,
    StoreError,
)
from accord.state.lease import Lease
from accord.state.records import Entry
from accord.store.records import ChangeKind

if TYPE_CHECKING:
    from accord.state.keyspace import State
    from accord.state.watch import Watch


class _Holder:
    """A key held through a lease: the base of :class:`Lock` and :class:`Leadership`."""

    def __init__(self, state: State, key: str, ttl: float) -> None:
        self._state = state
        self.key = key
        self._full_key = state._key(key)
        self.ttl = check_seconds(ttl, "ttl")
        self.lease: Lease | None = None
        self.token: int | None = None

    def _take(self, value: Any, timeout: float | None) -> int:
        """Wait until the key is free, then take it; return the fencing token."""
        if self.token is not None:
            raise ConflictError(f"{self!r} is held already; release it first")
        wait = check_timeout(timeout)
        deadline = None if wait is None else time.monotonic() + wait
        lease = self._state.lease(self.ttl)
        lease.start_keepalive()
        try:
            while True:
                result = (
                    self._state.txn()
                    .compare(self.key, "version", "==", 0)
                    .then_put(self.key, value, lease=lease)
                    .commit()
                )
                if result.succeeded:
                    self.lease = lease
                    self.token = result.revision
                    return result.revision
                # Wait for the holder's key to go (released, or its lease
                # expired), watching from just after the revision we saw it at.
                watch = self._state.watch(self.key, exact=True, start_revision=result.revision + 1)
                while True:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"{self!r} was not free within {timeout} s")
                    change = watch.get(left)
                    if change is not None and change.kind is ChangeKind.DELETE:
                        break
        except BaseException:
            with contextlib.suppress(StoreError):
                lease.revoke()
            raise

    def _give_back(self) -> None:
        lease, self.lease = self.lease, None
        token, self.token = self.token, None
        if lease is None or token is None:
            return
        lease.stop_keepalive()
        try:
            (
                self._state.txn()
                .compare(self.key, "create_revision", "==", token)
                .then_delete(self.key)
                .commit()
            )
        finally:
            lease.revoke()

    def is_held(self) -> bool:
        """Whether the key still holds this holder's token (the lease did not end)."""
        if self.token is None:
            return False
        entry = self._state.get(self.key)
        return entry is not None and entry.create_revision == self.token


class Lock(_Holder):
    """A lock: one holder at a time, across processes and machines.

    :attr:`token` is the revision at which it was taken: it grows with every
    acquisition, so a resource can refuse writes that carry an older token
    (fencing). Guard state writes with ``txn().holding(lock)``. The lock's
    lease is kept alive from a thread; if the holder dies, the lock frees
    itself after ``ttl`` seconds.

    Example::

        with app.state.lock("model-upload", ttl=10) as lock:
            app.state.txn().holding(lock).then_put("model", ref).commit()
    """

    def __init__(self, state: State, name: str, *, ttl: float = 10.0) -> None:
        check_key(name, "lock name")
        super().__init__(state, f"locks/{name}", ttl)
        self.name = name

    def __repr__(self) -> str:
        return f"<Lock {self.name!r} token={self.token}>"

    def acquire(self, timeout: float | None = None) -> int:
        """Wait (at most ``timeout`` seconds, else ``TimeoutError``) and take
        the lock; return its fencing token."""
        fence = _attempt.fence_for(self._state._store.url)
        holder = {"task": fence[0] if fence else None, "at": time.time()}
        return self._take(holder, timeout)

    def release(self) -> None:
        """Release the lock (nothing happens if it was not held)."""
        self._give_back()

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class Election:
    """A leader election: :meth:`campaign` waits to become leader.

    The leader's value is readable by everyone (:meth:`leader`) and
    observable (:meth:`observe`); the leadership's :attr:`Leadership.token`
    is a fencing token, as for :class:`Lock`.
    """

    def __init__(self, state: State, name: str) -> None:
        check_key(name, "election name")
        self._state = state
        self.name = name
        self.key = f"elections/{name}"

    def __repr__(self) -> str:
        return f"<Election {self.name!r}>"

    def campaign(
        self, value: Any, *, ttl: float = 10.0, timeout: float | None = None
    ) -> Leadership:
        """Wait until this candidate leads (at most ``timeout`` seconds)."""
        leadership = Leadership(self, ttl)
        leadership._take(value, timeout)
        return leadership

    def leader(self) -> Entry | None:
        """The current leader's entry (its value, and its token as
        ``create_revision``), or ``None``."""
        return self._state.get(self.key)

    def observe(self, *, start_revision: int | None = None) -> Watch:
        """Watch the leader key: a put is a new leader or value, a delete a vacancy."""
        return self._state.watch(self.key, exact=True, start_revision=start_revision)


class Leadership(_Holder):
    """Leadership won by :meth:`Election.campaign`; resign to hand it on."""

    def __init__(self, election: Election, ttl: float) -> None:
        super().__init__(election._state, election.key, ttl)
        self.election = election

    def __repr__(self) -> str:
        return f"<Leadership {self.election.name!r} token={self.token}>"

    def proclaim(self, value: Any) -> int:
        """Change the leader's value while leading; ConflictError if no longer leading."""
        if self.token is None or self.lease is None:
            raise ConflictError(f"{self!r} does not lead any more")
        result = (
            self._state.txn().holding(self).then_put(self.key, value, lease=self.lease).commit()
        )
        if not result.succeeded:
            raise ConflictError(
                f"{self!r} lost the leadership (its lease ended); campaign again",
                election=self.election.name,
            )
        return result.revision

    def resign(self) -> None:
        self._give_back()

    def __enter__(self) -> Leadership:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.resign()
