"""The task store's logic, written once in the SQL that SQLite and PostgreSQL share.

A backend subclass supplies connections and transactions (``_write``,
``_read``) and a few dialect strings; the rules for submitting, claiming,
completing, retrying, cancelling and finishing runs live here, so both
backends keep the same semantics.

Concurrency: on SQLite every write transaction holds the one database lock,
so reads inside it are already stable. On PostgreSQL transactions run side by
side at READ COMMITTED, so a read that a write depends on takes a row lock
(the dialect's ``lock``/``share`` strings, empty on SQLite), claims skip rows
that another claimer holds (``skip_locked``), and a run's row is locked before
deciding whether it has ended. Transactions that lose a deadlock or a race on
a unique key are run again by ``_write``.
"""

from __future__ import annotations

import abc
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol, TypeVar

from accord._checks import MAX_ERROR_CHARS, MAX_TRACEBACK_CHARS, clean_text, seconds_or_none
from accord.errors import (
    ConflictError,
    FencedError,
    NotFoundError,
)
from accord.scheduling.policy import (
    Candidate,
    CostPolicy,
    NodeSpec,
    Policy,
    fits,
    needs_of,
    req_key,
)
from accord.store.base import (
    ClaimedTask,
    Completion,
    Event,
    NewRun,
    NewTask,
    NodeInfo,
    Outcome,
    RunInfo,
    Store,
    TaskInfo,
    TaskResult,
    TaskState,
)

T = TypeVar("T")

MAX_LEVELS = 64
# A task whose lease expires this many times (its nodes died or hung while
# holding it) is failed; lease losses do not count against its retries.
MAX_LEASE_LOSSES = 3
DEFAULT_POLICY = CostPolicy()


@dataclass(slots=True)
class _LimitState:
    running: int
    concurrency: int | None
    rate: float | None
    tokens: float
    used: bool = False


@dataclass(slots=True)
class _Plan:
    """How a batch of submitted tasks is written: each task's id, which of
    them are new (indices), their dependencies as ids, and the run of each
    task found by its idempotency key."""

    ids: list[int]
    fresh: list[int]
    deps_of: list[list[int]]
    runs: dict[int, int]


_OPEN_STATES = "('pending', 'ready', 'running')"
# Idempotency keys looked up per statement (far below both backends' limits
# on bound parameters).
_KEYS_PER_READ = 500
_EXPIRED_BATCH = 64
# Expired leases and missed deadlines are looked for at most this often by
# each process (claims are much more frequent under load).
SWEEP_INTERVAL = 0.05

