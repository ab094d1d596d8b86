"""The checker of the group-commit model test: every acknowledged outcome of
the workers of ``group_workers.model`` against the store's history.

A pure function of the workers' logs, the history (every change of the model
keys, in revision order) and when each killed worker was seen dead, so that
doctored inputs can prove it reports what it must (the negative control).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Change:
    """One row of kv_history: ``token`` names the write that made it (None: not a model write)."""

    revision: int
    key: str
    version: int
    token: str | None
    at: float


def check(
    entries: list[dict[str, Any]],
    history: list[Change],
    killed: dict[str, float],
) -> list[str]:
    """The violations found (an empty list: the run is consistent).

    ``entries``: the workers' log lines (``id`` is ``<worker>.<n>``);
    ``killed``: worker -> wall-clock time at which it was seen dead.
    """
    problems: list[str] = []
    by_token: dict[str, list[Change]] = defaultdict(list)
    by_revision: dict[int, list[Change]] = defaultdict(list)
    for change in history:
        by_revision[change.revision].append(change)
        if change.token is not None:
            by_token[change.token].append(change)
    versions: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for change in sorted(history, key=lambda c: c.revision):
        versions[change.key].append((change.revision, change.version))

    def version_at(key: str, revision: int) -> int:
        found = 0
        for rev, version in versions[key]:
            if rev > revision:
                break
            found = version
        return found

    for token, changes in by_token.items():
        if len(changes) > 1:
            problems.append(f"write {token} applied {len(changes)} times")

    invoked: dict[str, dict[str, Any]] = {}
    completed: set[str] = set()
    last_invoke: dict[str, str] = {}
    for e in entries:
        if e.get("op") == "done":
            continue
        op_id = e["id"]
        if e["type"] == "invoke":
            invoked[op_id] = e
            last_invoke[op_id.rsplit(".", 1)[0]] = op_id
            continue
        completed.add(op_id)
        applied = by_token.get(op_id, [])
        if e["op"] in ("put", "cas") and e["type"] == "ok":
            mine = [c for c in by_revision.get(e["revision"], []) if c.token == op_id]
            if not mine:
                problems.append(
                    f"acknowledged write {op_id} (revision {e['revision']}) is not in the store "
                    f"at that revision (found there: "
                    f"{[c.token for c in by_revision.get(e['revision'], [])]})"
                )
            elif e["op"] == "cas" and mine[0].version != e["expect"] + 1:
                problems.append(
                    f"compare-and-set {op_id} expected version {e['expect']} but made "
                    f"version {mine[0].version}"
                )
        elif e["op"] == "cas":  # a conflict: nothing written, the key was at `actual`
            if applied:
                problems.append(f"compare-and-set {op_id} failed but was applied")
            seen = version_at(e["key"], e["revision"])
            if e["actual"] != seen or e["actual"] == e["expect"]:
                problems.append(
                    f"compare-and-set {op_id} was told version {e['actual']} at revision "
                    f"{e['revision']}; the key was at version {seen} (expected {e['expect']})"
                )
        elif e["op"] == "compare":
            if e["type"] != "fail" or applied:
                problems.append(f"compare {op_id} cannot hold, yet it succeeded or was applied")

    for token, changes in by_token.items():
        if token in completed:
            continue
        worker = token.rsplit(".", 1)[0]
        if token not in invoked:
            problems.append(f"write {token} in the store was never asked for")
        elif worker not in killed:
            problems.append(f"write {token} of a live worker was applied but never acknowledged")
        elif last_invoke.get(worker) != token:
            problems.append(f"write {token} is applied, but its worker went on after it")
        elif changes[0].at > killed[worker]:
            problems.append(
                f"write {token} was applied at {changes[0].at:.3f}, after its worker was "
                f"dead ({killed[worker]:.3f})"
            )
    return problems
