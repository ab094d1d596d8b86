"""Concurrency and rate limits of tasks that share a ``limit_key``.

Submitting a task defines (or redefines) its limit; a claim takes a task only
while its limit has room (running tasks under ``concurrency``, a token of its
``rate`` bucket), and saves the buckets it used."""

from __future__ import annotations

from dataclasses import dataclass

from accord.store.records import (
    NewTask,
)
from accord.store.sql.core import SqlBase, _Tx


@dataclass(slots=True)
class _LimitState:
    running: int
    concurrency: int | None
    rate: float | None
    tokens: float
    used: bool = False


class LimitsMixin(SqlBase):
    """The ``limits`` table: define, test and spend."""

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