_TASK_INFO_SQL = """
SELECT t.id, t.run_id, t.parent_id, t.name, t.queue, t.state, t.priority, t.attempts,
       t.max_attempts, t.fence, t.node_id, n.name, t.created_at, t.started_at,
       t.finished_at, t.ready_at, t.deadline_at, t.requires, t.resources, t.error,
       t.error_type, t.traceback, t.forward_to, t.losses
FROM tasks t LEFT JOIN nodes n ON n.id = t.node_id
"""


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


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform in [d/2, d], d = base * 2^(n-1)."""
    delay: float = min(cap, base * (2.0 ** max(0, attempt - 1)))
    return delay * (0.5 + random.random() / 2)


class _Tx:
    """One write transaction: its connection, its clock, the runs it touched,
    whether it made tasks ready (new work for nodes) and whether it is news
    to anyone waiting."""

    __slots__ = ("c", "news", "now", "touched", "work")

    def __init__(self, c: Conn, now: float) -> None:
        self.c = c
        self.now = now
        self.touched: set[int] = set()
        self.work = False  # it made tasks ready: idle nodes may claim them
        self.news = True  # it changed what someone may be waiting for


def storable(done: Completion) -> Completion:
    """``done`` with what no store (or not every store) can hold made
    storable: NUL and lone surrogates in its texts escaped, overlong texts cut,
    a retry delay that is not a finite number of seconds dropped (the task's
    backoff applies), a handle past 64 bits recorded as a failure."""
    if done.outcome is Outcome.OK:
        return done
    if done.outcome is Outcome.FORWARD:
        target = done.forward_to
        if isinstance(target, int) and _MIN_ID <= target <= _MAX_ID:
            return done
        return Completion(
            done.task_id,
            done.fence,
            Outcome.ERROR,
            error=f"returned a handle to task {clean_text(repr(target), 200)}, which does not "
            "exist",
            error_type="BadHandle",
            retryable=False,
            duration=done.duration,
        )
    error, error_type, trace = done.error, done.error_type, done.traceback
    delay = done.retry_delay
    clean = Completion(
        done.task_id,
        done.fence,
        Outcome.ERROR,
        error=None if error is None else clean_text(str(error), MAX_ERROR_CHARS),
        error_type=None if error_type is None else clean_text(str(error_type), 200),
        traceback=None if trace is None else clean_text(str(trace), MAX_TRACEBACK_CHARS),
        retryable=bool(done.retryable),
        retry_delay=None if delay is None else seconds_or_none(delay),
        duration=done.duration,
    )
    return clean


_MIN_ID, _MAX_ID = -(2**63), 2**63 - 1


class SqlStore(Store):
    """The task store over a SQL backend; subclasses give it connections."""

    # Dialect: row locks for reads that a write depends on (empty where the
    # whole database is locked by the writer anyway).
    lock = ""  # the rows read will be changed by this transaction
    lock_t = ""  # the same, for the ``t`` table of a join
    share = ""  # the rows read must not change before this transaction ends
    skip_locked = ""  # claim rows no other claimer holds
    skip_locked_t = ""
    share_skip_locked = ""  # lock rows no other transaction is changing, skip the rest
    greatest = "max"  # the larger of two values
    claimers = 1  # claims that may race for the same candidates: read this many batches
    _next_lost_sweep = 0.0  # store time of the next look for lost nodes
    _next_sweep = 0.0  # store time of the next look for expired leases and deadlines

    def __init__(self) -> None:
        # Nodes (of this process) whose last claim left ready tasks they may
        # take later: they claim again when their results go in.
        self._left_behind: set[int] = set()

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

    # -- submission -------------------------------------------------------
    def submit(
        self,
        tasks: list[NewTask],
        *,
        run: NewRun | None = None,
        run_id: int | None = None,
        parent: tuple[int, int] | None = None,
    ) -> tuple[int, list[int]]:
        def body(tx: _Tx) -> tuple[int, list[int]]:
            c = tx.c
            run_id_ = run_id
            parent_id = None
            if parent is not None:
                row = c.execute(
                    f"SELECT run_id, fence, state FROM tasks WHERE id = ?{self.share}", (parent[0],)
                ).fetchone()
                if row is None:
                    raise NotFoundError(f"parent task {parent[0]} does not exist")
                if row[1] != parent[1] or row[2] != "running":
                    raise FencedError(
                        f"task {parent[0]} attempt with fence {parent[1]} no longer holds its "
                        "lease; its child tasks were not submitted",
                        task_id=parent[0],
                        fence=parent[1],
                    )
                run_id_, parent_id = row[0], parent[0]
            # Ids first (those of tasks that exist already, and new ones), so
            # that a new run names its root at once.
            plan = self._plan(c, tasks, parent_id)
            if tasks and not plan.fresh:
                # Every task exists (its key was used before, or an earlier attempt
                # of the parent made it): nothing is written. A new run is not
                # made either: the answer is the run of the first task.
                if run is not None:
                    run_id_ = plan.runs.get(plan.ids[0], run_id_)
                return _needed(run_id_), plan.ids
            if run is not None:
                # A rooted run is one task (Task.submit, App.start); were its
                # first task an existing one, the run would have no root of its own.
                rooted = run.rooted and bool(tasks) and plan.fresh[0] == 0
                run_id_ = c.execute(
                    "INSERT INTO runs (app, name, state, created_at, root_task_id) "
                    "VALUES (?, ?, 'running', ?, ?) RETURNING id",
                    (run.app, run.name, tx.now, plan.ids[0] if rooted else None),
                ).fetchone()[0]
            run_id_ = _needed(run_id_)
            self._insert_tasks(tx, run_id_, tasks, parent_id, plan)
            if not tasks:
                tx.touched.add(run_id_)  # an empty run has ended already
            self._finish_runs(tx)
            return run_id_, plan.ids

        return self._write(body)

    def _plan(self, c: Conn, tasks: list[NewTask], parent_id: int | None) -> _Plan:
        """The id of each task of a batch: the task that exists already for
        it, else a new id (``fresh``).

        A task exists already when an earlier attempt of its parent made it
        (the same ``seq``), or when its idempotency key was used: by any
        task, in any run and any batch, including an earlier task of this
        batch. A used key with another task name, other arguments or other
        dependencies is refused with :class:`ConflictError` (nothing of the
        batch is written), as it is for one task alone.
        """
        ids: list[int | None] = [None] * len(tasks)
        seqs = [task.seq for task in tasks if task.seq is not None]
        if parent_id is not None and seqs:
            # Children made by an earlier attempt of the parent are not made again.
            where, param = self._ids_in("seq", seqs)
            made = dict(
                c.execute(
                    f"SELECT seq, id FROM tasks WHERE parent_id = ? AND {where}",
                    (parent_id, param),
                ).fetchall()
            )
            for i, task in enumerate(tasks):
                if task.seq in made:
                    ids[i] = made[task.seq]
        first_with: dict[str, int] = {}  # key -> the batch's first task with it
        aliases: list[tuple[int, int]] = []  # (a later task, the first) with one key
        for i, task in enumerate(tasks):
            key = task.idempotency_key
            if key is None:
                continue
            if key in first_with:
                aliases.append((i, first_with[key]))
            else:
                first_with[key] = i
        used: dict[int, tuple[int, str, str, bytes]] = {}  # batch index -> (id, key, name, args)
        runs: dict[int, int] = {}
        lookup = [key for key, i in first_with.items() if ids[i] is None]
        for start in range(0, len(lookup), _KEYS_PER_READ):
            chunk = lookup[start : start + _KEYS_PER_READ]
            marks = ", ".join("?" * len(chunk))
            for task_id, run_id, key, name, args in c.execute(
                "SELECT id, run_id, idempotency_key, name, args FROM tasks "
                f"WHERE idempotency_key IN ({marks})",
                chunk,
            ).fetchall():
                i = first_with[key]
                ids[i] = task_id
                runs[task_id] = run_id
                used[i] = (task_id, key, name, bytes(args))
        alias_of = dict(aliases)
        fresh = [i for i, task_id in enumerate(ids) if task_id is None and i not in alias_of]
        for i, task_id in zip(fresh, self._new_task_ids(c, len(fresh)), strict=True):
            ids[i] = task_id
        for later, first in aliases:
            ids[later] = ids[first]
        known = [task_id for task_id in ids if task_id is not None]  # all of them now
        # Handles among the arguments are stored as positions: compare what they point at.
        deps_of = [[known[-d - 1] if d < 0 else d for d in task.deps] for task in tasks]
        if used:
            where, param = self._ids_in("task_id", [entry[0] for entry in used.values()])
            stored: dict[int, list[int]] = {}
            for task_id, dep_id in c.execute(
                f"SELECT task_id, dep_id FROM deps WHERE {where} AND pos >= 0 "
                "ORDER BY task_id, pos",
                (param,),
            ).fetchall():
                stored.setdefault(task_id, []).append(dep_id)
            for i, (task_id, key, name, args) in used.items():
                task = tasks[i]
                if (name, args, stored.get(task_id, [])) != (task.name, task.args, deps_of[i]):
                    raise ConflictError(
                        f"idempotency key {key!r} was used for task {task_id} ({name}) with "
                        "other arguments; use a new key for a different call",
                        task_id=task_id,
                    )
        for later, first in aliases:
            a, b = tasks[later], tasks[first]
            if (a.name, a.args, deps_of[later]) != (b.name, b.args, deps_of[first]):
                raise ConflictError(
                    f"idempotency key {a.idempotency_key!r} was used for an earlier task of "
                    f"the same batch ({b.name}) with other arguments; use a new key for a "
                    "different call",
                    task_id=None if first in fresh else ids[first],
                )
        return _Plan(known, fresh, deps_of, runs)

    def _insert_tasks(
        self, tx: _Tx, run_id: int, tasks: list[NewTask], parent_id: int | None, plan: _Plan
    ) -> None:
        """Write a batch's new tasks in a few statements, whatever its size."""
        c = tx.c
        fresh, known, deps_of = plan.fresh, plan.ids, plan.deps_of
        states: dict[int, str] = {}
        made_here = {known[i] for i in fresh}
        outside = sorted({d for i in fresh for d in deps_of[i]} - made_here)
        if outside:
            # Tasks that existed before this transaction (also those found by
            # seq or by key): locked until this commit, since their ends must
            # see the new dependents.
            where, param = self._ids_in("id", outside)
            states.update(
                c.execute(f"SELECT id, state FROM tasks WHERE {where}{self.share}", (param,))
            )
        limits = {tasks[i].limit_key: tasks[i] for i in fresh if tasks[i].limit_key is not None}
        for task in limits.values():
            self._define_limit(tx, task)
        rows, dep_rows = [], []
        for i in fresh:
            task, task_id, deps = tasks[i], known[i], deps_of[i]
            remaining = 0
            blocked: str | None = None
            for dep in deps:
                state = states.get(dep)
                if state is None:
                    raise NotFoundError(
                        f"{task.name}() depends on task {dep}, which does not exist",
                        task_id=dep,
                    )
                if state in ("failed", "cancelled"):
                    blocked = f"dependency task {dep} {state}"
                elif state != "succeeded":
                    remaining += 1
            state = "cancelled" if blocked else ("pending" if remaining else "ready")
            states[task_id] = state
            tx.work = tx.work or state == "ready"
            if blocked:
                tx.touched.add(run_id)
            rows.append(
                (
                    task_id,
                    run_id,
                    parent_id,
                    task.seq,
                    task.idempotency_key,
                    task.queue,
                    task.name,
                    state,
                    task.priority,
                    task.weight,
                    task.size,
                    task.args,
                    len(deps),
                    remaining,
                    task.max_attempts,
                    task.backoff,
                    task.max_backoff,
                    task.timeout,
                    json.dumps(task.requires) if task.requires else None,
                    json.dumps(task.resources) if task.resources else None,
                    max(task.ready_at, tx.now + task.delay),
                    tx.now,
                    blocked,
                    tx.now if blocked else None,
                    task.deadline_at if task.deadline_in is None else tx.now + task.deadline_in,
                    req_key(task.requires),
                    task.limit_key,
                )
            )
            dep_rows += [(task_id, pos, dep) for pos, dep in enumerate(deps)]
        if rows:
            c.executemany(
                "INSERT INTO tasks (id, run_id, parent_id, seq, idempotency_key, queue, name, "
                "state, priority, weight, size, args, n_deps, deps_remaining, max_attempts, "
                "backoff, max_backoff, timeout, requires, resources, ready_at, created_at, "
                "error, finished_at, deadline_at, req_key, limit_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?, ?, ?)",
                rows,
            )
        if dep_rows:
            c.executemany("INSERT INTO deps (task_id, pos, dep_id) VALUES (?, ?, ?)", dep_rows)

    # -- the node's side --------------------------------------------------
    def exchange(
        self,
        node_id: int,
        completions: list[Completion],
        *,
        queue: str,
        claim: int,
        lease_ttl: float,
        node: NodeSpec | None = None,
        free: dict[str, float] | None = None,
        policy: Policy | None = None,
        only_if_work: bool = False,
    ) -> tuple[list[bool], list[ClaimedTask]]:
        # The node cleans what it sends; this is the store's own guard, so
        # that no caller's text makes a completion fail on one backend alone.
        ok = Outcome.OK
        completions = [done if done.outcome is ok else storable(done) for done in completions]

        def body(tx: _Tx) -> tuple[list[bool], list[ClaimedTask]]:
            # Nobody waits for a task to be claimed: a claim alone is no news,
            # unless it also ended something (its event says so).
            tx.news = bool(completions)
            accepted = self._complete_all(tx, node_id, completions) if completions else []
            self._finish_runs(tx)
            claimed = []
            if claim > 0 and (not only_if_work or tx.work or node_id in self._left_behind):
                claimed = self._claim(tx, node_id, queue, claim, lease_ttl, node, free, policy)
            return accepted, claimed

        return self._write(body)

    def _complete_all(self, tx: _Tx, node_id: int, completions: list[Completion]) -> list[bool]:
        """Record finished attempts (each is refused if its fence is stale)
        and count them to the node."""
        accepted = [self._complete(tx, done) for done in completions]
        self._count_completed(tx, node_id, sum(accepted))
        return accepted

    @staticmethod
    def _count_completed(tx: _Tx, node_id: int, count: int) -> None:
        if count:
            tx.c.execute(
                "UPDATE nodes SET completed = completed + ? WHERE id = ?", (count, node_id)
            )

    def _succeeded(
        self,
        tx: _Tx,
        task_id: int,
        run_id: int,
        deadline_at: float | None,
        late: int,
        limit_key: str | None,
    ) -> None:
        tx.touched.add(run_id)
        # Its concurrency limit has room again: new work for the other nodes.
        tx.work = tx.work or limit_key is not None
        if deadline_at is not None and deadline_at < tx.now and not late:
            self._late(tx, task_id, run_id, tx.now - deadline_at, "finished")

    def _complete(self, tx: _Tx, done: Completion) -> bool:
        c = tx.c
        if done.outcome is Outcome.OK:
            row = c.execute(
                "UPDATE tasks SET state = 'succeeded', result = ?, finished_at = ?, "
                "lease_expires_at = NULL WHERE id = ? AND fence = ? AND state = 'running' "
                "RETURNING run_id, deadline_at, late, limit_key",
                (done.result, tx.now, done.task_id, done.fence),
            ).fetchone()
            if row is None:
                return False
            self._succeeded(tx, done.task_id, *row)
            self._settle(tx, [(done.task_id, "succeeded")])
            return True
        row = c.execute(
            "SELECT run_id, attempts, max_attempts, backoff, max_backoff FROM tasks "
            f"WHERE id = ? AND fence = ? AND state = 'running'{self.lock}",
            (done.task_id, done.fence),
        ).fetchone()
        if row is None:
            return False
        run_id, attempts, max_attempts, backoff, max_backoff = row
        tx.touched.add(run_id)
        if done.outcome is Outcome.FORWARD:
            assert done.forward_to is not None
            self._forward(tx, done.task_id, done.forward_to)
        elif done.retryable and attempts < max_attempts:
            delay = done.retry_delay
            if delay is None:
                delay = backoff_delay(attempts, backoff, max_backoff)
            tx.work = True
            c.execute(
                "UPDATE tasks SET state = 'ready', ready_at = ?, node_id = NULL, "
                "lease_expires_at = NULL, error = ?, error_type = ?, traceback = ? WHERE id = ?",
                (tx.now + delay, done.error, done.error_type, done.traceback, done.task_id),
            )
            self._event(tx, "retry", run_id, done.task_id, f"{done.error} (next in {delay:.2f}s)")
        else:
            self._fail(tx, done.task_id, run_id, done.error, done.error_type, done.traceback)
            tx.work = True  # a concurrency limit it held may have room now
        return True

    def _fail(
        self,
        tx: _Tx,
        task_id: int,
        run_id: int,
        error: str | None,
        error_type: str | None,
        traceback: str | None,
    ) -> None:
        tx.c.execute(
            "UPDATE tasks SET state = 'failed', finished_at = ?, lease_expires_at = NULL, "
            "error = ?, error_type = ?, traceback = ? WHERE id = ?",
            (tx.now, error, error_type, traceback, task_id),
        )
        tx.touched.add(run_id)
        self._event(tx, "failed", run_id, task_id, error)
        self._settle(tx, [(task_id, "failed")])

    def _forward(self, tx: _Tx, task_id: int, target: int) -> None:
        c = tx.c
        row = c.execute(
            "SELECT state, result, error, error_type, traceback FROM tasks "
            f"WHERE id = ?{self.share}",
            (target,),
        ).fetchone()
        if row is None:
            c.execute(
                "UPDATE tasks SET state = 'failed', finished_at = ?, error = ? WHERE id = ?",
                (tx.now, f"returned a handle to task {target}, which does not exist", task_id),
            )
            self._settle(tx, [(task_id, "failed")])
            return
        state = row[0]
        if state in ("succeeded", "failed", "cancelled"):
            c.execute(
                "UPDATE tasks SET state = ?, result = ?, error = ?, error_type = ?, "
                "traceback = ?, finished_at = ?, lease_expires_at = NULL, forward_to = ? "
                "WHERE id = ?",
                (state, row[1], row[2], row[3], row[4], tx.now, target, task_id),
            )
            self._settle(tx, [(task_id, state)])
            return
        c.execute(
            "INSERT INTO deps (task_id, pos, dep_id) VALUES (?, -1, ?) "
            "ON CONFLICT (task_id, pos) DO UPDATE SET dep_id = excluded.dep_id",
            (task_id, target),
        )
        c.execute(
            "UPDATE tasks SET state = 'pending', deps_remaining = 1, forward_to = ?, "
            "lease_expires_at = NULL WHERE id = ?",
            (target, task_id),
        )

    def _settle(self, tx: _Tx, ended: list[tuple[int, str]]) -> None:
        """Propagate tasks' ends to the tasks that wait on them, a generation
        at a time: one query finds every waiting task of a generation."""
        c = tx.c
        while ended:
            states = dict(ended)
            ended = []
            where, param = self._ids_in("d.dep_id", list(states))
            rows = c.execute(
                "SELECT d.dep_id, t.id, t.run_id, t.deps_remaining, t.forward_to FROM deps d "
                f"JOIN tasks t ON t.id = d.task_id WHERE {where} AND t.state = 'pending' "
                f"ORDER BY t.id, d.pos{self.lock_t}",
                (param,),
            ).fetchall()
            left: dict[int, int] = {}  # waiting tasks' new counts of unfinished dependencies
            moved: set[int] = set()  # tasks no longer pending
            for done_id, dep_id, run_id, remaining, forward_to in rows:
                if dep_id in moved:
                    continue
                tx.touched.add(run_id)
                done_state = states[done_id]
                remaining = left.get(dep_id, remaining)
                if done_state == "succeeded" and remaining > 1:
                    left[dep_id] = remaining - 1
                    continue
                left.pop(dep_id, None)
                moved.add(dep_id)
                if done_state == "succeeded" and forward_to == done_id:
                    c.execute(
                        "UPDATE tasks SET state = 'succeeded', deps_remaining = 0, "
                        "finished_at = ?, result = (SELECT result FROM tasks WHERE id = ?) "
                        "WHERE id = ?",
                        (tx.now, done_id, dep_id),
                    )
                    ended.append((dep_id, "succeeded"))
                elif done_state == "succeeded":
                    tx.work = True
                    c.execute(
                        "UPDATE tasks SET state = 'ready', deps_remaining = 0, "
                        f"ready_at = {self.greatest}(ready_at, ?) WHERE id = ?",
                        (tx.now, dep_id),
                    )
                elif forward_to == done_id:
                    c.execute(
                        "UPDATE tasks SET (state, error, error_type, traceback) = "
                        "(SELECT state, error, error_type, traceback FROM tasks WHERE id = ?), "
                        "finished_at = ? WHERE id = ?",
                        (done_id, tx.now, dep_id),
                    )
                    ended.append((dep_id, done_state))
                else:
                    name = c.execute("SELECT name FROM tasks WHERE id = ?", (done_id,)).fetchone()
                    c.execute(
                        "UPDATE tasks SET state = 'cancelled', finished_at = ?, error = ? "
                        "WHERE id = ?",
                        (tx.now, f"dependency task {done_id} ({name[0]}) {done_state}", dep_id),
                    )
                    ended.append((dep_id, "cancelled"))
            if left:
                c.executemany(
                    "UPDATE tasks SET deps_remaining = ? WHERE id = ?",
                    [(count, dep_id) for dep_id, count in left.items()],
                )

    def _finish_runs(self, tx: _Tx) -> None:
        """Close the runs touched by this transaction that have no open task left.

        Transactions that end tasks of one run concurrently must not each see
        the other's task still open and both leave the run running. The open
        task that keeps a run going is read with a share lock, so it cannot
        end before this transaction commits (whoever ends it then sees this
        transaction's work), skipping tasks that other transactions are
        changing right now; when none is left, the run row is locked, so the
        last of those transactions decides after the others, with a fresh read.
        On SQLite the one writer holds the database and no lock is needed.
        """
        c = tx.c
        for run_id in sorted(tx.touched):
            # A ready task is locked only when nothing else keeps the run open:
            # claimers skip what is locked, and would pass it over.
            row = c.execute(
                "SELECT r.state, t.state, EXISTS (SELECT 1 FROM tasks o WHERE o.run_id = r.id "
                f"AND o.state IN ('pending', 'running') LIMIT 1{self.share_skip_locked}) "
                "OR EXISTS (SELECT 1 FROM tasks o WHERE o.run_id = r.id "
                f"AND o.state = 'ready' LIMIT 1{self.share_skip_locked}) "
                "FROM runs r LEFT JOIN tasks t ON t.id = r.root_task_id WHERE r.id = ?",
                (run_id,),
            ).fetchone()
            if row is None or row[0] != "running":
                continue
            if row[1] not in ("failed", "cancelled") and row[2]:
                continue  # the usual case: the run goes on
            run = c.execute(
                f"SELECT root_task_id FROM runs WHERE id = ? AND state = 'running'{self.lock}",
                (run_id,),
            ).fetchone()
            if run is None:
                continue
            root_id = run[0]
            # Read again after the lock: what committed meanwhile counts.
            root_state, root_error, still_open = c.execute(
                "SELECT (SELECT state FROM tasks WHERE id = ?), "
                "(SELECT error FROM tasks WHERE id = ?), "
                f"EXISTS (SELECT 1 FROM tasks WHERE run_id = ? AND state IN {_OPEN_STATES})",
                (root_id, root_id, run_id),
            ).fetchone()
            if root_state in ("failed", "cancelled"):
                # The workflow itself ended without a value: stop what it started.
                reason = f"run {run_id} {root_state}: task {root_id} {root_state}"
                open_ids = [
                    row[0]
                    for row in c.execute(
                        f"SELECT id FROM tasks WHERE run_id = ? AND state IN {_OPEN_STATES}",
                        (run_id,),
                    )
                ]
                for task_id in open_ids:
                    self._cancel_one(tx, task_id, reason)
                self._end_run(tx, run_id, root_state, root_error)
                continue
            if still_open:
                continue
            if root_id is not None:
                state, error = root_state, root_error
            else:
                counts = dict(
                    c.execute(
                        "SELECT state, count(*) FROM tasks WHERE run_id = ? GROUP BY state",
                        (run_id,),
                    ).fetchall()
                )
                state = (
                    "failed"
                    if counts.get("failed")
                    else "cancelled"
                    if counts.get("cancelled")
                    else "succeeded"
                )
                error = None if state == "succeeded" else f"{counts.get(state)} task(s) {state}"
            self._end_run(tx, run_id, state, error)

    def _end_run(self, tx: _Tx, run_id: int, state: str, error: str | None) -> None:
        tx.c.execute(
            "UPDATE runs SET state = ?, finished_at = ?, error = ? WHERE id = ?",
            (state, tx.now, error, run_id),
        )
        self._event(tx, f"run_{state}", run_id, None, error)

    def _claim(
        self,
        tx: _Tx,
        node_id: int,
        queue: str,
        limit: int,
        lease_ttl: float,
        node: NodeSpec | None,
        free: dict[str, float] | None,
        policy: Policy | None,
    ) -> list[ClaimedTask]:
        c = tx.c
        self._reclaim_expired(tx)
        now = tx.now
        node = node or NodeSpec()
        policy = policy or DEFAULT_POLICY
        free = dict(free) if free is not None else None
        per_level = limit * self.claimers + 16
        candidates = self._candidates(c, queue, now, per_level, node)
        self._left_behind.discard(node_id)
        if not candidates:
            return []
        speed = node.speed

        def rank(r: Any) -> tuple[float, ...]:
            return policy.key(Candidate(r[0], r[1], r[2], r[3], r[4], r[5]), now, speed)

        candidates.sort(key=rank)
        by_priority = getattr(policy, "priority_first", True)
        priority_of = {r[0]: r[1] for r in candidates}
        needs_by_id: dict[int, dict[str, float]] = {}
        limits: dict[str, _LimitState | None] = {}
        rows: list[Any] = []
        rest = candidates
        while rest and len(rows) < limit:
            picked, rest = self._pick(tx, rest, limit - len(rows), free, node, limits, needs_by_id)
            if not picked:
                break
            taken = self._take(c, picked, node_id, now + lease_ttl, now, by_priority)
            rows += taken
            if len(taken) == len(picked):
                break
            # Another transaction holds some of them: their resources are free
            # again, and nothing of lower priority may take their place.
            got = {row[0] for row in taken}
            missed = [task_id for task_id in picked if task_id not in got]
            for task_id in missed:
                if free is not None:
                    for kind, amount in needs_by_id[task_id].items():
                        free[kind] = free.get(kind, 0.0) + amount
            if by_priority:
                floor = max(priority_of[task_id] for task_id in missed)
                kept = [r for r in rest if r[1] >= floor]
                if len(kept) < len(rest) or min(priority_of[i] for i in missed) < floor:
                    # Work was left for a held task, which may be free again
                    # once its holder commits: have the nodes look again.
                    tx.work = True
                rest = kept
        self._save_limits(tx, limits)
        if len(rows) < len(candidates):
            self._left_behind.add(node_id)
        if not rows:
            return []
        order = {r[0]: i for i, r in enumerate(candidates)}
        rows.sort(key=lambda r: order[r[0]])
        inputs: dict[int, list[bytes | None]] = {}
        with_deps = [row[0] for row in rows if row[9]]
        if with_deps:
            where, param = self._ids_in("d.task_id", with_deps)
            for task_id, result in c.execute(
                "SELECT d.task_id, t.result FROM deps d JOIN tasks t ON t.id = d.dep_id "
                f"WHERE {where} AND d.pos >= 0 ORDER BY d.task_id, d.pos",
                (param,),
            ):
                inputs.setdefault(task_id, []).append(result)
        claimed = []
        for row in rows:
            if row[11] is not None and row[11] < now and not row[12]:
                self._late(tx, row[0], row[1], now - row[11], "started")
            dep_results = inputs.get(row[0], [])
            claimed.append(
                ClaimedTask(
                    id=row[0],
                    run_id=row[1],
                    name=row[2],
                    args=row[3],
                    dep_results=dep_results,
                    fence=row[4],
                    attempt=row[5],
                    max_attempts=row[6],
                    timeout=row[7],
                    size=row[8],
                    priority=row[10],
                    needs=needs_by_id[row[0]],
                )
            )
        return claimed

    def _candidates(
        self, c: Conn, queue: str, now: float, per_level: int, node: NodeSpec
    ) -> list[Any]:
        """Bounded candidates, as accord.scheduling.policy.bounded_candidates
        states them: the oldest and the cheapest eligible tasks of each
        (requirement class, priority) level the node can run, read off the
        tasks_ready and tasks_ready_cost indexes, plus the earliest deadlines.
        Rows: id, priority, weight, size, ready_at, deadline_at, resources,
        limit_key."""
        candidates: list[Any] = []
        # Levels are found by skipping through the index, one seek each.
        level = c.execute(
            "SELECT req_key, priority FROM tasks WHERE queue = ? AND state = 'ready' "
            "ORDER BY req_key, priority LIMIT 1",
            (queue,),
        ).fetchone()
        levels = 0
        while level is not None and levels < MAX_LEVELS:
            levels += 1
            level_req, level_priority = level
            if node.can_meet(level_req):
                params = (queue, level_req, level_priority, now, per_level)
                oldest = c.execute(
                    "SELECT id, priority, weight, size, ready_at, deadline_at, resources, "
                    "limit_key FROM tasks WHERE queue = ? AND state = 'ready' AND req_key = ? "
                    "AND priority = ? AND ready_at <= ? ORDER BY ready_at LIMIT ?",
                    params,
                ).fetchall()
                candidates += oldest
                if len(oldest) == per_level:
                    # A longer level: its cheapest tasks too, off their own
                    # index (tasks_ready_cost), so that a cheap task behind a
                    # run of dear ones is a candidate.
                    candidates += c.execute(
                        "SELECT id, priority, weight, size, ready_at, deadline_at, resources, "
                        "limit_key FROM tasks WHERE queue = ? AND state = 'ready' "
                        # "+ready_at": not a range on tasks_ready, which SQLite
                        # would otherwise pick and sort the whole level by cost.
                        "AND req_key = ? AND priority = ? AND +ready_at <= ? "
                        "ORDER BY weight + size, ready_at LIMIT ?",
                        params,
                    ).fetchall()
            level = self._next_level(c, queue, level_req, level_priority)
        # Tasks with deadlines come first inside their band, wherever they sit:
        # the earliest deadlines join the candidates through their own index.
        seen: set[int] = set()
        unique = []
        for r in candidates:
            if r[0] not in seen:
                seen.add(r[0])
                unique.append(r)
        candidates = unique
        for r in c.execute(
            "SELECT id, priority, weight, size, ready_at, deadline_at, resources, limit_key, "
            "req_key FROM tasks WHERE queue = ? AND state = 'ready' AND deadline_at IS NOT NULL "
            "AND ready_at <= ? ORDER BY deadline_at LIMIT ?",
            (queue, now, per_level),
        ):
            if r[0] not in seen and node.can_meet(r[8]):
                candidates.append(r[:8])
        return candidates

    def _pick(
        self,
        tx: _Tx,
        ranked: list[Any],
        want: int,
        free: dict[str, float] | None,
        node: NodeSpec,
        limits: dict[str, _LimitState | None],
        needs_by_id: dict[int, dict[str, float]],
    ) -> tuple[list[int], list[Any]]:
        """Up to ``want`` ranked candidates that fit the node's free resources
        and their limits, and the candidates not looked at yet."""
        picked: list[int] = []
        for i, r in enumerate(ranked):
            needs = needs_of(json.loads(r[6]) if r[6] else None)
            # ``free`` may be scaled up for prefetch; a task needing more than
            # the node has at all could never start there: leave it ready.
            if free is not None and not (fits(needs, free) and node.can_hold(needs)):
                continue
            if r[7] is not None and not self._limit_allows(tx, r[7], limits):
                continue
            picked.append(r[0])
            needs_by_id[r[0]] = needs
            if free is not None:
                for kind, amount in needs.items():
                    free[kind] = free.get(kind, 0.0) - amount
            if len(picked) >= want:
                return picked, ranked[i + 1 :]
        return picked, []

    def _take(
        self,
        c: Conn,
        picked: list[int],
        node_id: int,
        lease_until: float,
        now: float,
        by_priority: bool,
    ) -> list[Any]:
        """Claim the picked tasks that are still ready. Where claimers run side
        by side, only rows no other transaction holds are locked and taken:
        the others are skipped, never waited for (and only what is taken is
        locked, so the rest stay visible to the other claimers). With
        ``by_priority``, a held task also keeps back the picks of lower
        priority than its own: they must not jump ahead of it."""
        where, param = self._ids_in("id", picked)
        if not (self.skip_locked and by_priority):
            # (On SQLite the one writer never finds a row held by another.)
            taken = f"SELECT id FROM tasks WHERE {where} AND state = 'ready'{self.skip_locked}"
        else:
            taken = (
                f"WITH picks AS (SELECT id, priority FROM tasks WHERE {where} "
                "AND state = 'ready'), "
                "locked AS (SELECT id, priority FROM tasks WHERE id IN (SELECT id FROM picks) "
                f"AND state = 'ready'{self.skip_locked}), "
                "held AS (SELECT max(priority) AS priority FROM picks "
                "WHERE id NOT IN (SELECT id FROM locked)) "
                "SELECT l.id FROM locked l, held h "
                "WHERE h.priority IS NULL OR l.priority >= h.priority"
            )
        return c.execute(
            f"WITH taken AS ({taken}) "
            "UPDATE tasks SET state = 'running', node_id = ?, attempts = attempts + 1, "
            "fence = fence + 1, lease_expires_at = ?, started_at = ? "
            "WHERE id IN (SELECT id FROM taken) AND state = 'ready' "
            "RETURNING id, run_id, name, args, fence, attempts, max_attempts, timeout, size, "
            "n_deps, priority, deadline_at, late",
            (param, node_id, lease_until, now),
        ).fetchall()

    @staticmethod
    def _next_level(c: Conn, queue: str, req: str, priority: int) -> tuple[str, int] | None:
        """The (req_key, priority) level after this one in index order.

        Two strict-range seeks rather than one row-value comparison, which
        SQLite answers by scanning every row of the current level.
        """
        row = c.execute(
            "SELECT priority FROM tasks WHERE queue = ? AND state = 'ready' AND req_key = ? "
            "AND priority > ? ORDER BY priority LIMIT 1",
            (queue, req, priority),
        ).fetchone()
        if row is not None:
            return req, row[0]
        found = c.execute(
            "SELECT req_key, priority FROM tasks WHERE queue = ? AND state = 'ready' "
            "AND req_key > ? ORDER BY req_key, priority LIMIT 1",
            (queue, req),
        ).fetchone()
        return (found[0], found[1]) if found is not None else None

    def _late(self, tx: _Tx, task_id: int, run_id: int, by: float, what: str) -> None:
        tx.c.execute("UPDATE tasks SET late = 1 WHERE id = ? AND late = 0", (task_id,))
        self._event(tx, "deadline_missed", run_id, task_id, f"{what} {by:.3f}s after its deadline")

    def _define_limit(self, tx: _Tx, task: NewTask) -> None:
        burst = max(1.0, task.rate) if task.rate else 0.0
        tx.c.execute(
            "INSERT INTO limits (key, concurrency, rate, tokens, refilled_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
            "concurrency = excluded.concurrency, rate = excluded.rate",
            (task.limit_key, task.concurrency, task.rate, burst, tx.now),
        )

    def _limit_allows(self, tx: _Tx, key: str, cache: dict[str, _LimitState | None]) -> bool:
        if key not in cache:
            row = tx.c.execute(
                "SELECT concurrency, rate, tokens, refilled_at FROM limits "
                f"WHERE key = ?{self.lock}",
                (key,),
            ).fetchone()
            if row is None:
                cache[key] = None
            else:
                concurrency, rate, tokens, refilled_at = row
                running = tx.c.execute(
                    "SELECT count(*) FROM tasks WHERE limit_key = ? AND state = 'running'", (key,)
                ).fetchone()[0]
                if rate:
                    tokens = min(max(1.0, rate), tokens + (tx.now - refilled_at) * rate)
                cache[key] = _LimitState(running, concurrency, rate, tokens)
        state = cache[key]
        if state is None:
            return True
        if state.concurrency is not None and state.running >= state.concurrency:
            return False
        if state.rate and state.tokens < 1.0:
            return False
        state.running += 1
        if state.rate:
            state.tokens -= 1.0
            state.used = True
        return True

    def _save_limits(self, tx: _Tx, cache: dict[str, _LimitState | None]) -> None:
        for key, state in cache.items():
            if state is not None and state.used:
                tx.c.execute(
                    "UPDATE limits SET tokens = ?, refilled_at = ? WHERE key = ?",
                    (state.tokens, tx.now, key),
                )

    def has_ready(self, queue: str) -> bool:
        return bool(
            self._read(
                "SELECT EXISTS (SELECT 1 FROM tasks WHERE queue = ? AND state = 'ready' "
                "AND ready_at <= ?)",
                (queue, self.now()),
            )[0][0]
        )

    def best_ready_priority(self, queue: str) -> int | None:
        now = self.now()

        def scan(conn: Conn) -> int | None:
            top: int | None = None
            row = conn.execute(
                "SELECT req_key FROM tasks WHERE queue = ? AND state = 'ready' "
                "ORDER BY req_key LIMIT 1",
                (queue,),
            ).fetchone()
            while row is not None:
                # Only eligible tasks: a delayed task or a retry waiting out its
                # backoff cannot be claimed yet, so it is not more urgent work.
                found = conn.execute(
                    "SELECT priority FROM tasks WHERE queue = ? AND state = 'ready' "
                    "AND req_key = ? AND ready_at <= ? ORDER BY priority DESC LIMIT 1",
                    (queue, row[0], now),
                ).fetchone()
                high = found[0] if found is not None else None
                if high is not None and (top is None or high > top):
                    top = high
                row = conn.execute(
                    "SELECT req_key FROM tasks WHERE queue = ? AND state = 'ready' "
                    "AND req_key > ? ORDER BY req_key LIMIT 1",
                    (queue, row[0]),
                ).fetchone()
            return top

        return self._snap(scan)

    def ready_classes(self, queue: str | None = None) -> list[tuple[str, str, str | None, int]]:
        return [
            (r[0], r[1], r[2], r[3])
            for r in self._read(
                "SELECT queue, req_key, resources, count(*) FROM tasks WHERE state = 'ready' "
                "AND (CAST(? AS TEXT) IS NULL OR queue = ?) GROUP BY queue, req_key, resources "
                "ORDER BY queue, req_key",
                (queue, queue),
            )
        ]

    def _record_overdue(self, tx: _Tx) -> None:
        """Record a deadline miss for open tasks past their deadline, once each."""
        overdue = tx.c.execute(
            "SELECT id, run_id, deadline_at, state FROM tasks WHERE late = 0 "
            "AND deadline_at IS NOT NULL AND state IN ('pending', 'ready', 'running') "
            f"AND deadline_at < ? ORDER BY deadline_at LIMIT ?{self.skip_locked}",
            (tx.now, _EXPIRED_BATCH),
        ).fetchall()
        for task_id, run_id, deadline_at, state in overdue:
            self._late(tx, task_id, run_id, tx.now - deadline_at, f"still {state}")

    def _mark_lost(self, tx: _Tx) -> None:
        """Mark nodes lost whose last heartbeat is older than their lease."""
        for node_id, name, heartbeat_at in tx.c.execute(
            "UPDATE nodes SET state = 'lost' WHERE state = 'running' "
            "AND heartbeat_at + lease_ttl < ? RETURNING id, name, heartbeat_at",
            (tx.now,),
        ).fetchall():
            self._event(
                tx,
                "node_lost",
                None,
                None,
                f"{name}: no heartbeat for {tx.now - heartbeat_at:.1f}s, longer than its lease",
                node_id,
            )

    def _reclaim_expired(self, tx: _Tx) -> None:
        # Sweeps, a few times a second per process rather than in every claim.
        if tx.now < self._next_sweep:
            return
        self._next_sweep = tx.now + SWEEP_INTERVAL
        c = tx.c
        self._record_overdue(tx)
        if tx.now >= self._next_lost_sweep:
            self._next_lost_sweep = tx.now + 1.0
            self._mark_lost(tx)
        # A lost lease is the node's fault, not the task's: it does not use up
        # the task's retries. It is still bounded (MAX_LEASE_LOSSES), so that a
        # task that kills or hangs every node that runs it ends up failed.
        expired = c.execute(
            "SELECT t.id, t.run_id, t.losses, n.name FROM tasks t "
            "LEFT JOIN nodes n ON n.id = t.node_id "
            f"WHERE t.state = 'running' AND t.lease_expires_at < ? LIMIT ?{self.skip_locked_t}",
            (tx.now, _EXPIRED_BATCH),
        ).fetchall()
        failed = False
        for task_id, run_id, losses, node in expired:
            losses += 1
            why = f"lease expired on node {node} (the node died or hung; loss {losses})"
            self._event(tx, "lease_expired", run_id, task_id, why)
            if losses >= MAX_LEASE_LOSSES:
                self._fail(
                    tx,
                    task_id,
                    run_id,
                    f"lost its lease {losses} times: every node that ran it died or hung",
                    "LeaseExpired",
                    None,
                )
                failed = True
            else:
                tx.work = True
                c.execute(
                    "UPDATE tasks SET state = 'ready', node_id = NULL, lease_expires_at = NULL, "
                    "attempts = attempts - 1, losses = ?, error = ?, "
                    "error_type = 'LeaseExpired' WHERE id = ?",
                    (losses, why, task_id),
                )
        if failed:
            # The failed task may have been its run's last open one: end the run
            # now, or it would stay 'running' until something else touched it.
            self._finish_runs(tx)

    def heartbeat(
        self, node_id: int, lease_ttl: float, running: int, speed: float | None = None
    ) -> dict[int, int]:
        def body(tx: _Tx) -> dict[int, int]:
            tx.c.execute(
                "UPDATE tasks SET lease_expires_at = ? WHERE node_id = ? AND state = 'running'",
                (tx.now + lease_ttl, node_id),
            )
            tx.c.execute(
                "UPDATE nodes SET heartbeat_at = ?, running = ?, state = 'running', "
                "speed = coalesce(?, speed) WHERE id = ?",
                (tx.now, running, speed, node_id),
            )
            return dict(
                tx.c.execute(
                    "SELECT id, fence FROM tasks WHERE node_id = ? AND state = 'running'",
                    (node_id,),
                ).fetchall()
            )

        return self._write(body)

    def release(self, node_id: int, held: list[tuple[int, int]]) -> int:
        if not held:
            return 0

        def body(tx: _Tx) -> int:
            released = 0
            for task_id, fence in held:
                tx.work = True
                row = tx.c.execute(
                    "UPDATE tasks SET state = 'ready', node_id = NULL, lease_expires_at = NULL, "
                    "attempts = attempts - 1, started_at = NULL "
                    "WHERE id = ? AND fence = ? AND state = 'running' AND node_id = ? "
                    "RETURNING run_id",
                    (task_id, fence, node_id),
                ).fetchone()
                if row is not None:
                    released += 1
                    self._event(tx, "released", row[0], task_id, f"handed back by node {node_id}")
            return released

        return self._write(body)

    def register_node(
        self,
        *,
        name: str,
        host: str,
        pid: int,
        queue: str,
        slots: int,
        mode: str,
        capabilities: list[str],
        resources: dict[str, float] | None = None,
        speed: float = 1.0,
        lease_ttl: float = 30.0,
    ) -> int:
        def body(tx: _Tx) -> int:
            node_id: int = tx.c.execute(
                "INSERT INTO nodes (name, host, pid, queue, slots, mode, capabilities, "
                "resources, speed, started_at, heartbeat_at, lease_ttl) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    name,
                    host,
                    pid,
                    queue,
                    slots,
                    mode,
                    json.dumps(capabilities),
                    json.dumps(resources or {}),
                    speed,
                    tx.now,
                    tx.now,
                    lease_ttl,
                ),
            ).fetchone()[0]
            self._event(tx, "node_started", None, None, f"{name} ({slots} {mode} slots)", node_id)
            return node_id

        return self._write(body)

    def stop_node(self, node_id: int) -> None:
        def body(tx: _Tx) -> None:
            tx.c.execute(
                "UPDATE nodes SET state = 'stopped', stopped_at = ?, running = 0 WHERE id = ?",
                (tx.now, node_id),
            )
            self._event(tx, "node_stopped", None, None, None, node_id)

        return self._write(body)

    # -- control ----------------------------------------------------------
    def _cancel_one(self, tx: _Tx, task_id: int, reason: str) -> bool:
        tx.news = True
        row = tx.c.execute(
            "UPDATE tasks SET state = 'cancelled', finished_at = ?, error = ?, "
            f"lease_expires_at = NULL WHERE id = ? AND state IN {_OPEN_STATES} RETURNING run_id",
            (tx.now, reason, task_id),
        ).fetchone()
        if row is None:
            return False
        tx.touched.add(row[0])
        self._settle(tx, [(task_id, "cancelled")])
        return True

    def cancel_tasks(self, task_ids: list[int], reason: str) -> int:
        def body(tx: _Tx) -> int:
            for task_id in task_ids:
                if tx.c.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone() is None:
                    raise NotFoundError(f"task {task_id} does not exist", task_id=task_id)
            count = 0
            for task_id in task_ids:
                # Record only what was cancelled here, under its run (so that
                # events(run_id) shows it); an ended task is left as it is.
                if self._cancel_one(tx, task_id, reason):
                    count += 1
                    (run_id,) = tx.c.execute(
                        "SELECT run_id FROM tasks WHERE id = ?", (task_id,)
                    ).fetchone()
                    self._event(tx, "cancelled", run_id, task_id, reason)
            self._finish_runs(tx)
            return count

        return self._write(body)

    def cancel_run(self, run_id: int, reason: str) -> int:
        def body(tx: _Tx) -> int:
            if tx.c.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                raise NotFoundError(f"run {run_id} does not exist", run_id=run_id)
            open_ids = [
                row[0]
                for row in tx.c.execute(
                    f"SELECT id FROM tasks WHERE run_id = ? AND state IN {_OPEN_STATES} "
                    "ORDER BY id",
                    (run_id,),
                )
            ]
            count = sum(self._cancel_one(tx, task_id, reason) for task_id in open_ids)
            self._event(tx, "run_cancel", run_id, None, reason)
            self._finish_runs(tx)
            return count

        return self._write(body)

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

    # -- reads ------------------------------------------------------------
    def results(self, task_ids: list[int]) -> list[TaskResult]:
        where, param = self._ids_in("id", task_ids)
        rows = self._read(
            f"SELECT id, state, result, error, error_type, traceback FROM tasks WHERE {where}",
            (param,),
        )
        return [TaskResult(r[0], TaskState(r[1]), r[2], r[3], r[4], r[5]) for r in rows]

    def task(self, task_id: int) -> TaskInfo:
        rows = self._read(_TASK_INFO_SQL + " WHERE t.id = ?", (task_id,))
        if not rows:
            raise NotFoundError(f"task {task_id} does not exist", task_id=task_id)
        return _task_info(rows[0])

    def tasks(self, run_id: int) -> list[TaskInfo]:
        self.run(run_id)
        rows = self._read(_TASK_INFO_SQL + " WHERE t.run_id = ? ORDER BY t.id", (run_id,))
        return [_task_info(r) for r in rows]

    def run(self, run_id: int) -> RunInfo:
        rows = self._read(
            "SELECT id, app, name, state, root_task_id, created_at, finished_at, error "
            "FROM runs WHERE id = ?",
            (run_id,),
        )
        if not rows:
            raise NotFoundError(f"run {run_id} does not exist", run_id=run_id)
        return self._run_info(rows[0])

    def run_state(self, run_id: int) -> str:
        rows = self._read("SELECT state FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise NotFoundError(f"run {run_id} does not exist", run_id=run_id)
        return str(rows[0][0])

    def _run_info(self, row: Any) -> RunInfo:
        counts = dict(
            self._read(
                "SELECT state, count(*) FROM tasks WHERE run_id = ? GROUP BY state", (row[0],)
            )
        )
        return RunInfo(
            id=row[0],
            app=row[1],
            name=row[2],
            state=row[3],
            root_task_id=row[4],
            created_at=row[5],
            finished_at=row[6],
            error=row[7],
            counts=counts,
        )

    def runs(self, limit: int = 20) -> list[RunInfo]:
        rows = self._read(
            "SELECT id, app, name, state, root_task_id, created_at, finished_at, error "
            "FROM runs ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [self._run_info(r) for r in rows]

    def nodes(self, include_stopped: bool = False) -> list[NodeInfo]:
        rows = self._read(
            "SELECT id, name, host, pid, queue, slots, mode, capabilities, state, started_at, "
            "heartbeat_at, stopped_at, running, completed, resources, speed FROM nodes "
            "WHERE state != 'stopped' OR ? ORDER BY id",
            (include_stopped,),
        )
        return [
            NodeInfo(
                id=r[0],
                name=r[1],
                host=r[2],
                pid=r[3],
                queue=r[4],
                slots=r[5],
                mode=r[6],
                capabilities=json.loads(r[7] or "[]"),
                resources=json.loads(r[14] or "{}"),
                speed=r[15],
                state=r[8],
                started_at=r[9],
                heartbeat_at=r[10],
                stopped_at=r[11],
                running=r[12],
                completed=r[13],
            )
            for r in rows
        ]

    def events(self, run_id: int | None = None, limit: int = 100) -> list[Event]:
        rows = self._read(
            "SELECT id, at, run_id, task_id, node_id, kind, detail FROM events "
            "WHERE CAST(? AS BIGINT) IS NULL OR run_id = ? ORDER BY id DESC LIMIT ?",
            (run_id, run_id, limit),
        )
        return [Event(*r) for r in reversed(rows)]


def _needed(run_id: int | None) -> int:
    if run_id is None:
        raise ValueError("submit needs a run, a run_id or a parent")
    return run_id


def _task_info(r: Any) -> TaskInfo:
    return TaskInfo(
        id=r[0],
        run_id=r[1],
        parent_id=r[2],
        name=r[3],
        queue=r[4],
        state=TaskState(r[5]),
        priority=r[6],
        attempts=r[7],
        max_attempts=r[8],
        fence=r[9],
        node_id=r[10],
        node_name=r[11],
        created_at=r[12],
        started_at=r[13],
        finished_at=r[14],
        ready_at=r[15],
        deadline_at=r[16],
        requires=json.loads(r[17]) if r[17] else [],
        resources=json.loads(r[18]) if r[18] else None,
        error=r[19],
        error_type=r[20],
        traceback=r[21],
        forward_to=r[22],
        losses=r[23],
    )
