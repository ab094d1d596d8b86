"""LISTEN/NOTIFY: how a process learns of other processes' commits.

Every transaction that wrote sends ``NOTIFY`` on commit (see
:mod:`accord.store.postgres.dialect`); a :class:`_Listener` thread per
process counts the notifications, by channel and by sending thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import psycopg

from accord.store.postgres.dialect import WORK_CHANNEL


def _sender() -> str:
    return f"{os.getpid()}.{threading.get_ident()}"


class _Listener:
    """Counts NOTIFYs on accord's channels, reconnecting when the server goes.

    It listens only on the channels that this process has asked about: a
    node waits for new work alone, and is not woken by every commit.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.channels: frozenset[str] = frozenset()  # asked about, see listen()
        self.count = 0
        self.alive = False
        self.bumped = threading.Condition()
        self.own: dict[str, int] = {}  # notifications by sending thread
        self.work = 0  # notifications of new work, and by sending thread
        self.own_work: dict[str, int] = {}
        self.wakers: dict[int, tuple[str, Callable[[], None]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="accord-listen", daemon=True)
        self._thread.start()

    def listen(self, channel: str) -> None:
        """Count the notifications of ``channel`` too (from the listener's next
        turn, at most 0.1 s away; it counts a change then)."""
        if channel not in self.channels:
            with self.bumped:
                self.channels = self.channels | {channel}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    listening: frozenset[str] = frozenset()
                    while not self._stop.is_set():
                        if self.channels != listening:
                            listening = self.channels
                            conn.execute("; ".join(f"LISTEN {c}" for c in sorted(listening)))
                            # Notifications sent before (or while disconnected)
                            # were missed: count a change.
                            self._bump()
                            self.alive = True
                        for note in conn.notifies(timeout=0.1):
                            self._bump(note.payload, work=note.channel == WORK_CHANNEL)
            except psycopg.Error:
                pass
            self.alive = False
            self._bump()
            self._stop.wait(0.2)

    def _bump(self, sender: str = "", *, work: bool | None = None) -> None:
        """Count a notification (``work`` None: a reconnect, which counts for both)."""
        with self.bumped:
            if work is not False:
                self.work += 1
                if sender:
                    self.own_work[sender] = self.own_work.get(sender, 0) + 1
                for waiter, wake in list(self.wakers.values()):
                    if waiter != sender:
                        wake()
            if work is not True:
                self.count += 1
                if sender:
                    self.own[sender] = self.own.get(sender, 0) + 1
            self.bumped.notify_all()

    def others(self, sender: str) -> int:
        """How many notifications came from other threads than ``sender``."""
        return self.count - self.own.get(sender, 0)

    def others_work(self, sender: str) -> int:
        """The same, for notifications of new work."""
        return self.work - self.own_work.get(sender, 0)

    def wait(self, sender: str, seen: int | None, timeout: float) -> None:
        """Return when others' count differs from ``seen``, or after ``timeout``."""
        with self.bumped:
            self.bumped.wait_for(lambda: self.others(sender) != seen, timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
