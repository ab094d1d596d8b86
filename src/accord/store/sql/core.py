"""The core the shared SQL logic stands on: connections, transactions, migrations.

:class:`Conn` and :class:`Cursor` are what the logic needs of a driver's
connection (``?`` placeholders); :class:`_Tx` is one write transaction;
:func:`migrations` and :func:`upgrade` create and upgrade the schema.
:class:`SqlBase` declares the plumbing a backend supplies (``_write``,
``_read``, ``_snap``, ids) and the dialect attributes each backend's
dialect module fills in (``sqlite/dialect.py``, ``postgres/dialect.py``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from typing import Any, Protocol, TypeVar

from accord.hooks import Hooks, RefusedWrite, TaskEvent
from accord.store.base import Store

T = TypeVar("T")

_OPEN_STATES = "('pending', 'ready', 'running')"
# The columns of a task that hooks are told of (SqlBase._tell_task).
TASK_ROW = "id, run_id, name, queue, attempts"


class Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """What the shared logic needs of a connection: ``?`` placeholders."""

    def execute(self, sql: str, params: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, params: Iterable[Any], /) -> Any: ...


def migrations(dialect: str) -> list[tuple[int, str]]:
    """The numbered migration scripts of a backend, in order."""
    folder = resources.files("accord.store").joinpath("migrations", dialect)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text("utf-8")))
    return sorted(found)


def statements(script: str) -> list[str]:
    """A migration script's statements."""
    # Our migrations have no "--" inside string literals, so comments end at the line's end.
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def upgrade(c: Conn, version: int, scripts: list[tuple[int, str]]) -> None:
    """Bring a store at schema ``version`` (0: empty) up to the last script,
    inside the caller's transaction."""
    if version == 0:
        c.execute("CREATE TABLE accord_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        c.execute("INSERT INTO accord_meta (key, value) VALUES ('schema_version', '0')")
    for number, script in scripts:
        if number > version:
            for statement in statements(script):
                c.execute(statement)
            c.execute(
                "UPDATE accord_meta SET value = ? WHERE key = 'schema_version'", (str(number),)
            )


class _Tx:
    """One write transaction: its connection, its clock, the runs it touched,
    whether it made tasks ready (new work for nodes), whether it is news to
    anyone waiting, and the events to tell hooks once it commits."""

    __slots__ = ("c", "news", "now", "tell", "touched", "work")

    def __init__(self, c: Conn, now: float) -> None:
        self.c = c
        self.now = now
        self.touched: set[int] = set()
        self.work = False  # it made tasks ready: idle nodes may claim them
        self.news = True  # it changed what someone may be waiting for
        self.tell: list[tuple[str, Any]] = []  # (hook method, event), after commit


class SqlBase(Store):
    """The plumbing and the dialect every part of the SQL task store uses;
    subclasses give it connections."""

    # Dialect (each backend's dialect module): row locks for reads that a
    # write depends on (empty where the writer locks the whole database).
    lock: str  # the rows read will be changed by this transaction
    lock_t: str  # the same, for the ``t`` table of a join
    share: str  # the rows read must not change before this transaction ends
    skip_locked: str  # claim rows no other claimer holds
    skip_locked_t: str
    share_skip_locked: str  # lock rows no other transaction is changing, skip the rest
    greatest: str  # the larger of two values
    claimers: int  # claims that may race for the same candidates: read this many batches
    _next_lost_sweep = 0.0  # store time of the next look for lost nodes
    _next_sweep = 0.0  # store time of the next look for expired leases and deadlines

    def __init__(self) -> None:
        # Nodes (of this process) whose last claim left ready tasks they may
        # take later: they claim again when their results go in.
        self._left_behind: set[int] = set()
        self.hooks = Hooks()

    @abc.abstractmethod
    def _write(self, body: Callable[[_Tx], T]) -> T:
        """Run ``body`` in one write transaction and commit; run it again if
        the backend aborted it for a reason that a new try resolves."""

    @abc.abstractmethod
    def _read(self, sql: str, params: Any = ()) -> list[Any]:
        """One read statement, outside any transaction."""

    @abc.abstractmethod
    def _snap(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn``'s reads on one connection, seeing one state of the store."""

    @abc.abstractmethod
    def _new_task_ids(self, c: Conn, count: int) -> list[int]:
        """``count`` unused task ids, for rows this transaction will insert."""

    @abc.abstractmethod
    def _ids_in(self, column: str, ids: list[int]) -> tuple[str, Any]:
        """A condition ``column`` is one of ``ids``, and its parameter."""

    def _event(
        self,
        tx: _Tx,
        kind: str,
        run_id: int | None,
        task_id: int | None,
        detail: str | None,
        node_id: int | None = None,
    ) -> None:
        tx.news = True
        tx.c.execute(
            "INSERT INTO events (at, run_id, task_id, node_id, kind, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (tx.now, run_id, task_id, node_id, kind, detail),
        )

    def _tell_task(
        self,
        tx: _Tx,
        method: str,
        row: tuple[Any, ...],
        *,
        node_id: int | None = None,
        duration: float | None = None,
        error: str | None = None,
        error_type: str | None = None,
    ) -> None:
        """Tell hooks of a task's ``method`` once ``tx`` commits; ``row`` is
        the task's ``(id, run_id, name, queue, attempts)``."""
        if self.hooks.wants(method):
            task_id, run_id, name, queue, attempt = row
            event = TaskEvent(
                task_id,
                run_id,
                name,
                queue,
                tx.now,
                node_id=node_id,
                attempt=attempt,
                duration=duration,
                error=error,
                error_type=error_type,
            )
            tx.tell.append((method, event))

    def _refused(self, fence: tuple[int, int], what: str, now: float | None = None) -> None:
        """Tell hooks, now, that a write by an attempt with a stale fence was refused."""
        if self.hooks.wants("write_refused"):
            at = self.now() if now is None else now
            self.hooks.emit("write_refused", RefusedWrite(fence[0], fence[1], what, at))

    def _committed(self, tx: _Tx) -> None:
        """``tx`` committed: tell hooks what it recorded."""
        if tx.tell:
            self.hooks.deliver(tx.tell)

    def _late(self, tx: _Tx, task_id: int, run_id: int, by: float, what: str) -> None:
        tx.c.execute("UPDATE tasks SET late = 1 WHERE id = ? AND late = 0", (task_id,))
        self._event(tx, "deadline_missed", run_id, task_id, f"{what} {by:.3f}s after its deadline")
