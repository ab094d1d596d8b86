"""Group commit across processes for the embedded store (SQLite only).

SQLite commits one transaction at a time, and a durable commit costs one
fsync of the WAL (about 0.2 ms here), so processes that each write one key
per transaction are capped at a few thousand commits per second together,
less with the lock's hand-over gaps. Group commit lifts the cap without
weakening durability: one process commits the pending writes of the others
with its own, in one transaction and one fsync.

How it works (a PostgreSQL backend needs none of this: its server groups
commits itself):

- A small shared file next to the database (``<db>-group``, mode 0600) holds
  a table of request slots, mapped into every process that writes state. A
  slot is FREE, PENDING (a request waits), TAKEN (a leader runs it in group G
  at position i) or DONE (its outcome is written back: in the slot, or, when
  it does not fit, left in the database as position i of group G).
- A writer that gets the *leader* lock (an ``fcntl`` lock on one byte of the
  file, released by the kernel if the process dies) runs its own request and
  every PENDING one in one database transaction, one after the other. No
  savepoints: a request that fails (a fence that no longer holds, a lease
  that expired) fails before its first write, so it leaves nothing behind,
  and a failure of the database itself fails the whole group. A writer that
  does not get the lock parks its request in a slot and sleeps on the slot's
  state word (a futex; polling where there is none): the leader wakes it
  when its outcome is back, or to lead when it lets go of the lock, and it
  wakes by itself every few milliseconds to try the lock (the leader may
  have died). A new leader waits a fraction of a millisecond for the
  writers of the last group to park again, so that one commit serves them.
- Each group has a random 63-bit id, never reused, and the leader records the
  group's outcomes in the database (``kv_groups``) under that id, in the
  same transaction as its writes. So "group G is in the database" is exactly
  "group G committed". A leader that dies leaves TAKEN slots; the next
  leader, which scans every slot (there are no counters to trust), finds
  them and reads G: if it is there the requests were applied and their
  outcomes are copied to the slots; if not they were not applied, and they
  go back to PENDING.
- A request is applied only if its owner is alive when a leader takes it:
  the owner holds an ``fcntl`` lock on its slot's own byte from before it
  parks until after it frees the slot, and the leader tests it (``F_GETLK``;
  kernel-kept, so a reused pid cannot pass for the owner). A PENDING request
  of a dead owner is freed, never applied. An owner gives up on (withdraws)
  only a request that is still PENDING, so it is never told "nothing was
  written" about a request that is applied later.
- Outcomes are never bounded by the slot: one too large for it stays in the
  database, and ``kv_groups`` rows are pruned only when no slot refers to
  them (the leader prunes under the leader lock, and only leaders add
  references).
- Every change of a slot writes its contents first and its one-byte state
  last: a process killed half-way leaves the slot in its old state, which
  the next leader handles as above. The slot table is guarded by a second
  lock, held a few microseconds at a time. The locks are POSIX record locks,
  which belong to the process, so threads of one process also take a
  ``threading.Lock``; a process keeps one descriptor of the file (closing
  any descriptor of a file drops all of the process's locks on it).
- The file's blocks are reserved (``posix_fallocate``) before it is mapped,
  and it is initialised with ``pwrite``: a full disk is ``StorageFullError``,
  never a SIGBUS from writing through the map.

Requests and outcomes are opaque bytes here (see :mod:`accord.store.sqlite.state`). A request
too large for a slot is not parked: its writer waits for the leader lock.
"""

from __future__ import annotations

import collections
import fcntl
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable

from accord.errors import StoreError, StoreUnavailableError
from accord.store.sqlite.slots import (
    _LAST_SIZE,
    _LAST_SIZE_AT,
    _OWNER_BYTE,
    _STATES_AT,
    DONE,
    FREE,
    FUTEX_WAIT_S,
    IN_DB,
    PENDING,
    POLL_FAST,
    POLL_SLOW,
    SLOT_DATA,
    SLOTS,
    TAKEN,
    TRY_EVERY,
    InDatabase,
    Orphan,
    R,
    SlotTable,
    Taken,
    _futex,
    _Mapped,
    new_group_id,
)


