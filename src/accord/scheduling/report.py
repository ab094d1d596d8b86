"""Why a ready task is not running: unschedulable tasks are shown, never silent."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar

from accord.scheduling.policy import needs_of

# A node whose last heartbeat is older than this counts as gone.
LIVE_WITHIN = 30.0


class NodeView(Protocol):
    """What these reports read of a node (the store's ``NodeInfo`` has it)."""

    @property
    def queue(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def heartbeat_at(self) -> float: ...

    @property
    def capabilities(self) -> Sequence[str]: ...

    @property
    def resources(self) -> Mapping[str, float]: ...


N = TypeVar("N", bound=NodeView)


def live_nodes(nodes: Sequence[N], queue: str, now: float | None = None) -> list[N]:
    now = time.time() if now is None else now
    return [
        n
        for n in nodes
        if n.queue == queue and n.state == "running" and now - n.heartbeat_at < LIVE_WITHIN
    ]


def unschedulable_reason(
    queue: str,
    requires: Sequence[str],
    resources: Mapping[str, float] | None,
    nodes: Sequence[NodeView],
    now: float | None = None,
) -> str | None:
    """Why no live node can run such a task, or ``None`` if one can."""
    live = live_nodes(nodes, queue, now)
    if not live:
        return f"no live node serves app {queue!r} (start one: accord worker --app ...)"
    wanted = set(requires)
    capable = [n for n in live if wanted <= set(n.capabilities)]
    if not capable:
        offered = sorted({c for n in live for c in n.capabilities}) or ["none"]
        return (
            f"requires {', '.join(sorted(wanted))}; no live node has it "
            f"(live nodes offer: {', '.join(offered)})"
        )
    needs = needs_of(resources)
    for kind, amount in sorted(needs.items()):
        largest = max(n.resources.get(kind, 0.0) for n in capable)
        if amount > largest + 1e-9:
            return f"needs {kind}={amount:g}; the largest capable live node has {kind}={largest:g}"
    return None


def unschedulable(
    classes: Sequence[tuple[str, str, str | None, int]],
    nodes: Sequence[NodeView],
    now: float | None = None,
) -> list[tuple[str, str, str | None, int, str]]:
    """``(queue, requires, resources, count, reason)`` for each class of ready
    tasks that no live node can run."""
    found = []
    for queue, req_key, resources, count in classes:
        requires = req_key.split(",") if req_key else []
        parsed = json.loads(resources) if resources else None
        reason = unschedulable_reason(queue, requires, parsed, nodes, now)
        if reason is not None:
            found.append((queue, req_key, resources, count, reason))
    return found
