"""Collecting what a task attempt prints and logs, for ``accord logs``.

While a task's function runs (:func:`capturing`, around the call in
:func:`accord.worker.execute.execute`), its writes to ``sys.stdout`` and
``sys.stderr`` (``print`` included) and the ``logging`` records that reach
the root logger are collected for the attempt, with the time and the stream
(``stdout``, ``stderr``, or ``LEVEL:logger`` for a record).

One mechanism serves both kinds of slot: ``sys.stdout``/``sys.stderr`` are
replaced, once per process, by proxies, and the root logger gets one handler;
both route by a :class:`contextvars.ContextVar` holding the attempt's buffer.
In a process slot one task runs at a time; in thread slots each task sees its
own buffer. Writes made with no buffer in the context (the node's own, a
thread that the task started without copying its context) go on to the real
stream as before.

Decisions:

- Tee: what is captured is still written to the real stream, so the node's
  console shows it as it did (a record is shown there by the handlers the
  node configured, as before).
- Level: a record is captured if its logger lets it through, that is at the
  root logger's level (a logger of the task's own with a level of its own
  decides for itself). A slot process sets its root to INFO
  (:func:`prepare_slot_process`, its console still shows warnings and up);
  ``accord worker`` sets the node's root to INFO or its ``--log-level`` if
  lower, its console showing ``--log-level`` and up. So records at INFO and
  above are captured, unless an embedded node's host configured its root
  logger higher. A logger with ``propagate = False`` is not captured.
- Bound: a buffer keeps at most :data:`~accord.store.sql.logs.MAX_ATTEMPT_BYTES`
  bytes not yet written (oldest lines dropped first, counted); the store keeps
  the same bound per attempt over all its writes, and reports what it dropped.
- Writes: a flusher thread (one per process) sends each running attempt's new
  lines every :data:`FLUSH_EVERY` seconds with the attempt's fence; the rest
  go when the function returns, before the outcome is sent. A write the store
  refuses (stale fence) or cannot take (store down) is dropped, not retried:
  logs never hold up or fail an attempt.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

from accord.store.base import TaskStore
from accord.store.sql.logs import MAX_ATTEMPT_BYTES, line_size

log = logging.getLogger("accord.node")

FLUSH_EVERY = 2.0
CAPTURE_LEVEL = logging.INFO


class Buffer:
    """The lines one attempt wrote and that are not yet in the store."""

    def __init__(self, store: Callable[[], TaskStore], task_id: int, fence: int) -> None:
        self.store = store  # opened on the first write: most attempts write nothing
        self.task_id = task_id
        self.fence = fence
        self.lines: deque[tuple[float, str, str, int]] = deque()
        self.size = 0
        self.dropped = 0
        self.partial: dict[str, str] = {}  # stream -> text after its last newline
        self.lock = threading.Lock()  # the lines
        self.sending = threading.Lock()  # one write to the store at a time, in order
        self.refused = False

    def write(self, stream: str, text: str) -> None:
        with self.lock:
            head = self.partial.pop(stream, "") + text
            *complete, rest = head.split("\n")
            now = time.time()
            for line in complete:
                self._add(now, stream, line)
            if rest:
                if len(rest) > MAX_ATTEMPT_BYTES:  # a line without end: keep its end
                    self._add(now, stream, rest)
                else:
                    self.partial[stream] = rest

    def record(self, at: float, stream: str, text: str) -> None:
        with self.lock:
            self._add(at, stream, text)

    def _add(self, at: float, stream: str, text: str) -> None:
        if len(text) > MAX_ATTEMPT_BYTES:
            self.dropped += line_size(text[:-MAX_ATTEMPT_BYTES])
            text = text[-MAX_ATTEMPT_BYTES:]
        n = line_size(text)
        self.lines.append((at, stream, text, n))
        self.size += n
        while self.size > MAX_ATTEMPT_BYTES:
            gone = self.lines.popleft()[3]
            self.size -= gone
            self.dropped += gone

    def take(self, final: bool) -> tuple[list[tuple[float, str, str]], int]:
        with self.lock:
            if final:
                now = time.time()
                for stream, rest in self.partial.items():
                    self._add(now, stream, rest)
                self.partial.clear()
            lines = [(at, stream, text) for at, stream, text, _ in self.lines]
            dropped = self.dropped
            self.lines.clear()
            self.size = 0
            self.dropped = 0
        return lines, dropped

    def send(self, final: bool = False) -> None:
        """Write the new lines to the store (the flusher's and the last write)."""
        if not (self.lines or self.partial or self.dropped or self.sending.locked()):
            return  # nothing new, and no write of the flusher's under way: most attempts
        with self.sending:
            lines, dropped = self.take(final)
            if self.refused or not (lines or dropped):
                return
            try:
                store = self.store()
                self.refused = not store.append_logs(self.task_id, self.fence, lines, dropped)
            except Exception as exc:  # logs never fail an attempt
                log.debug("task %d: could not write its logs: %s", self.task_id, exc)
                if not final:
                    self._put_back(lines, dropped)  # the next write tries them again

    def _put_back(self, lines: list[tuple[float, str, str]], dropped: int) -> None:
        """Lines a write did not store, back before the newer ones (within the bound)."""
        with self.lock:
            newer = list(self.lines)
            self.lines.clear()
            self.size = 0
            self.dropped += dropped
            for at, stream, text in lines:
                self._add(at, stream, text)
            for at, stream, text, _ in newer:
                self._add(at, stream, text)


_current: contextvars.ContextVar[Buffer | None] = contextvars.ContextVar(
    "accord_capture", default=None
)
_active: set[Buffer] = set()
_active_lock = threading.Lock()
_installed = threading.Lock()
_flusher: threading.Thread | None = None


class _Proxy:
    """``sys.stdout`` or ``sys.stderr``: writes go to the real stream, and
    also to the buffer of the attempt running in this context."""

    def __init__(self, name: str, real: TextIO) -> None:
        self._name = name
        self._real = real

    def write(self, text: str) -> int:
        buffer = _current.get()
        if buffer is not None and isinstance(text, str):
            buffer.write(self._name, text)
        return self._real.write(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _Handler(logging.Handler):
    """On the root logger: a record made in an attempt's context goes to its buffer."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        buffer = _current.get()
        if buffer is None:
            return
        try:
            text = self.format(record)
        except Exception:
            text = str(record.msg)
        stream = f"{record.levelname}:{record.name}"
        for line in text.split("\n"):
            buffer.record(record.created, stream, line)


_handler = _Handler()


def _install() -> None:
    """Put the proxies and the handler in place (again, if someone replaced
    ``sys.stdout`` since, or removed the handler)."""
    global _flusher
    if (
        isinstance(sys.stdout, _Proxy)
        and isinstance(sys.stderr, _Proxy)
        and _flusher is not None
        and _handler in logging.getLogger().handlers
    ):
        return  # in place already: the usual case
    with _installed:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is not None and not isinstance(stream, _Proxy):
                setattr(sys, name, _Proxy(name, stream))
        root = logging.getLogger()
        if _handler not in root.handlers:
            root.addHandler(_handler)
        if _flusher is None or not _flusher.is_alive():
            _flusher = threading.Thread(target=_flush_loop, name="accord-logs", daemon=True)
            _flusher.start()


def prepare_slot_process() -> None:
    """In a slot process (which serves nothing but tasks): let INFO records
    reach the capture, the console showing warnings and errors as before."""
    root = logging.getLogger()
    if not root.handlers:
        # Python's last resort stops showing warnings once root has a handler.
        console = logging.StreamHandler()
        console.setLevel(logging.WARNING)
        root.addHandler(console)
    if root.level == logging.NOTSET or root.level > CAPTURE_LEVEL:
        root.setLevel(CAPTURE_LEVEL)


def _flush_loop() -> None:
    while True:
        time.sleep(FLUSH_EVERY)
        with _active_lock:
            buffers = list(_active)
        for buffer in buffers:
            buffer.send()


class capturing:  # a context manager used as a function: ``with capturing(...)``
    """Collect what the code run inside prints and logs, for attempt ``fence``
    of task ``task_id``; its last lines are written when it ends."""

    __slots__ = ("buffer", "token")

    def __init__(self, store: Callable[[], TaskStore], task_id: int, fence: int) -> None:
        self.buffer = Buffer(store, task_id, fence)

    def __enter__(self) -> Buffer:
        _install()
        self.token = _current.set(self.buffer)
        with _active_lock:
            _active.add(self.buffer)
        return self.buffer

    def __exit__(self, *exc: object) -> None:
        _current.reset(self.token)
        with _active_lock:
            _active.discard(self.buffer)
        self.buffer.send(final=True)
