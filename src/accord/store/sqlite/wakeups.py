"""Wake-ups across processes for the embedded store (SQLite tells no one of a commit)."""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import tempfile

from accord.store.sqlite.url import dir_mode


class Wakeups:
    """Cross-process wake-ups for one store file, over Unix datagram sockets.

    SQLite tells no one of a commit: without this, a node in another process
    learns of new work, and a client of its result, only when its next poll
    of ``PRAGMA data_version`` comes round (1 to 20 ms). Here each waiter
    binds a socket in a folder beside the file (``work-*`` for nodes, ``news-*``
    for result waiters), and a writer, after its COMMIT, sends one byte to
    each socket of the kind its commit concerns. A wake-up only says "look
    again": the waiter still reads the store, so a lost or spurious datagram
    costs a poll, never correctness. A socket whose process died refuses the
    datagram and is removed by the sender.
    """

    def __init__(self, db_path: str, file_mode: int = 0o600) -> None:
        # Who may wake whom follows the store's files: their mode (0600 by
        # default, 0660 for a store a group shares) for each socket, and the
        # folder's to match.
        self.file_mode = file_mode
        real = os.path.realpath(db_path)
        folder = real + "-wake"
        # A socket path is at most 108 bytes: fall back to the temp folder.
        if len(folder) > 60:
            digest = hashlib.sha1(real.encode()).hexdigest()[:16]
            folder = os.path.join(tempfile.gettempdir(), f"accord-wake-{digest}")
        self.folder = folder
        self.enabled = hasattr(socket, "AF_UNIX")
        self._names = itertools.count()
        self._sender: socket.socket | None = None

    def listen(self, kind: str) -> socket.socket | None:
        """A bound, non-blocking socket that commits of ``kind`` wake; None
        where this platform or folder cannot have one (callers then poll)."""
        if not self.enabled:
            return None
        try:
            if not os.path.isdir(self.folder):
                os.makedirs(self.folder, exist_ok=True)
                os.chmod(self.folder, dir_mode(self.file_mode))  # whatever the umask
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            path = os.path.join(self.folder, f"{kind}-{os.getpid()}-{next(self._names)}")
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            sock.bind(path)
            os.chmod(path, self.file_mode)
            sock.setblocking(False)
        except OSError:
            return None
        return sock

    @staticmethod
    def forget(sock: socket.socket) -> None:
        try:
            name = sock.getsockname()
            sock.close()
            if isinstance(name, str) and name:
                os.unlink(name)
        except OSError:
            pass

    def notify(self, kinds: tuple[str, ...]) -> None:
        """Wake every socket of these kinds (after a commit; never raises)."""
        if not self.enabled or not kinds:
            return
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        sender = self._sender
        if sender is None:
            try:
                sender = self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sender.setblocking(False)
            except OSError:
                self.enabled = False
                return
        for name in names:
            if not name.startswith(kinds):
                continue
            path = os.path.join(self.folder, name)
            try:
                sender.sendto(b"w", path)
            except BlockingIOError:
                pass  # its buffer is full: it has wake-ups to read already
            except (ConnectionRefusedError, FileNotFoundError):
                try:
                    os.unlink(path)  # its process is gone
                except OSError:
                    pass
            except OSError:
                pass

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None


def drain(sock: socket.socket) -> None:
    try:
        while sock.recv(64):
            pass
    except OSError:
        pass