class CommitGroup(SlotTable):
    """The shared request table of one database file (see the module docstring)."""

    # -- the follower's side -----------------------------------------------------------
    def park(self, request: bytes) -> tuple[int, int] | None:
        """Put a request in a free slot; ``(slot, ticket)``, or None if none fits."""
        if len(request) > SLOT_DATA:
            return None
        m = self._map()
        ticket = new_group_id()
        self._lock_queue(m)
        try:
            for attempt in range(2):
                states = self._states(m)
                for i in range(SLOTS):
                    if states[i] != FREE:
                        continue
                    try:
                        # Our claim first: from now on a leader sees us alive.
                        fcntl.lockf(m.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _OWNER_BYTE + i)
                    except OSError:
                        continue  # held by someone who abandoned a slot: not usable
                    self._mine.add(ticket)
                    self._set(m, i, PENDING, (m.pid, 0, ticket, 0, 0, len(request)), request)
                    return i, ticket
                if attempt == 0 and not self._reap(m):
                    break
            return None
        finally:
            self._unlock_queue(m)

    def _reap(self, m: _Mapped) -> bool:
        """Free the slots of owners that died (the queue lock is held).

        Only PENDING and DONE ones: a TAKEN slot belongs to the leader until
        it writes the outcome back (a leader that died leaves it to the next).
        """
        freed = False
        states = self._states(m)
        for i in range(SLOTS):
            if states[i] in (PENDING, DONE):
                pid, _, ticket, *_ = self._body(m, i)
                if not self._alive(m, i, pid, ticket):
                    self._set(m, i, FREE)
                    freed = True
        return freed

    def state(self, slot: int, ticket: int) -> int:
        """The slot's state as seen without the lock (a hint: re-check under it)."""
        m = self._map()
        state = m.mem[_STATES_AT + 4 * slot]
        return state if self._body(m, slot)[2] == ticket else FREE

    def lost(self, slot: int, ticket: int) -> bool:
        """Whether our request's slot is no longer ours (checked under the lock)."""
        m = self._map()
        self._lock_queue(m)
        try:
            return self._body(m, slot)[2] != ticket or m.mem[_STATES_AT + 4 * slot] == FREE
        finally:
            self._unlock_queue(m)

    def collect(self, slot: int, ticket: int) -> bytes | InDatabase | None:
        """The outcome if the request is DONE, else None.

        Bytes: the slot is freed. :class:`InDatabase`: the outcome is in the
        database, and the slot stays DONE (so that the row is not pruned)
        until :meth:`release`.
        """
        m = self._map()
        self._lock_queue(m)
        try:
            _, flags, owner_ticket, group, pos, length = self._body(m, slot)
            if owner_ticket != ticket or m.mem[_STATES_AT + 4 * slot] != DONE:
                return None
            if flags & IN_DB:
                return InDatabase(group, pos)
            outcome = self._data(m, slot, length)
            self._free(m, slot, ticket)
            return outcome
        finally:
            self._unlock_queue(m)

    def release(self, slot: int, ticket: int) -> None:
        """Free our slot whatever its state (an outcome read, or given up on)."""
        m = self._map()
        self._lock_queue(m)
        try:
            state = m.mem[_STATES_AT + 4 * slot]
            if self._body(m, slot)[2] != ticket or state == FREE:
                return
            if state == TAKEN:
                # A leader is at work on it and writes it back: drop our claim
                # only, so that the next reap frees the slot.
                self._mine.discard(ticket)
                fcntl.lockf(m.fd, fcntl.LOCK_UN, 1, _OWNER_BYTE + slot)
            else:
                self._free(m, slot, ticket)
        finally:
            self._unlock_queue(m)

    def withdraw(self, slot: int, ticket: int) -> bool:
        """Take back a request that no leader has taken yet."""
        m = self._map()
        self._lock_queue(m)
        try:
            owner_ticket = self._body(m, slot)[2]
            if owner_ticket != ticket or m.mem[_STATES_AT + 4 * slot] != PENDING:
                return False
            self._free(m, slot, ticket)
            return True
        finally:
            self._unlock_queue(m)

    # -- the leader's side (the leader lock is held) -----------------------------------
    def orphans(self) -> list[Orphan]:
        """TAKEN slots: while we hold the leader lock nobody else runs requests,
        so each was left by a leader that died, or that could not tell whether
        its group committed. Scans every slot."""
        m = self._map()
        # A leader marks slots TAKEN under the leader lock, which we hold now:
        # reading without the queue lock cannot miss one.
        if TAKEN not in self._states(m):
            return []
        self._lock_queue(m)
        try:
            states = self._states(m)
            found = []
            for i in range(SLOTS):
                if states[i] == TAKEN:
                    _, _, ticket, group, pos, _ = self._body(m, i)
                    found.append(Orphan(i, ticket, group, pos))
            return found
        finally:
            self._unlock_queue(m)

    def take(self, group: int, own: bool) -> list[Taken]:
        """Mark every PENDING request of a live owner TAKEN by ``group``, in
        slot order, and return them; free those whose owner died. ``own``:
        the leader runs a request of its own too (it counts in the group's
        size, the hint of :meth:`gather`)."""
        m = self._map()
        # A request parked after this look is served by the next group (its
        # writer polls, and leads itself if nobody else does).
        if PENDING not in self._states(m):
            _LAST_SIZE.pack_into(m.mem, _LAST_SIZE_AT, int(own))
            return []
        self._lock_queue(m)
        try:
            out: list[Taken] = []
            states = self._states(m)
            for i in range(SLOTS):
                if states[i] != PENDING:
                    continue
                pid, _, ticket, _, _, length = self._body(m, i)
                if not self._alive(m, i, pid, ticket):
                    self._set(m, i, FREE)  # never applied: nobody is there to learn of it
                    continue
                request = self._data(m, i, length)
                self._set(m, i, TAKEN, (pid, 0, ticket, group, len(out), length))
                out.append(Taken(i, ticket, request))
            _LAST_SIZE.pack_into(m.mem, _LAST_SIZE_AT, len(out) + own)
            return out
        finally:
            self._unlock_queue(m)

    def finish(self, done: Iterable[tuple[int, int, int, int, bytes | None]]) -> None:
        """Write outcomes back to TAKEN slots ``(slot, ticket, group, position, outcome)``.

        An outcome that fits goes in the slot; one that does not stays in the
        database (group ``group`` position ``position``: the caller made sure
        it is there). ``None`` hands the request back (PENDING again: it was
        not applied).
        """
        m = self._map()
        self._lock_queue(m)
        try:
            for slot, ticket, group, pos, outcome in done:
                pid, _, owner_ticket, *_ = self._body(m, slot)
                if m.mem[_STATES_AT + 4 * slot] != TAKEN or owner_ticket != ticket:
                    continue
                if outcome is None:
                    self._set(m, slot, PENDING)  # the request is still in the slot
                elif len(outcome) > SLOT_DATA:
                    self._set(m, slot, DONE, (pid, IN_DB, ticket, group, pos, 0))
                else:
                    self._set(m, slot, DONE, (pid, 0, ticket, 0, 0, len(outcome)), outcome)
                m.wake(slot)
        finally:
            self._unlock_queue(m)

    def referenced(self) -> set[int]:
        """Groups whose rows in the database a slot still needs (reaps dead
        owners first). Only leaders add references, so under the leader lock
        a row not in this set is never needed again."""
        m = self._map()
        self._lock_queue(m)
        try:
            self._reap(m)
            states = self._states(m)
            refs = set()
            for i in range(SLOTS):
                if states[i] in (TAKEN, DONE):
                    _, flags, _, group, _, _ = self._body(m, i)
                    if states[i] == TAKEN or flags & IN_DB:
                        refs.add(group)
            return refs
        finally:
            self._unlock_queue(m)

    # -- one write ----------------------------------------------------------------
    def submit(
        self,
        encode: Callable[[], bytes],
        lead: Callable[[bool], R],
        fetch: Callable[[InDatabase], bytes],
        timeout: float,
    ) -> R | bytes:
        """Have one request run, by leading a group or by a leader.

        ``lead(own)`` runs a group as the leader, with this writer's own
        request if ``own``, and returns its outcome (or raises its error).
        ``fetch`` reads an outcome left in the database. Returns the outcome
        of ``lead(True)``, or the outcome bytes a leader wrote back.
        """
        if self.try_lead():
            try:
                return lead(True)
            finally:
                self.unlead()
        parked = self.park(encode())
        if parked is None:
            return self._lead_when_free(lead, timeout)
        try:
            return self._wait(parked, lead, fetch, timeout)
        except BaseException:
            # Interrupted or failed: take ours back if no leader has it yet;
            # otherwise it is applied (or not) without us, and the slot is
            # reaped once its outcome is in.
            if not self.withdraw(*parked):
                self.release(*parked)
            raise

    def _lead_when_free(self, lead: Callable[[bool], R], timeout: float) -> R:
        """A request that could not be parked: lead as soon as the lock is free."""
        deadline = time.monotonic() + timeout
        pause = POLL_FAST
        while not self.try_lead():
            if time.monotonic() > deadline:
                raise self._locked(timeout)
            time.sleep(pause)
            pause = min(pause * 1.5, POLL_SLOW)
        try:
            return lead(True)
        finally:
            self.unlead()

    def _wait(
        self,
        parked: tuple[int, int],
        lead: Callable[[bool], R],
        fetch: Callable[[InDatabase], bytes],
        timeout: float,
    ) -> bytes:
        m = self._map()
        slot = parked[0]
        deadline = time.monotonic() + timeout
        pause = FUTEX_WAIT_S if _futex is not None else POLL_FAST
        polls = 0
        while True:
            state = self.state(*parked)
            if state == DONE:
                outcome = self.collect(*parked)
                if isinstance(outcome, InDatabase):
                    try:
                        return fetch(outcome)
                    finally:
                        self.release(*parked)
                if outcome is not None:
                    return outcome
            elif state == FREE and self.lost(*parked):
                # Freed under us while we hold the slot's lock, which the rules
                # above forbid (only the file's being rewritten by hand could
                # do it). Freed from PENDING the request was not applied, from
                # DONE it was: we cannot tell which, so we say so rather than guess.
                raise StoreUnavailableError(
                    f"the outcome of a write to {self.path.removesuffix('-group')} is unknown: "
                    "its group-commit slot was freed while it waited; read the keys back "
                    "before writing again",
                    path=self.path,
                    outcome_unknown=True,
                )
            elif (
                polls
                and (_futex is not None or not self.leading() or polls % TRY_EVERY == 0)
                and self.try_lead()
            ):
                try:
                    lead(False)  # runs ours among the parked ones
                except Exception:
                    # Ours is either still parked (take it back: nothing was
                    # written) or has its outcome coming: keep waiting for it.
                    if self.withdraw(*parked):
                        raise
                finally:
                    self.unlead()
                continue
            if time.monotonic() > deadline and self.withdraw(*parked):
                raise self._locked(timeout)
            # Past the deadline but taken by a leader: its outcome is coming.
            m.sleep(slot, state, pause)
            polls += 1
            if _futex is None:
                pause = min(pause * 1.5, POLL_SLOW)

    def _locked(self, timeout: float) -> StoreError:
        return StoreError(
            f"the store {self.path.removesuffix('-group')} stayed locked by another "
            f"process for {timeout} s; nothing was written",
            path=self.path,
        )


_groups: dict[str, tuple[CommitGroup, int]] = {}
_groups_lock = threading.Lock()
# Keys whose owner was garbage collected. The finalizer only appends here: it
# may run inside any allocation, also in a thread that holds _groups_lock, so
# it must not take that lock itself.
_released: collections.deque[str] = collections.deque()


def group_for(db_path: str, owner: object, mode: int = 0o600) -> CommitGroup:
    """The one CommitGroup of this process for a database file.

    One per file, not per store object: two leaders in one process would
    share the process's record locks and mistake each other's requests for
    orphans, and a second descriptor of the file, once closed, would drop
    the process's locks. It is released (file closed, mapping dropped) once
    every ``owner`` that asked for it has been garbage collected.
    """
    key = os.path.realpath(db_path)
    with _groups_lock:
        _drain_released()
        group, users = _groups.get(key, (None, 0))
        if group is None:
            group = CommitGroup(key, mode)
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
