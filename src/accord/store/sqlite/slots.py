"""The shared slot file of group commit: its layout, mapping, locks and futex.

One file per database (``<db>-group``, mode 0600), mapped into every process
that writes state: a header, one 32-bit state word per slot (FREE, PENDING,
TAKEN, DONE) and the slots' contents. :class:`SlotTable` is this process's
access to it: the record locks (queue, leader, owners), reading and writing
slots (contents first, state last), telling whether a slot's owner lives,
and sleeping on and waking a slot's state word. What the slots are for, and
the rules that make it safe, are in :mod:`accord.store.sqlite.group`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import platform
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from accord.errors import StorageFullError, StoreError

R = TypeVar("R")

MAGIC = b"ACCGRP02"
SLOTS = 32
SLOT_SIZE = 16 * 1024
_HEADER = struct.Struct("<8sII")  # magic, slots, slot size
_LEADING = struct.Struct("<I")  # pid of the leader, 0 when none (a hint)
_LEADING_AT = 16
# How many requests the last group committed (a hint for the next leader).
_LAST_SIZE = struct.Struct("<I")
_LAST_SIZE_AT = 20
# One 32-bit word per slot: its state (in its low byte, written last, in one
# store, so that a process killed while it changes a slot leaves the slot in
# its previous state). A word, so that a parked writer can sleep on it (futex).
_STATES_AT = 64
HEADER_SIZE = 256
# A slot's contents: owner pid, flags, ticket, group, position, data length.
_BODY = struct.Struct("<IIQQII")
SLOT_DATA = SLOT_SIZE - _BODY.size
FILE_SIZE = HEADER_SIZE + SLOTS * SLOT_SIZE

FREE, PENDING, TAKEN, DONE = 0, 1, 2, 3
# Flag of a DONE slot: the outcome is position ``pos`` of group ``group`` in
# the database (it did not fit the slot).
IN_DB = 1
# Record-lock bytes (locks may lie past the end of the file).
_LEADER_BYTE, _QUEUE_BYTE = 0, 1
_OWNER_BYTE = 64  # + slot: held by the slot's owner while the slot is in use

# struct flock for F_GETLK (Linux, 64-bit off_t): type, whence, start, len, pid.
_FLOCK = struct.Struct("@hhqqi4x")

# A parked writer sleeps on its slot's state word (a futex, on Linux): the
# leader wakes it when it writes the outcome back, and wakes a PENDING one
# when it lets go of the leader lock. It wakes by itself after FUTEX_WAIT_S
# to notice a leader that died. Where there is no futex it polls its slot
# this often, backing off to the slower pace (a commit takes about 0.2 ms:
# polling faster only burns the leader's CPU).
FUTEX_WAIT_S = 0.002
POLL_FAST = 0.0001
POLL_SLOW = 0.0004
# While the header names a leader, a polling writer tries the leader lock only
# every this many polls (to notice a leader that died holding the name).
TRY_EVERY = 8
# A leader waits up to this long for the writers of the last group to park
# their next requests before it takes the parked ones (see CommitGroup.gather).
GATHER_S = 0.00015


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_FUTEX_WAIT, _FUTEX_WAKE = 0, 1  # shared (not FUTEX_PRIVATE): across processes


def _futex_call() -> Callable[..., int] | None:
    """``syscall(SYS_futex, ...)`` where it is known, else None."""
    number = {"x86_64": 202, "aarch64": 98}.get(platform.machine())
    if not sys.platform.startswith("linux") or number is None:
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    call.restype = ctypes.c_long

    def futex(address: int, op: int, value: int, timeout: object) -> int:
        return int(
            call(
                ctypes.c_long(number),
                ctypes.c_void_p(address),
                ctypes.c_int(op),
                ctypes.c_uint32(value),
                timeout,
                None,
                ctypes.c_int(0),
            )
        )

    return futex


_futex = _futex_call()


@dataclass(slots=True)
class Taken:
    """A request a leader runs: where it came from and what it asks."""

    slot: int
    ticket: int
    request: bytes


@dataclass(slots=True)
class Orphan:
    """A TAKEN slot found by a leader: its previous leader died (or could not
    tell whether its group committed)."""

    slot: int
    ticket: int
    group: int
    position: int


@dataclass(slots=True)
class InDatabase:
    """An outcome left in the database: position ``position`` of group ``group``."""

    group: int
    position: int


def new_group_id() -> int:
    """A group id that no other group has had (63 random bits, never 0)."""
    return (int.from_bytes(os.urandom(8), "little") >> 1) or 1


def _full(path: str, exc: OSError) -> StoreError:
    db = path.removesuffix("-group")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(
            f"the store's disk is full ({db}): its group-commit file {path} needs "
            f"{FILE_SIZE // 1024} KB; free space and retry: nothing was written",
            path=db,
        )
    return StoreError(
        f"cannot set up the group-commit file {path} of the store {db}: {exc}; check that "
        "its directory is writable: nothing was written",
        path=db,
    )


def _reserve(fd: int, size: int) -> None:
    """Allocate the file's blocks (ENOSPC now rather than SIGBUS later)."""
    try:
        os.posix_fallocate(fd, 0, FILE_SIZE)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        # A file system without fallocate: write the zeros ourselves.
        if size < FILE_SIZE:
            os.pwrite(fd, bytes(FILE_SIZE - size), size)
            os.fsync(fd)


