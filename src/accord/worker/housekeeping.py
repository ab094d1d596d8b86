"""What a node does beside running tasks: taking its stop signals, pruning
its app's old runs now and then (``retention``), and saying which nodes its
commits mark lost."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from accord.errors import AccordError
from accord.hooks import Hook, NodeEvent
from accord.tasks.registry import Runtime

log = logging.getLogger("accord.node")

# A node with a retention setting prunes its app's old runs this long after
# it starts, then this often (Store.prune).
RETENTION_DELAY = 60.0
RETENTION_EVERY = 3600.0


def take_stop_signals(stop: Callable[[], None]) -> None:
    """Call ``stop`` on each SIGTERM or SIGINT (see Node.install_signal_handlers).

    The signals are blocked in this thread (and the threads it starts) and
    taken by one thread with ``sigwait``: a Python-level handler can miss a
    signal the kernel delivers to a thread other than the main one."""
    stops = {signal.SIGTERM, signal.SIGINT}

    def on_signal(signum: int, frame: object) -> None:
        stop()

    def take_signals() -> None:
        while True:
            signal.sigwait(stops)
            stop()

    # multiprocessing unblocks both signals in the thread that first starts
    # its resource tracker: start it now, before blocking them.
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    # The handlers only serve if something unblocks the signals again.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    threading.Thread(target=take_signals, name="accord-signals", daemon=True).start()


def prune_now_and_then(runtime: Runtime, retention: float, serving: threading.Event) -> None:
    """Remove the app's runs that ended over ``retention`` seconds ago, a
    minute after the node starts and then hourly, until ``serving`` is set."""
    wait = RETENTION_DELAY
    while not serving.wait(wait):
        wait = RETENTION_EVERY
        try:
            counts = runtime.store.prune(retention, app=runtime.name)
        except AccordError as exc:
            log.warning("could not prune old runs: %s", exc)
            continue
        if counts["runs"]:
            log.info("pruned %d run(s), %d task(s)", counts["runs"], counts["tasks"])


class LogLost(Hook):
    """Logs the nodes that this node's commits mark lost."""

    def node_lost(self, event: NodeEvent) -> None:
        log.warning("node %s (%d) marked lost: %s", event.name, event.node_id, event.detail)
