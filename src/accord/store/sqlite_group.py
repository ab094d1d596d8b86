"""Group commit across processes for the embedded store (SQLite only).

SQLite commits one transaction at a time, and a durable commit costs one
fsync of the WAL (about 0.2 ms here), so processes that each write one key
per transaction are capped at about 4,500 commits per second together, less
with the lock's hand-over gaps. Group commit lifts the cap without weakening
durability: one process commits the pending writes of the others with its
own, in one transaction and one fsync.

How it works (a PostgreSQL backend needs none of this: its server groups
commits itself):

- A small shared file next to the database (``<db>-group``) holds a table of
  request slots, mapped into every process that writes state. A slot is
  FREE, PENDING (a request waits), TAKEN (a leader runs it in group G at
  position i) or DONE (its outcome is written back).
- A writer that gets the *leader* lock (an ``fcntl`` lock on byte 0 of the
  file, released by the kernel if the process dies) runs its own request and
  every PENDING one in one database transaction, each request in a savepoint
  of its own, so that one failing request does not undo the others. A writer
  that does not get it parks its request in a slot and polls: for its outcome,
  and for the leader lock (the leader may finish, or die).
- The leader records the group's outcomes in the database (``kv_groups``) in
  the same transaction. If it dies after its commit but before writing the
  outcomes back, the next leader finds TAKEN slots, reads group G from the
  database and finishes them; if it died before its commit, group G is not
  there, and the requests go back to PENDING (they were never applied).
- The slot table itself is guarded by a second lock (byte 1), held only for
  a few microseconds at a time. Both are POSIX record locks, which belong to
  the process, so threads of one process also take a ``threading.Lock``.

Requests and outcomes are opaque bytes here (see ``sqlite_state``). A request
too large for a slot is not parked: its writer waits for the leader lock.
"""

from __future__ import annotations

import collections
import fcntl
import mmap
import os
import random
import struct
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from accord.errors import StoreError

R = TypeVar("R")

MAGIC = b"ACCGRP01"
SLOTS = 32
SLOT_SIZE = 16 * 1024
_HEADER = struct.Struct("<8sIIII")  # magic, slots, slot size, pending, taken
_LEADING = struct.Struct("<I")  # at offset 32: pid of the leader, 0 when none
_LEADING_AT = 32
_SLOT = struct.Struct("<IIQQII")  # state, pid, ticket, group, position, length
HEADER_SIZE = 64
SLOT_DATA = SLOT_SIZE - _SLOT.size
FILE_SIZE = HEADER_SIZE + SLOTS * SLOT_SIZE

FREE, PENDING, TAKEN, DONE = 0, 1, 2, 3
_LEADER_BYTE, _QUEUE_BYTE = 0, 1

# A parked writer polls its slot this often, backing off to the slower pace
# (a commit takes about 0.2 ms: polling faster only burns the leader's CPU).
POLL_FAST = 0.0001
POLL_SLOW = 0.0005
# While the header names a leader, a parked writer tries the leader lock only
# every this many polls (to notice a leader that died holding the name).
TRY_EVERY = 8


@dataclass(slots=True)
class Taken:
    """A request a leader runs: where it came from and what it asks."""

    slot: int
    ticket: int
    request: bytes


