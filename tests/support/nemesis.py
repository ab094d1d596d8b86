"""Faults at seeded random intervals, from a thread: :class:`Nemesis` on the
worker processes of a :class:`support.cluster.Cluster`, :class:`DbNemesis` on a
PostgreSQL server. Each fault is logged as a :class:`support.recorder.Fault`
with its monotonic start and end.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from typing import Any

from support.cluster import Cluster
from support.recorder import Fault


class Nemesis:
    """Applies faults to a cluster at seeded random intervals, in a thread.

    ``kinds`` holds ``"kill"`` (SIGKILL the node, restart it after
    ``restart_after`` seconds), ``"kill_group"`` (the same for node and slots)
    and ``"pause"`` (SIGSTOP the group for ``pause_for`` seconds). At most
    ``max_faults`` faults; :meth:`stop` ends the schedule and heals (resumes
    paused workers, restarts dead ones). The log is ``cluster.faults``.
    """

    def __init__(
        self,
        cluster: Cluster,
        seed: int,
        *,
        kinds: Sequence[str] = ("kill",),
        interval: tuple[float, float] = (0.3, 0.8),
        restart_after: tuple[float, float] = (0.0, 0.2),
        pause_for: tuple[float, float] = (0.5, 1.5),
        max_faults: int = 1000,
    ) -> None:
        self.cluster = cluster
        self.seed = seed
        self.rng = random.Random(seed)
        self.kinds = list(kinds)
        self.interval = interval
        self.restart_after = restart_after
        self.pause_for = pause_for
        self.max_faults = max_faults
        self.count = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)

    def start(self) -> Nemesis:
        self._thread.start()
        return self

    def __enter__(self) -> Nemesis:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            while self.count < self.max_faults:
                if self._stop.wait(self.rng.uniform(*self.interval)):
                    return
                self._one()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def _one(self) -> None:
        c = self.cluster
        kind = self.rng.choice(self.kinds)
        target = self.rng.randrange(c.n)
        self.count += 1
        if kind in ("kill", "kill_group"):
            c.kill(target, group=kind == "kill_group")
            self._stop.wait(self.rng.uniform(*self.restart_after))
            c.restart(target)
        elif kind == "pause":
            c.pause(target)
            self._stop.wait(self.rng.uniform(*self.pause_for))
            c.resume(target)
        else:
            raise ValueError(f"unknown fault kind {kind!r}")

    def stop(self) -> None:
        """End the schedule, then heal every worker."""
        self._stop.set()
        if self._thread.is_alive() or self._thread.ident is not None:
            self._thread.join(30.0)
        c = self.cluster
        for i in range(c.n):
            if c.workers[i] is None:
                continue
            c.resume(i)
            if not c.alive(i):
                c.restart(i)
        if self.error is not None:
            raise self.error


# -- database faults ----------------------------------------------------------
class DbNemesis:
    """Crashes a :class:`support.pgserver.PgServer` at seeded random intervals, in a thread.

    ``kinds`` holds ``"db_kill"`` (SIGKILL of the postmaster, a direct child:
    crash recovery on restart) and ``"db_stop"`` (fast shutdown). The server
    stays down for ``down_for`` seconds, then is started again; the fault ends
    when it accepts connections. Faults are logged in ``faults`` as
    :class:`Fault` s (``target`` -1, ``pid`` the postmaster's, ``detail`` the
    seconds it was down); ``end - start`` includes the restart. At most
    ``max_faults``; :meth:`stop` ends the schedule and makes sure the server runs.
    """

    def __init__(
        self,
        server: Any,
        seed: int,
        *,
        kinds: Sequence[str] = ("db_kill", "db_stop"),
        interval: tuple[float, float] = (3.0, 6.0),
        down_for: tuple[float, float] = (0.0, 2.0),
        max_faults: int = 1000,
    ) -> None:
        self.server = server
        self.seed = seed
        self.rng = random.Random(seed)
        self.kinds = list(kinds)
        self.interval = interval
        self.down_for = down_for
        self.max_faults = max_faults
        self.faults: list[Fault] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="db-nemesis", daemon=True)

    def start(self) -> DbNemesis:
        self._thread.start()
        return self

    def __enter__(self) -> DbNemesis:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            while len(self.faults) < self.max_faults:
                if self._stop.wait(self.rng.uniform(*self.interval)):
                    return
                self.crash(self.rng.choice(self.kinds), self.rng.uniform(*self.down_for))
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def crash(self, kind: str, down: float) -> Fault:
        """One fault now: take the server down (``kind``) for ``down`` s, restart it."""
        pid = self.server.pid or -1
        fault = Fault(kind, -1, pid, time.monotonic(), detail=f"down {down:.2f}s")
        self.faults.append(fault)
        if kind == "db_kill":
            self.server.kill()
        elif kind == "db_stop":
            self.server.stop()
        else:
            raise ValueError(f"unknown database fault {kind!r}")
        time.sleep(down)  # not cut short by stop(): a fault always heals itself
        self.server.start()
        fault.end = time.monotonic()
        return fault

    def stop(self) -> None:
        """End the schedule (a fault under way runs to its restart); the server runs."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(60.0)
        if not self.server.running:
            self.server.start()
        if self.error is not None:
            raise self.error
