"""Watches: every change under a key or prefix, in order, with no gap."""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

from accord._checks import check_timeout
from accord.state.records import Change

if TYPE_CHECKING:
    from accord.state.keyspace import State


# A watcher waiting for changes checks the store's change counter this often
# at first and backs off to the slower pace (which bounds the latency).
POLL_FAST = 0.0002
POLL_SLOW = 0.005
# ... and looks for expired leases (whose keys nobody deleted yet) this often.
LEASE_SWEEP = 0.25
WATCH_PAGE = 1000


class Watch:
    """An iterator of :class:`Change` s (see :meth:`State.watch`).

    ``next(watch)`` waits for the next change; :meth:`get` waits at most a
    timeout. The watch reads the store's history from where it stands, so a
    slow consumer holds nothing in memory beyond one page, and one that falls
    behind a compaction gets :class:`~accord.CompactedError`, never a gap.
    """

    def __init__(self, state: State, key: str, prefix: bool, start: int) -> None:
        self._state = state
        self._key = key
        self._is_prefix = prefix
        self._read_from = start
        self._buffer: deque[Change] = deque()
        self._closed = False
        self._swept = 0.0

    def __repr__(self) -> str:
        return f"<Watch {self._key!r} at revision {self.revision}>"

    @property
    def revision(self) -> int:
        """Where to resume so that nothing is missed: the first revision whose
        changes have not all been returned yet (the next revision to be
        written, once the watch has caught up)."""
        return self._buffer[0].revision if self._buffer else self._read_from

    def _fill(self) -> None:
        page = self._state._store.kv_changes(
            self._key, self._is_prefix, self._read_from, WATCH_PAGE
        )
        self._buffer.extend(self._state._change(c) for c in page.changes)
        self._read_from = page.next_revision

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> Change:
        change = self.get(None)
        if change is None:
            raise StopIteration
        return change

    def get(self, timeout: float | None = None) -> Change | None:
        """The next change, waiting at most ``timeout`` seconds (``None``: no limit)."""
        wait = check_timeout(timeout)
        deadline = None if wait is None else time.monotonic() + wait
        store = self._state._store
        while not self._closed:
            if self._buffer:
                return self._buffer.popleft()
            # Not notifications alone: the history is read from where the
            # watch stands, and the change counter only says when to look
            # again. Its baseline is taken before the read, so a commit
            # landing in between is seen at the next check, not lost.
            store.changed()
            self._fill()
            if self._buffer:
                continue
            pause = POLL_FAST
            while not store.changed():
                now = time.monotonic()
                if self._closed or (deadline is not None and now >= deadline):
                    return None
                if now - self._swept > LEASE_SWEEP:
                    self._swept = now
                    if self._sweep():
                        break  # this connection's own commit: the counter misses it
                time.sleep(pause if deadline is None else min(pause, max(0.0, deadline - now)))
                pause = min(pause * 1.5, POLL_SLOW)
        return None

    def _sweep(self) -> bool:
        # Nobody deletes an expired lease's keys until some process looks:
        # watchers do, so that a dead owner's keys go away while all is idle.
        store = self._state._store
        expiry = store.kv_status().next_lease_expiry
        if expiry is not None and expiry < store.now():
            return store.kv_expire_leases() > 0
        return False

    def poll(self, timeout: float = 0.0) -> list[Change]:
        """Every change available now (waiting up to ``timeout`` for the first)."""
        first = self.get(timeout)
        if first is None:
            return []
        out = [first]
        while self._buffer:
            out.append(self._buffer.popleft())
        return out

    def close(self) -> None:
        """Stop the watch; iteration ends."""
        self._closed = True

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