class _Mapped:
    """This process's view of the slot file."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, _QUEUE_BYTE)
            try:
                if os.fstat(fd).st_size < FILE_SIZE:
                    os.ftruncate(fd, FILE_SIZE)
                mem = mmap.mmap(fd, FILE_SIZE)
                magic, slots, size, _, _ = _HEADER.unpack_from(mem, 0)
                if magic != MAGIC or slots != SLOTS or size != SLOT_SIZE:
                    mem[:FILE_SIZE] = bytes(FILE_SIZE)
                    _HEADER.pack_into(mem, 0, MAGIC, SLOTS, SLOT_SIZE, 0, 0)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, _QUEUE_BYTE)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.mem = mem
        self.pid = os.getpid()


class CommitGroup:
    """The shared request table of one database file (see the module docstring)."""

    def __init__(self, db_path: str) -> None:
        self.path = f"{db_path}-group"
        self._mapped: _Mapped | None = None
        self._open_lock = threading.Lock()
        # POSIX record locks belong to the process: threads exclude each other here.
        self._leader_guard = threading.Lock()
        self._queue_guard = threading.Lock()

    # -- plumbing ---------------------------------------------------------------
    def _map(self) -> _Mapped:
        mapped = self._mapped
        if mapped is None or mapped.pid != os.getpid():
            with self._open_lock:
                mapped = self._mapped
                if mapped is None or mapped.pid != os.getpid():
                    # After fork the parent's locks are not ours: open our own.
                    self._leader_guard = threading.Lock()
                    self._queue_guard = threading.Lock()
                    mapped = self._mapped = _Mapped(self.path)
        return mapped

    def close(self) -> None:
        mapped, self._mapped = self._mapped, None
        if mapped is not None and mapped.pid == os.getpid():
            try:
                mapped.mem.close()
            finally:
                os.close(mapped.fd)

    def _lock_queue(self, m: _Mapped) -> None:
        self._queue_guard.acquire()
        try:
            fcntl.lockf(m.fd, fcntl.LOCK_EX, 1, _QUEUE_BYTE)
        except BaseException:
            self._queue_guard.release()
            raise

    def _unlock_queue(self, m: _Mapped) -> None:
        try:
            fcntl.lockf(m.fd, fcntl.LOCK_UN, 1, _QUEUE_BYTE)
        finally:
            self._queue_guard.release()

    def _counts(self, m: _Mapped) -> tuple[int, int]:
        _, _, _, pending, taken = _HEADER.unpack_from(m.mem, 0)
        return pending, taken

    def _set_counts(self, m: _Mapped, pending: int, taken: int) -> None:
        _HEADER.pack_into(m.mem, 0, MAGIC, SLOTS, SLOT_SIZE, pending, taken)

    def _slot(self, m: _Mapped, i: int) -> tuple[int, int, int, int, int, int]:
        state, pid, ticket, group, pos, length = _SLOT.unpack_from(
            m.mem, HEADER_SIZE + i * SLOT_SIZE
        )
        return state, pid, ticket, group, pos, length

    def _write(
        self,
        m: _Mapped,
        i: int,
        state: int,
        pid: int,
        ticket: int,
        group: int,
        pos: int,
        data: bytes | None,
    ) -> None:
        base = HEADER_SIZE + i * SLOT_SIZE
        if data is None:
            length = _SLOT.unpack_from(m.mem, base)[5]
        else:
            length = len(data)
            m.mem[base + _SLOT.size : base + _SLOT.size + length] = data
        _SLOT.pack_into(m.mem, base, state, pid, ticket, group, pos, length)

    def _data(self, m: _Mapped, i: int, length: int) -> bytes:
        base = HEADER_SIZE + i * SLOT_SIZE + _SLOT.size
        return bytes(m.mem[base : base + length])

    # -- the leader lock ---------------------------------------------------------
    def try_lead(self) -> bool:
        """Take the leader lock if it is free; never waits."""
        m = self._map()
        if not self._leader_guard.acquire(blocking=False):
            return False
        try:
            fcntl.lockf(m.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _LEADER_BYTE)
        except OSError:
            self._leader_guard.release()
            return False
        _LEADING.pack_into(m.mem, _LEADING_AT, m.pid)
        return True

    def unlead(self) -> None:
        m = self._map()
        _LEADING.pack_into(m.mem, _LEADING_AT, 0)
        try:
            fcntl.lockf(m.fd, fcntl.LOCK_UN, 1, _LEADER_BYTE)
        finally:
            self._leader_guard.release()

    def leading(self) -> bool:
        """Whether the header names a leader (a hint: it may have died since)."""
        leader: int = _LEADING.unpack_from(self._map().mem, _LEADING_AT)[0]
        return leader != 0

    # -- the follower's side -----------------------------------------------------------
    def park(self, request: bytes) -> tuple[int, int] | None:
        """Put a request in a free slot; ``(slot, ticket)``, or None if none fits."""
        if len(request) > SLOT_DATA:
            return None
        m = self._map()
        ticket = random.getrandbits(63) or 1
        self._lock_queue(m)
        try:
            for attempt in range(2):
                for i in range(SLOTS):
                    if self._slot(m, i)[0] == FREE:
                        self._write(m, i, PENDING, m.pid, ticket, 0, 0, request)
                        pending, taken = self._counts(m)
                        self._set_counts(m, pending + 1, taken)
                        return i, ticket
                if attempt == 0 and not self._reap(m):
                    break
            return None
        finally:
            self._unlock_queue(m)

    def _reap(self, m: _Mapped) -> bool:
        """Free the PENDING and DONE slots of processes that died."""
        freed = False
        pending, taken = self._counts(m)
        for i in range(SLOTS):
            state, pid, *_ = self._slot(m, i)
            if state in (PENDING, DONE) and not _alive(pid):
                self._write(m, i, FREE, 0, 0, 0, 0, b"")
                pending -= state == PENDING
                freed = True
        self._set_counts(m, max(pending, 0), taken)
        return freed

    def state(self, slot: int, ticket: int) -> int:
        """The slot's state as seen without the lock (a hint: re-check under it)."""
        m = self._map()
        state, _, owner_ticket, *_ = self._slot(m, slot)
        return state if owner_ticket == ticket else FREE

    def collect(self, slot: int, ticket: int) -> bytes | None:
        """The outcome if the request is DONE (the slot is then freed), else None."""
        m = self._map()
        self._lock_queue(m)
        try:
            state, _, owner_ticket, _, _, length = self._slot(m, slot)
            if owner_ticket != ticket or state != DONE:
                return None
            outcome = self._data(m, slot, length)
            self._write(m, slot, FREE, 0, 0, 0, 0, b"")
            return outcome
        finally:
            self._unlock_queue(m)

    def withdraw(self, slot: int, ticket: int) -> bool:
        """Take back a request that no leader has taken yet."""
        m = self._map()
        self._lock_queue(m)
        try:
            state, _, owner_ticket, *_ = self._slot(m, slot)
            if owner_ticket != ticket or state != PENDING:
                return False
            self._write(m, slot, FREE, 0, 0, 0, 0, b"")
            pending, taken = self._counts(m)
            self._set_counts(m, max(pending - 1, 0), taken)
            return True
        finally:
            self._unlock_queue(m)

    # -- the leader's side ---------------------------------------------------------
    def orphans(self, *, scan: bool) -> list[tuple[int, int, int, int]]:
        """TAKEN slots left by a leader that died: ``(slot, ticket, group, position)``.

        Only a leader calls this: while it holds the leader lock nobody else
        runs requests, so every TAKEN slot is an orphan. The header's counts
        are hints (a process killed between a slot and the counts leaves them
        short), trusted only without ``scan``; a scan also corrects them.
        """
        m = self._map()
        if not scan and self._counts(m)[1] == 0:
            return []
        self._lock_queue(m)
        try:
            found = []
            pending = 0
            for i in range(SLOTS):
                state, _, ticket, group, pos, _ = self._slot(m, i)
                if state == TAKEN:
                    found.append((i, ticket, group, pos))
                pending += state == PENDING
            self._set_counts(m, pending, len(found))
            return found
        finally:
            self._unlock_queue(m)

    def take(self, group: int, *, scan: bool) -> list[Taken]:
        """Mark every PENDING request TAKEN by ``group`` and return them in order
        (without ``scan``, only if the header's count says there are some)."""
        m = self._map()
        if not scan and self._counts(m)[0] == 0:
            return []
        self._lock_queue(m)
        try:
            out: list[Taken] = []
            taken = 0
            for i in range(SLOTS):
                state, pid, ticket, _, _, length = self._slot(m, i)
                if state == PENDING:
                    self._write(m, i, TAKEN, pid, ticket, group, len(out), None)
                    out.append(Taken(i, ticket, self._data(m, i, length)))
                taken += state == TAKEN
            self._set_counts(m, 0, taken + len(out))
            return out
        finally:
            self._unlock_queue(m)

    def finish(self, done: list[tuple[int, int, bytes | None]]) -> None:
        """Write outcomes back (DONE), or hand requests back (None: PENDING again)."""
        if not done:
            return
        m = self._map()
        self._lock_queue(m)
        try:
            pending, taken = self._counts(m)
            for slot, ticket, outcome in done:
                state, pid, owner_ticket, *_ = self._slot(m, slot)
                if state != TAKEN or owner_ticket != ticket:
                    continue
                taken -= 1
                if outcome is None:
                    self._write(m, slot, PENDING, pid, ticket, 0, 0, None)
                    pending += 1
                elif len(outcome) > SLOT_DATA:
                    raise AssertionError("an outcome does not fit its slot")
                else:
                    self._write(m, slot, DONE, pid, ticket, 0, 0, outcome)
            self._set_counts(m, pending, max(taken, 0))
        finally:
            self._unlock_queue(m)

    # -- one write ----------------------------------------------------------------
    def submit(
        self,
        encode: Callable[[], bytes],
        lead: Callable[[bool], R],
        timeout: float,
    ) -> R | bytes:
        """Have one request run, by leading a group or by a leader.

        ``lead(own)`` runs a group as the leader, with this writer's own
        request if ``own``, and returns its outcome (or raises its error).
        Returns that, or the outcome bytes a leader wrote back.
        """
        if self.try_lead():
            try:
                return lead(True)
            finally:
                self.unlead()
        request = encode()
        parked = self.park(request)
        deadline = time.monotonic() + timeout
        pause = POLL_FAST
        time.sleep(pause)  # a leader is at work: give it time before looking
        polls = 0
        while True:
            if parked is not None and self.state(*parked) == DONE:
                outcome = self.collect(*parked)
                if outcome is not None:
                    return outcome
            polls += 1
            if (not self.leading() or polls % TRY_EVERY == 0) and self.try_lead():
                try:
                    if parked is None:
                        return lead(True)
                    lead(False)  # runs ours among the parked ones
                except BaseException:
                    # Ours is either still parked (take it back: nothing was
                    # written) or has its outcome written back: collect it.
                    if parked is None or self.withdraw(*parked):
                        raise
                finally:
                    self.unlead()
                continue
            if time.monotonic() > deadline and (parked is None or self.withdraw(*parked)):
                raise StoreError(
                    f"the store {self.path.removesuffix('-group')} stayed locked by another "
                    f"process for {timeout} s; nothing was written",
                    path=self.path,
                )
            # Past the deadline but taken by a live leader: its outcome is coming.
            time.sleep(pause)
            pause = min(pause * 1.5, POLL_SLOW)


_groups: dict[str, tuple[CommitGroup, int]] = {}
_groups_lock = threading.Lock()
# Keys whose owner was garbage collected. The finalizer only appends here: it
# may run inside any allocation, also in a thread that holds _groups_lock, so
# it must not take that lock itself.
_released: collections.deque[str] = collections.deque()


def group_for(db_path: str, owner: object) -> CommitGroup:
    """The one CommitGroup of this process for a database file.

    One per file, not per store object: two leaders in one process would
    share the process's record locks and mistake each other's requests for
    orphans. It is released (file closed, mapping dropped) once every
    ``owner`` that asked for it has been garbage collected.
    """
    key = os.path.realpath(db_path)
    with _groups_lock:
        _drain_released()
        group, users = _groups.get(key, (None, 0))
        if group is None:
            group = CommitGroup(key)
        _groups[key] = (group, users + 1)
    weakref.finalize(owner, _released.append, key)
    return group


def _drain_released() -> None:
    """Count down the groups of collected owners; close those nobody uses (lock held)."""
    while _released:
        key = _released.popleft()
        group, users = _groups.get(key, (None, 0))
        if group is None:
            continue
        if users > 1:
            _groups[key] = (group, users - 1)
        else:
            del _groups[key]
            group.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