class _Mapped:
    """This process's view of the slot file (one descriptor per process)."""

    def __init__(self, path: str, mode: int = 0o600) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        except OSError as exc:
            raise _full(path, exc) from exc
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, _QUEUE_BYTE)
            try:
                st = os.fstat(fd)
                if st.st_mode & 0o777 != mode and st.st_uid == os.geteuid():
                    os.fchmod(fd, mode)  # the store's file mode, whatever the umask
                # Reserve the blocks before mapping: writing through a map onto
                # a full disk raises SIGBUS; this raises ENOSPC instead. Also
                # for a file that exists (an older accord made it sparse).
                _reserve(fd, st.st_size)
                head = os.pread(fd, _HEADER.size, 0).ljust(_HEADER.size, b"\0")
                if _HEADER.unpack(head) != (MAGIC, SLOTS, SLOT_SIZE):
                    # New (or written by another version of accord, which must
                    # not be running: see docs/state.md). Written with pwrite,
                    # not through the map, so that any failure is an errno.
                    os.pwrite(fd, bytes(FILE_SIZE), 0)
                    os.pwrite(fd, _HEADER.pack(MAGIC, SLOTS, SLOT_SIZE), 0)
                mem = mmap.mmap(fd, FILE_SIZE)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, _QUEUE_BYTE)
        except OSError as exc:
            os.close(fd)
            raise _full(path, exc) from exc
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.mem = mem
        self.pid = os.getpid()
        # The address of the state words in this mapping (for the futex).
        self.words: ctypes.Array[ctypes.c_uint32] | None = (ctypes.c_uint32 * SLOTS).from_buffer(
            mem, _STATES_AT
        )
        self.base = ctypes.addressof(self.words)

    def close(self) -> None:
        self.words = None  # the mapping cannot close while exported
        try:
            self.mem.close()
        finally:
            os.close(self.fd)

    def wake(self, slot: int) -> None:
        if _futex is not None:
            _futex(self.base + 4 * slot, _FUTEX_WAKE, 1, None)

    def sleep(self, slot: int, state: int, seconds: float) -> None:
        """Sleep until slot's state word is no longer ``state``, a wake, or ``seconds``."""
        if _futex is None:
            time.sleep(seconds)
            return
        whole = int(seconds)
        _futex(
            self.base + 4 * slot,
            _FUTEX_WAIT,
            state,
            ctypes.byref(_Timespec(whole, int((seconds - whole) * 1e9))),
        )


