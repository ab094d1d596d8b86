"""A node in the caller's own process, for as long as a run needs one.

``app.run(...)``, ``accord run`` and the demo start a run and wait for it;
if no node of the app is alive, they serve it themselves with a node in this
process, stopped again when the wait ends.
"""

from __future__ import annotations

import time
from typing import Any

from accord.tasks import Run
from accord.tasks.registry import Runtime
from accord.worker.node import Node


class Embedded:
    """A context that runs a node in this process unless one is alive."""

    def __init__(self, runtime: Runtime, options: dict[str, Any]) -> None:
        self.runtime = runtime
        self.options = options
        self.node: Node | None = None

    @staticmethod
    def live_nodes(runtime: Runtime, within: float = 30.0) -> int:
        """How many nodes of the app heartbeat within ``within`` seconds."""
        store = runtime.store
        now = store.now()
        return sum(
            1
            for n in store.nodes()
            if n.queue == runtime.name and n.state == "running" and now - n.heartbeat_at < within
        )

    def __enter__(self) -> Node | None:
        if self.live_nodes(self.runtime) == 0:
            self.node = Node(self.runtime, **self.options)
            self.node.start()
        return self.node

    def __exit__(self, *exc: Any) -> None:
        if self.node is not None:
            self.node.stop()
            self.node.join()

    def hand_back(self) -> None:
        """Stop the in-process node now (the wait was interrupted or gave up):
        its running attempts are stopped and handed back, to run again on
        any node, without using up their retries; the run goes on."""
        node, self.node = self.node, None
        if node is not None:
            node.stop(graceful=False)
            node.join()

    def check(self) -> None:
        """Raise the error that stopped the in-process node, if one did
        (its slots cannot load the app, say): waiting on would never end."""
        if self.node is not None and self.node.error is not None:
            raise self.node.error

    def wait(self, run: Run, timeout: float | None = None) -> Any:
        """``run.wait(timeout)``, but raise the node's error if it stops on one."""
        if self.node is None:
            return run.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return run.wait(0.5 if left is None else min(0.5, left))
            except TimeoutError:
                self.check()
                if left is not None and left <= 0.5:
                    raise
