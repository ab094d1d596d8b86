"""A node: claims ready tasks for its free slots, runs them, records results.

The loop is single-threaded and talks to the store in one transaction per
turn: it records every attempt that finished since the last turn and claims
the next batch in the same commit. Under load a turn carries many rows, so
throughput does not pay one disk flush per task; when idle, a turn is one
task and latency stays low.

Leases: every claimed task carries a lease of ``lease_ttl`` seconds that the
node extends by heartbeat every ``heartbeat`` seconds. A heartbeat also tells
the node which of its tasks it still holds; an attempt it lost (its lease
expired and another node took it, or the task was cancelled) is stopped. A
node that cannot reach the store for ``lease_ttl - heartbeat`` seconds stops
all its attempts itself, before another node may take them over.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections import deque

from accord._checks import check_string, check_text
from accord.errors import ConfigError, StoreError, UnstorableError
from accord.scheduling.policy import NodeSpec, check_capacity, check_speed
from accord.store.records import ClaimedTask, Completion, Outcome
from accord.tasks.registry import AppLike, as_runtime
from accord.tasks.schedules import Firing
from accord.worker.dispatch import MIN_PRIORITY, Dispatch
from accord.worker.housekeeping import LogLost, prune_now_and_then, take_stop_signals
from accord.worker.leases import Leases
from accord.worker.pool import make_pool
from accord.worker.record import Recording

log = logging.getLogger("accord.node")

# A node with nothing to do looks for new work this often even when it saw
# no commit (delayed tasks become ready, leases of dead nodes expire).
IDLE_CLAIM_INTERVAL = 0.5
# Results wait at most this long, or until this many pile up, before a commit
# (only while queued tasks keep the slots busy).
FLUSH_AGE = 0.005
FLUSH_COUNT = 256
# While the local queue is full, look for more urgent work at most this often.
PROBE_INTERVAL = 0.002
# New work wakes every node. The first of them (by id) claims at once; the
# others look whether any is left this much later each, in turn (up to
# STAGGER_RANKS turns), so that a task does not set every idle node claiming.
STAGGER = 0.005
STAGGER_RANKS = 3
WAIT_FAST = 0.001
WAIT_SLOW = 0.01
MAX_NODE_NAME_BYTES = 256
# A line of what the node claimed and finished, this often (if it did anything).
SUMMARY_EVERY = 30.0


class Node(Leases, Dispatch, Recording):
    """Runs an app's tasks. Use :meth:`run` to serve in this thread, or
    :meth:`start`/:meth:`stop`/:meth:`join` to serve in the background.

    Options (keyword-only, checked here):

    - ``slots``: how many tasks run at once (default: the number of CPUs).
    - ``mode``: ``"process"`` (default; each slot a child process) or
      ``"thread"`` (for I/O-bound tasks).
    - ``lease_ttl``: seconds a claim lasts without a heartbeat (default 15).
    - ``heartbeat``: seconds between heartbeats (default ``lease_ttl / 3``).
    - ``grace``: seconds a stopping node lets running tasks finish before it
      stops them and hands them back (default 30).
    - ``capabilities``: labels this node offers (tasks ``requires`` them).
    - ``resources``: capacity in ``cpu``, ``gpu`` and ``memory`` (MB) units;
      default ``cpu`` = slots, ``gpu`` = 0, ``memory`` = physical memory. A
      task needs one cpu unless its ``resources`` say otherwise.
    - ``speed``: the initial estimate of the size this node completes per
      second, v in the cost rule; the node then measures it.
    - ``name``: shown in ``accord nodes``.
    - ``retention``: seconds; now and then (hourly) the node removes the
      app's runs that ended longer ago than that (:meth:`Store.prune`).
    """

    def __init__(
        self,
        app: AppLike,
        *,
        slots: int | None = None,
        mode: str = "process",
        lease_ttl: float = 15.0,
        heartbeat: float | None = None,
        grace: float = 30.0,
        name: str | None = None,
        capabilities: list[str] | tuple[str, ...] = (),
        resources: dict[str, float] | None = None,
        speed: float = 1.0,
        retention: float | None = None,
    ) -> None:
        if slots is None:
            slots = os.cpu_count() or 1
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ConfigError(f"slots must be a positive integer, not {slots!r}")
        if mode not in ("process", "thread"):
            raise ConfigError(f"mode must be 'process' or 'thread', not {mode!r}")
        for label, value in (("lease_ttl", lease_ttl), ("grace", grace)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{label} must be a number of seconds, not {value!r}")
            if not math.isfinite(value) or value < 0 or (label == "lease_ttl" and value == 0):
                raise ConfigError(f"{label} must be a positive number of seconds, not {value!r}")
        if heartbeat is None:
            heartbeat = lease_ttl / 3
        if (
            isinstance(heartbeat, bool)
            or not isinstance(heartbeat, int | float)
            or not 0 < heartbeat < lease_ttl
        ):
            raise ConfigError(
                f"heartbeat ({heartbeat!r}) must be positive and shorter than lease_ttl "
                f"({lease_ttl}), or a live node would lose its leases"
            )
        self.runtime = as_runtime(app)
        self.slots = slots
        self.mode = mode
        self.lease_ttl = float(lease_ttl)
        self.heartbeat_interval = float(heartbeat)
        self.grace = float(grace)
        if name is not None:
            check_string(name, "node name", limit=MAX_NODE_NAME_BYTES)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        if isinstance(capabilities, str) or not all(
            isinstance(c, str) and c and "," not in c for c in capabilities
        ):
            raise ConfigError(
                f"capabilities must be a list of labels without commas, not {capabilities!r}"
            )
        for label in capabilities:
            check_text(label, "capability", MAX_NODE_NAME_BYTES)
        self.capabilities = sorted(set(capabilities))
        capacity = {"cpu": float(slots), "gpu": 0.0, "memory": _physical_memory_mb()}
        capacity.update(check_capacity(resources or {}))
        self.spec = NodeSpec(frozenset(self.capabilities), capacity, check_speed(speed))
        if retention is not None and (
            isinstance(retention, bool)
            or not isinstance(retention, int | float)
            or not (math.isfinite(retention) and retention > 0)
        ):
            raise ConfigError(f"retention must be a positive number of seconds, not {retention!r}")
        self.retention = retention
        self.node_id: int | None = None
        self.executed = 0
        self.fenced = 0
        self._stop = threading.Event()
        self._hard_stop = threading.Event()
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._avg_duration: float | None = None
        # Monotonic time of the last heartbeat the store accepted, and the
        # attempts the watchdog stopped since (task id -> fence).
        self._heartbeat_ok = time.monotonic()
        self._fence_lock = threading.Lock()
        self._self_fenced: dict[int, int] = {}
        self._rank = 0  # this node's place among the app's live nodes, by id

    # -- lifecycle --------------------------------------------------------
    def start(self) -> None:
        """Serve in a background thread; returns once the node is registered."""
        self._thread = threading.Thread(target=self._run_captured, name="accord-node", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    @property
    def error(self) -> BaseException | None:
        """The error that stopped the node serving in the background, if one did."""
        return self._error

    def _run_captured(self) -> None:
        try:
            self.run()
        except BaseException as exc:
            self._error = exc
            self._started.set()
            log.exception("node stopped by an error")

    def stop(self, *, graceful: bool = True) -> None:
        """Ask the node to stop: it claims no more, lets running tasks finish
        for up to ``grace`` seconds (none if not ``graceful``), hands back the
        rest and exits."""
        if not graceful:
            self._hard_stop.set()
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def install_signal_handlers(self) -> None:
        """SIGTERM and a first Ctrl-C stop gracefully; a second stops at once.

        Call it from the main thread before :meth:`run`. The signals are
        blocked in every thread and taken by one thread with ``sigwait``: a
        Python-level handler can miss a signal that the kernel delivers to a
        thread other than the main one (CPython then does not wake the main
        thread's loop), and a node that ignores SIGTERM cannot be stopped.
        """
        take_stop_signals(lambda: self.stop(graceful=not self._stop.is_set()))

    # -- the loop ---------------------------------------------------------
    def run(self) -> None:
        """Serve until :meth:`stop` is called."""
        store = self.runtime.store
        node_id = self.node_id = store.register_node(
            name=self.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            queue=self.runtime.name,
            slots=self.slots,
            mode=self.mode,
            capabilities=self.capabilities,
            resources=self.spec.capacity,
            speed=self.spec.speed,
            lease_ttl=self.lease_ttl,
        )
        self._find_rank()
        firing = Firing(self.runtime)  # the app's schedules, written to the store
        pool = make_pool(self.mode, self.runtime, self.slots, node_id)
        # New work wakes the loop at once where the store is told of commits.
        unsubscribe = store.on_work(pool.wake)
        serving = threading.Event()
        self._heartbeat_ok = time.monotonic()
        threading.Thread(
            target=self._watch, args=(pool, serving), name="accord-watchdog", daemon=True
        ).start()
        if self.retention is not None:
            threading.Thread(
                target=prune_now_and_then,
                args=(self.runtime, self.retention, serving),
                name="accord-prune",
                daemon=True,
            ).start()
        self._started.set()
        log.info(
            "node %s (%d) serving app %s with %d %s slots, store %s",
            self.name,
            node_id,
            self.runtime.name,
            self.slots,
            self.mode,
            store.url,
        )
        summary = [0, 0, 0]  # claimed, completed, failed since the last summary line
        lost_log = store.hooks.add(LogLost())  # one line for each node this one marks lost
        next_summary = time.monotonic() + SUMMARY_EVERY
        held: dict[int, ClaimedTask] = {}
        waiting: deque[ClaimedTask] = deque()
        done: list[Completion] = []
        dispatched: dict[int, float] = {}
        look = True
        urgent = False
        urgent_level = MIN_PRIORITY  # the priority of the urgent work to claim
        reprobe = False
        next_probe = 0.0
        done_since = 0.0
        done_top = MIN_PRIORITY  # the highest priority among ``done``
        next_claim = 0.0
        look_at = 0.0  # when to look whether new work is left for this node
        next_heartbeat = time.monotonic() + self.heartbeat_interval
        last_activity = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if self._stop.is_set():
                    break
                if pool.fatal is not None:
                    raise ConfigError(pool.fatal)
                # First, before anything that may loop back: a busy node and a
                # node whose store fails must both keep heartbeating (or fence).
                if now >= next_heartbeat:
                    self._heartbeat(pool, held, waiting)
                    next_heartbeat = now + self.heartbeat_interval
                # Due schedules fire in the store (at most once a second).
                look = firing.tick(now) or look
                if now >= next_summary:
                    next_summary = now + SUMMARY_EVERY
                    if any(summary):
                        log.info(
                            "in %.0f s: claimed %d, completed %d, failed %d; running %d",
                            SUMMARY_EVERY,
                            *summary,
                            pool.active(),
                        )
                        summary = [0, 0, 0]
                if look_at and now >= look_at:
                    look_at = 0.0
                    look = look or self._work_left()
                target = self._target()
                # Room for urgent work: the prefetch less what runs and what is
                # queued here at least as important (the backlog queued behind
                # goes after it, so it does not count).
                room = 0
                if urgent and not self._stop.is_set():
                    ahead = sum(1 for task in waiting if task.priority >= urgent_level)
                    room = target - pool.active() - ahead
                # With urgent work to claim now, a freed slot starts only what is
                # queued here at least as important (the queue is in priority
                # order): the next backlog task waits until the claim is in.
                self._dispatch(
                    pool, waiting, dispatched, now, urgent_level if room > 0 else MIN_PRIORITY
                )
                want = target - len(waiting) - pool.active()
                # Batch: while queued work keeps the slots busy, let results pile
                # up for a few milliseconds and claim only when the queue runs low,
                # so one commit carries many rows; when idle, go to the store at once.
                flush = bool(done) and (
                    not waiting
                    or len(done) >= FLUSH_COUNT
                    or now - done_since >= FLUSH_AGE
                    # something more important than some of the queue finished
                    # (urgent work among a backlog): report it now; results of
                    # work as important as all that is queued still batch
                    or done_top > waiting[-1].priority
                )
                refill = (
                    want > 0
                    # results going in may make their dependents ready: claim in
                    # the same commit rather than look again after it
                    and (look or flush or now >= next_claim)
                    and (len(waiting) <= max(self.slots, target // 2))
                )
                if room > 0:
                    # More important work arrived than what is queued here:
                    # claim it now, as much as there is room for; it goes
                    # ahead of the local queue. (Without room, it waits until
                    # the urgent work queued here has started.)
                    want = room
                    refill = True
                if flush or refill:
                    finishing = {completion.task_id for completion in done}
                    try:
                        accepted, claimed = store.exchange(
                            node_id,
                            done,
                            queue=self.runtime.name,
                            claim=max(want, 0) if refill else 0,
                            lease_ttl=self.lease_ttl,
                            node=self.spec,
                            # Tasks finishing in this commit no longer take capacity:
                            # their dependents can be claimed in the same commit.
                            free=self._free(
                                self._holding(
                                    held, finishing, pool, urgent_level if room > 0 else None
                                ),
                                pool,
                                target / self.slots,
                            ),
                            policy=self.runtime.policy,
                            # Nothing says there is new work: claim only if these
                            # results make some (a round trip saved per result).
                            only_if_work=not (look or room > 0 or now >= next_claim),
                        )
                    except UnstorableError as exc:
                        if not done:  # not a result's data: nothing to set apart
                            log.error("the store refused a claim: %s", exc)
                            self._stop.wait(0.2)
                            continue
                        # One of the results holds what this store cannot:
                        # that row is bad, not the store; record them apart.
                        done = self._record_apart(done, held, exc)
                        done_top = MIN_PRIORITY
                        look = True
                        continue
                    except StoreError as exc:
                        log.warning("store unavailable, retrying: %s", exc)
                        self._stop.wait(0.2)
                        continue
                    refused = [c.task_id for c, ok in zip(done, accepted, strict=True) if not ok]
                    why = self._why_lost(refused) if refused else {}
                    for completion in done:
                        held.pop(completion.task_id, None)
                    for task_id in refused:
                        self.fenced += 1
                        log.warning(
                            "completion of task %d refused: %s",
                            task_id,
                            why.get(task_id, "lease lost"),
                        )
                    self.executed += len(done)
                    summary[0] += len(claimed)
                    summary[1] += len(done)
                    summary[2] += sum(1 for c in done if c.outcome is Outcome.ERROR)
                    done = []
                    done_top = MIN_PRIORITY
                    for task in claimed:
                        held[task.id] = task
                        self._tell("task_claimed", task)
                    ahead = bool(claimed and waiting) and claimed[0].priority > waiting[-1].priority
                    if ahead:
                        # The local queue stays in priority order (stable: the
                        # claim's policy order within a priority): a task more
                        # important than some queued here goes ahead of them,
                        # whether an urgent probe or a plain refill claimed it.
                        waiting = deque(sorted([*waiting, *claimed], key=_by_priority))
                    else:
                        waiting.extend(claimed)
                    if refill:
                        # Got some: more may be waiting (the batch may have been cut
                        # by free resources). Got none: wait for someone's commit,
                        # or the idle interval. An urgent claim that filled its
                        # batch looks again whether more urgent work is left.
                        if room > 0:
                            # Took all it had room for: more may be left.
                            reprobe = len(claimed) >= want
                            urgent = False
                            urgent_level = MIN_PRIORITY
                        reprobe = reprobe or ahead
                        look = bool(claimed) and len(claimed) >= want
                        next_claim = now + IDLE_CLAIM_INTERVAL
                    elif accepted:
                        # Results recorded without a claim may have made their
                        # dependents ready; this node's own commit does not show
                        # in store.work_changed(), so look at once.
                        look = True
                    if claimed:
                        last_activity = now
                    continue
                wait = WAIT_SLOW if now - last_activity > 1.0 else WAIT_FAST
                if look_at:
                    wait = max(0.0, min(wait, look_at - now))
                finished = pool.wait(wait)
                if finished and self._self_fenced:
                    finished = self._hand_back_fenced(finished, held)
                if finished:
                    last_activity = time.monotonic()
                    if not done:
                        done_since = last_activity
                    self._learn(finished, dispatched, held, last_activity)
                    done.extend(finished)
                    for completion in finished:
                        ran = held.get(completion.task_id)
                        if ran is not None and ran.priority > done_top:
                            done_top = ran.priority
                changed = store.work_changed()
                if changed:
                    if self._rank == 0:
                        look = True
                    elif not (look or look_at):
                        look_at = now + STAGGER * min(self._rank, STAGGER_RANKS)
                if waiting and ((changed and now >= next_probe) or reprobe):
                    reprobe = False
                    next_probe = now + PROBE_INTERVAL
                    best = store.best_ready_priority(self.runtime.name)
                    # Against the least important task queued here (the queue
                    # is in priority order), not the first: once one urgent
                    # task heads the queue, the next ones must still overtake
                    # the backlog queued behind it.
                    urgent = best is not None and best > waiting[-1].priority
                    urgent_level = best if urgent and best is not None else MIN_PRIORITY
            self._drain(pool, held, waiting, done)
        finally:
            serving.set()
            unsubscribe()
            store.hooks.remove(lost_log)
            pool.close()
            try:
                store.stop_node(node_id)
            except StoreError:
                log.warning("could not mark node %d stopped", node_id)
            log.info("node %s (%d) stopped after %d attempt(s)", self.name, node_id, self.executed)

    def _find_rank(self) -> None:
        try:
            peers = [
                n.id
                for n in self.runtime.store.nodes()
                if n.queue == self.runtime.name and n.state == "running"
            ]
        except StoreError:
            return
        self._rank = peers.index(self.node_id) if self.node_id in peers else 0


def _by_priority(task: ClaimedTask) -> int:
    return -task.priority


def _physical_memory_mb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        return 0.0
