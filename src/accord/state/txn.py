"""Multi-key transactions: compare, then put or delete, all or nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from accord._checks import check_int
from accord.errors import (
    ConfigError,
    ConflictError,
)
from accord.state.lease import Lease
from accord.state.records import TxnResult
from accord.store.records import (
    OPS,
    TARGETS,
    KvCompare,
    KvDelete,
    KvOp,
    KvPut,
    Op,
    Target,
)

if TYPE_CHECKING:
    from accord.state.keyspace import State
    from accord.state.locks import Leadership, Lock


class Txn:
    """A compare/then/else transaction, built by chaining and run by :meth:`commit`.

    Compares (``target`` is ``"value"``, ``"version"``, ``"revision"``,
    ``"create_revision"`` or ``"lease"``; values compare with ``==``/``!=``
    only). An absent key has version and revisions 0, and its value equals
    nothing. Keys may appear once per branch.

    Example::

        result = (
            app.state.txn()
            .compare("a", "version", "==", 3)
            .compare("b", "value", "==", "open")
            .then_put("a", 4)
            .then_delete("b")
            .else_put("log/lost", "a moved")
            .commit()
        )
        result.succeeded, result.revision
    """

    def __init__(self, state: State) -> None:
        self._state = state
        self._compares: list[KvCompare] = []
        self._then: list[KvOp] = []
        self._else: list[KvOp] = []

    def compare(self, key: str, target: Target, op: Op, operand: Any) -> Txn:
        """Require ``<target of key> <op> operand``."""
        full = self._state._key(key)
        if target not in TARGETS:
            raise ConfigError(f"compare target {target!r} is unknown; use one of {TARGETS}")
        if op not in OPS:
            raise ConfigError(f"compare operator {op!r} is unknown; use one of {OPS}")
        if target == "value":
            if op not in ("==", "!="):
                raise ConfigError(
                    f"values compare with == or != only, not {op!r} (compare versions or "
                    "revisions to order writes)"
                )
            operand = self._state._encode(full, operand)
        else:
            operand = check_int(operand, f"the {target} to compare {key!r} with")
        self._compares.append(KvCompare(full, target, op, operand))
        return self

    def holding(self, lock: Lock | Leadership) -> Txn:
        """Require that ``lock`` (or leadership) is still held by its token."""
        if lock.token is None:
            raise ConfigError(f"{lock!r} is not held; acquire it first")
        self._compares.append(KvCompare(lock._full_key, "create_revision", "==", lock.token))
        return self

    def _put(self, key: str, value: Any, lease: Lease | int | None) -> KvPut:
        full = self._state._key(key)
        lease_id: int | None
        if lease is None:
            lease_id = None
        elif isinstance(lease, Lease):
            lease_id = lease.id
        else:
            lease_id = check_int(lease, "lease id", minimum=1)
        return KvPut(full, self._state._encode(full, value), lease_id)

    def _delete(self, key: str, prefix: bool) -> KvDelete:
        full = self._state._prefix(key) if prefix else self._state._key(key)
        if prefix and not full:
            raise ConfigError("deleting prefix '' on the root namespace would delete every key")
        return KvDelete(full, prefix)

    def then_put(self, key: str, value: Any, *, lease: Lease | int | None = None) -> Txn:
        self._then.append(self._put(key, value, lease))
        return self

    def then_delete(self, key: str, *, prefix: bool = False) -> Txn:
        self._then.append(self._delete(key, prefix))
        return self

    def else_put(self, key: str, value: Any, *, lease: Lease | int | None = None) -> Txn:
        self._else.append(self._put(key, value, lease))
        return self

    def else_delete(self, key: str, *, prefix: bool = False) -> Txn:
        self._else.append(self._delete(key, prefix))
        return self

    def commit(self) -> TxnResult:
        """Run the transaction, all or nothing, as one revision."""
        return self._commit(conflict=False)

    def _commit(self, *, conflict: bool) -> TxnResult:
        if not self._then and not self._else:
            raise ConfigError(
                "the transaction has no operations: add then_put/then_delete (or else_...) "
                "before commit()"
            )
        for branch in (self._then, self._else):
            _check_branch(branch, self._state)
        fence, task_id = self._state._fence()
        outcome = self._state._store.kv_txn(
            self._compares, self._then, self._else, fence=fence, task_id=task_id
        )
        if conflict and not outcome.succeeded:
            compare, seen = outcome.failed[0]
            key = self._state._rel(compare.key)
            raise ConflictError(
                f"state key {key!r} is at version {seen}, not the expected "
                f"{compare.operand}; nothing was written: re-read the key and retry",
                key=key,
                expected=compare.operand,
                actual=seen,
                revision=outcome.revision,
            )
        return TxnResult(outcome.succeeded, outcome.revision, outcome.changed)


def _check_branch(ops: list[KvOp], state: State) -> None:
    seen: set[str] = set()
    prefixes = [op.key for op in ops if isinstance(op, KvDelete) and op.prefix]
    for op in ops:
        if isinstance(op, KvDelete) and op.prefix:
            continue
        if op.key in seen:
            raise ConfigError(
                f"key {state._rel(op.key)!r} appears twice in one branch of the transaction; "
                "write each key once"
            )
        seen.add(op.key)
        for p in prefixes:
            if op.key.startswith(p):
                raise ConfigError(
                    f"key {state._rel(op.key)!r} is also under a deleted prefix "
                    f"{state._rel(p)!r} in the same branch; write each key once"
                )
