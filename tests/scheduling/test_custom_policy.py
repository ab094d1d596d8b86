"""A user's own scheduling policy on a real store: it satisfies the protocol
and configures an app, the store's claim sorts by it, and a node follows it
(G10). The policies' orders themselves are tested in tests/unit/test_policy.py.
"""

from __future__ import annotations

import pytest

import accord
from accord.scheduling import Candidate, CostPolicy, FifoPolicy, Policy
from accord.store.records import NewRun, NewTask


# -- a user's own policy ------------------------------------------------------
class SmallestFirst:
    """A custom policy: the smallest task first, whatever its priority."""

    name = "smallest"

    def key(self, task: Candidate, now: float, speed: float) -> tuple[float, ...]:
        return (task.size, task.id)


def test_a_custom_policy_satisfies_the_protocol_and_configures_an_app(store_url: str) -> None:
    policy = SmallestFirst()
    assert isinstance(policy, Policy)
    app = accord.App("custom", store_url, policy=policy)
    assert app.policy is policy
    assert isinstance(accord.App("named", store_url, policy="fifo").policy, FifoPolicy)
    assert isinstance(accord.App("default", store_url).policy, CostPolicy)
    with pytest.raises(accord.ConfigError, match="policy must be a name"):
        accord.App("bad", store_url, policy=42)  # type: ignore[arg-type]
    with pytest.raises(accord.ConfigError, match="unknown scheduling policy"):
        accord.App("bad", store_url, policy="random")


def test_a_custom_policy_orders_the_store_claims(store_url: str) -> None:
    """The app's policy object is what the store's claim sorts by."""
    app = accord.App("custom", store_url, policy=SmallestFirst())
    try:
        store = app.store
        sizes = [5.0, 1.0, 4.0, 2.0, 3.0]
        _, ids = store.submit(
            [
                NewTask(name="t", queue="custom", args=b"", priority=10 - i, size=size)
                for i, size in enumerate(sizes)
            ],
            run=NewRun(app="custom", name="t", rooted=False),
        )
        node_id = store.register_node(
            name="n", host="h", pid=1, queue="custom", slots=5, mode="thread", capabilities=[]
        )
        _, claimed = store.exchange(
            node_id, [], queue="custom", claim=5, lease_ttl=30.0, policy=app.policy
        )
        by_size = [ids[i] for i in sorted(range(5), key=lambda i: sizes[i])]
        assert [c.id for c in claimed] == by_size
        # the default policy on the same tasks would go by priority instead
        assert by_size != ids
    finally:
        app.close()


RAN: list[int] = []


def _remember(key: int) -> int:
    RAN.append(key)
    return key


def test_a_custom_policy_drives_a_real_node(store_url: str) -> None:
    """One slot, five tasks queued before the node starts: they run smallest
    first, the custom policy's order, not the default's priority order."""
    app = accord.App("custom", store_url, policy=SmallestFirst())
    task = app.task(name="remember")(_remember)
    RAN.clear()
    try:
        sizes = [5.0, 1.0, 4.0, 2.0, 3.0]
        handles = [
            task.with_options(size=size, priority=i).submit(i) for i, size in enumerate(sizes)
        ]
        node = app.node(mode="thread", slots=1)
        node.start()
        try:
            assert [h.result(timeout=30) for h in handles] == [0, 1, 2, 3, 4]
        finally:
            node.stop()
            node.join(30)
        assert RAN == sorted(range(5), key=lambda i: sizes[i]) == [1, 3, 4, 2, 0]
    finally:
        app.close()