class SlotTable:
    """This process's view of the shared request table of one database file."""

    def __init__(self, db_path: str, mode: int = 0o600) -> None:
        self.path = f"{db_path}-group"
        self.mode = mode  # the store's file mode: who may write beside its owner
        self._mapped: _Mapped | None = None
        self._open_lock = threading.Lock()
        # POSIX record locks belong to the process: threads exclude each other here.
        self._leader_guard = threading.Lock()
        self._queue_guard = threading.Lock()
        # Tickets of this process's requests in use: the liveness test of a
        # slot that names our own pid (its owner may be a dead process whose
        # pid we were given).
        self._mine: set[int] = set()

    # -- plumbing ---------------------------------------------------------------
    def _map(self) -> _Mapped:
        mapped = self._mapped
        if mapped is None or mapped.pid != os.getpid():
            with self._open_lock:
                mapped = self._mapped
                if mapped is None or mapped.pid != os.getpid():
                    # After fork the parent's locks are not ours: open our own
                    # (the parent's descriptor stays open: closing it here
                    # would not matter to the parent, but costs nothing to keep).
                    self._leader_guard = threading.Lock()
                    self._queue_guard = threading.Lock()
                    self._mine = set()
                    mapped = self._mapped = _Mapped(self.path, self.mode)
        return mapped

    def close(self) -> None:
        mapped, self._mapped = self._mapped, None
        if mapped is not None and mapped.pid == os.getpid():
            mapped.close()

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

    @staticmethod
    def _states(m: _Mapped) -> bytes:
        return m.mem[_STATES_AT : _STATES_AT + 4 * SLOTS : 4]

    @staticmethod
    def _body(m: _Mapped, i: int) -> tuple[int, int, int, int, int, int]:
        pid, flags, ticket, group, pos, length = _BODY.unpack_from(
            m.mem, HEADER_SIZE + i * SLOT_SIZE
        )
        return pid, flags, ticket, group, pos, length

    @staticmethod
    def _set(
        m: _Mapped,
        i: int,
        state: int,
        body: tuple[int, int, int, int, int, int] | None = None,
        data: bytes | None = None,
    ) -> None:
        """Change slot ``i``: data, then body, then (last, one byte) its state.

        The body is packed aside and copied in: ``pack_into`` zeroes its
        target before it packs, so a writer reading its slot's ticket without
        the lock (:meth:`state`) would see 0 for an instant while a leader
        rewrites the body with the same ticket. A copy changes no byte that
        keeps its value.
        """
        base = HEADER_SIZE + i * SLOT_SIZE
        if data is not None:
            m.mem[base + _BODY.size : base + _BODY.size + len(data)] = data
        if body is not None:
            m.mem[base : base + _BODY.size] = _BODY.pack(*body)
        m.mem[_STATES_AT + 4 * i] = state

    def _data(self, m: _Mapped, i: int, length: int) -> bytes:
        base = HEADER_SIZE + i * SLOT_SIZE + _BODY.size
        return bytes(m.mem[base : base + length])

    def _alive(self, m: _Mapped, i: int, pid: int, ticket: int) -> bool:
        """Whether the owner of slot ``i`` still lives (the queue lock is held)."""
        if pid == m.pid:
            return ticket in self._mine
        probe = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, _OWNER_BYTE + i, 1, 0)
        kind = _FLOCK.unpack(fcntl.fcntl(m.fd, fcntl.F_GETLK, probe))[0]
        # F_UNLCK: no other process holds the byte, so its owner is gone.
        return bool(kind != fcntl.F_UNLCK)

    def _free(self, m: _Mapped, i: int, ticket: int) -> None:
        """Free our own slot ``i`` and drop our claim on it (the queue lock is held)."""
        self._set(m, i, FREE)
        self._mine.discard(ticket)
        fcntl.lockf(m.fd, fcntl.LOCK_UN, 1, _OWNER_BYTE + i)

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
        # A request parked after our take() waits for a leader: wake its
        # writer to lead (it would otherwise wait for a new writer or its timeout).
        states = self._states(m)
        if PENDING in states:
            m.wake(states.index(PENDING))

    def gather(self, own: bool) -> None:
        """Wait (briefly) for the writers of the last group to park again.

        The writers of a group get their outcomes together, and come back
        with their next requests a moment later: a leader that took the
        parked requests at once would commit few of them and leave the rest
        to another commit (one fsync each). Waiting up to GATHER_S for as
        many requests as the last group had puts them in one commit. Only a
        matter of speed: correctness never depends on what is gathered.
        """
        m = self._map()
        expected = _LAST_SIZE.unpack_from(m.mem, _LAST_SIZE_AT)[0] - own
        if expected <= 0:
            return
        deadline = time.perf_counter() + GATHER_S
        while self._states(m).count(PENDING) < expected and time.perf_counter() < deadline:
            time.sleep(0.00002)

    def leading(self) -> bool:
        """Whether the header names a leader (a hint: it may have died since)."""
        leader: int = _LEADING.unpack_from(self._map().mem, _LEADING_AT)[0]
        return leader != 0
