"""Leases: keys that live while their owner keeps the lease alive."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from accord._checks import check_seconds
from accord.errors import (
    AccordError,
    ConflictError,
    LeaseExpiredError,
    StoreError,
)
from accord.store.records import Fence
from accord.store.state_base import StateStore


class Lease:
    """A lease granted by :meth:`State.lease`.

    Call :meth:`keepalive` within every ``ttl`` seconds, or use the lease as
    a context manager: a thread keeps it alive every ``ttl / 3`` seconds and
    the lease is revoked at the end. :attr:`lost` is set once the lease is
    known to have ended; its keys are then gone.
    """

    def __init__(
        self, store: StateStore, lease_id: int, ttl: float, expires_at: float, fence: Fence
    ) -> None:
        self._store = store
        self.id = lease_id
        self.ttl = ttl
        self.expires_at = expires_at
        self._fence = fence
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Lease {self.id} ttl={self.ttl}>"

    def keepalive(self) -> float:
        """Extend the lease by its ttl; return the new expiry time (epoch seconds).

        Raises :class:`~accord.LeaseExpiredError` if it already ended.
        """
        try:
            row = self._store.lease_keepalive(self.id, fence=self._fence)
        except LeaseExpiredError:
            self.lost.set()
            raise
        self.expires_at = row.expires_at
        return row.expires_at

    def revoke(self) -> int:
        """End the lease now, deleting its keys; return how many keys went."""
        self.stop_keepalive()
        self.lost.set()
        return self._store.lease_revoke(self.id, fence=self._fence)

    def alive(self) -> bool:
        return self._store.lease_info(self.id) is not None

    def start_keepalive(self, interval: float | None = None) -> None:
        """Keep the lease alive from a daemon thread every ``interval`` seconds."""
        if self._thread is not None:
            return
        every = self.ttl / 3 if interval is None else check_seconds(interval, "interval")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._keep, args=(every,), name=f"accord-lease-{self.id}", daemon=True
        )
        self._thread.start()

    def _keep(self, every: float) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(every):
            try:
                self.keepalive()
                last_ok = time.monotonic()
            except (LeaseExpiredError, ConflictError):
                self.lost.set()
                return
            except AccordError:
                # The store is unreachable for now: keep trying until the
                # lease must have expired anyway.
                if time.monotonic() - last_ok > self.ttl:
                    self.lost.set()
                    return

    def stop_keepalive(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> Lease:
        self.start_keepalive()
        return self

    def __exit__(self, *exc: Any) -> None:
        with contextlib.suppress(StoreError):
            self.revoke()
