"""S3: multi-key transactions and snapshots keep the bank invariant (the
total never changes, in any read, at any snapshot) while transfers run in
several processes."""

from __future__ import annotations

import threading

from state_helpers import finish, spawn
from state_workers import transfer_money

import accord

ACCOUNTS, START = 10, 100


def test_bank_invariant_in_every_read_and_snapshot(app: accord.App, store_url: str) -> None:
    state = app.state
    txn = state.txn()
    for i in range(ACCOUNTS):
        txn.then_put(f"bank/{i}", START)
    txn.commit()
    total = ACCOUNTS * START
    procs = [spawn("bank", store_url, 150, seed) for seed in (1, 2)]
    local = threading.Thread(target=transfer_money, args=(app.state, 150, 3))
    local.start()
    reads = snapshots = 0
    while local.is_alive() or any(p.poll() is None for p in procs):
        entries = state.get_prefix("bank/")
        assert len(entries) == ACCOUNTS and sum(e.value for e in entries) == total
        reads += 1
        if reads % 5 == 0:
            name = f"s{snapshots}"
            revision = state.snapshot(name)
            at = state.get_prefix("bank/", revision=revision)
            assert sum(e.value for e in at) == total, f"snapshot {name} at {revision}"
            snapshots += 1
    local.join()
    assert [finish(p) for p in procs] == [0, 0]
    assert sum(e.value for e in state.get_prefix("bank/")) == total
    assert state.revision() == 1 + 3 * 150  # one revision per transfer, none lost
    # Every snapshot, read again after all the transfers, and every revision in between.
    for snap in state.snapshots():
        assert sum(e.value for e in state.get_prefix("bank/", revision=snap.revision)) == total
    for revision in range(1, state.revision() + 1, 7):
        assert sum(e.value for e in state.get_prefix("bank/", revision=revision)) == total
    # A rollback to a snapshot is one transaction too.
    first = state.snapshots()[0]
    state.rollback("bank/", to=first.name)
    entries = state.get_prefix("bank/")
    assert sum(e.value for e in entries) == total
    assert {e.key: e.value for e in entries} == {
        e.key: e.value for e in state.get_prefix("bank/", revision=first.revision)
    }
    assert snapshots > 0 and reads > 10
