"""What task attempts printed and logged, kept per attempt (``accord logs``).

A node collects an attempt's lines (:mod:`accord.worker.capture`) and writes
them with :meth:`LogsMixin.append_logs`, every few seconds while the attempt
runs and once more before its outcome is sent: fenced, so an attempt whose
lease was taken over writes nothing. Bounds: an attempt keeps at most
:data:`MAX_ATTEMPT_BYTES` bytes of text (its oldest lines are dropped first
and the bytes dropped counted), and a task its last :data:`KEEP_ATTEMPTS`
attempts.
"""

from __future__ import annotations

from collections.abc import Sequence

from accord._checks import clean_text
from accord.store.base import LogLine
from accord.store.sql.core import Conn, SqlBase, _Tx

MAX_ATTEMPT_BYTES = 64 * 1024
KEEP_ATTEMPTS = 5
MAX_STREAM_CHARS = 200


def line_size(text: str) -> int:
    """The bytes a line counts for against the bound (its UTF-8 length, at least 1)."""
    return max(1, len(text.encode("utf-8", "replace")))


class LogsMixin(SqlBase):
    """Writing and reading the lines of task attempts."""

    def append_logs(
        self,
        task_id: int,
        fence: int,
        lines: Sequence[tuple[float, str, str]],
        dropped: int = 0,
    ) -> bool:
        def body(tx: _Tx) -> bool:
            tx.news = False  # nobody waits on a task's logs through wait_changed
            c = tx.c
            row = c.execute(
                "SELECT attempts FROM tasks WHERE id = ? AND fence = ? AND state = 'running'",
                (task_id, fence),
            ).fetchone()
            if row is None:
                return False
            attempt = int(row[0])
            kept = c.execute(
                "SELECT bytes, dropped, next_seq FROM task_log_attempts "
                f"WHERE task_id = ? AND attempt = ?{self.lock}",
                (task_id, attempt),
            ).fetchone()
            if kept is None:
                c.execute(
                    "INSERT INTO task_log_attempts (task_id, attempt, fence) VALUES (?, ?, ?)",
                    (task_id, attempt, fence),
                )
                old = attempt - KEEP_ATTEMPTS
                c.execute(
                    "DELETE FROM task_logs WHERE task_id = ? AND attempt <= ?", (task_id, old)
                )
                c.execute(
                    "DELETE FROM task_log_attempts WHERE task_id = ? AND attempt <= ?",
                    (task_id, old),
                )
                size, lost, seq = 0, 0, 0
            else:
                size, lost, seq = (int(v) for v in kept)
            lost += max(0, int(dropped))
            rows = []
            for at, stream, text in lines:
                text = clean_text(text, MAX_ATTEMPT_BYTES)
                n = line_size(text)
                rows.append(
                    (task_id, attempt, seq, at, clean_text(stream, MAX_STREAM_CHARS), text, n)
                )
                seq += 1
                size += n
            if rows:
                c.executemany(
                    "INSERT INTO task_logs (task_id, attempt, seq, at, stream, text, size) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            if size > MAX_ATTEMPT_BYTES:
                excess = size - MAX_ATTEMPT_BYTES
                cut, removed = -1, 0
                for line_seq, n in c.execute(
                    "SELECT seq, size FROM task_logs WHERE task_id = ? AND attempt = ? "
                    "ORDER BY seq",
                    (task_id, attempt),
                ):
                    if removed >= excess:
                        break
                    cut, removed = line_seq, removed + n
                c.execute(
                    "DELETE FROM task_logs WHERE task_id = ? AND attempt = ? AND seq <= ?",
                    (task_id, attempt, cut),
                )
                size -= removed
                lost += removed
            c.execute(
                "UPDATE task_log_attempts SET bytes = ?, dropped = ?, next_seq = ? "
                "WHERE task_id = ? AND attempt = ?",
                (size, lost, seq, task_id, attempt),
            )
            return True

        accepted = self._write(body)
        if not accepted:
            self._refused((task_id, fence), f"the logs of task {task_id} (its lease was lost)")
        return accepted

    def task_logs(
        self, task_id: int, attempt: int | None = None, after: tuple[int, int] | None = None
    ) -> tuple[list[LogLine], dict[int, int]]:
        cond, params = "", [task_id]
        if attempt is not None:
            cond, params = " AND attempt = ?", [task_id, attempt]
        after_attempt, after_seq = after if after is not None else (-1, -1)

        def read(c: Conn) -> tuple[list[LogLine], dict[int, int]]:
            rows = c.execute(
                "SELECT attempt, seq, at, stream, text FROM task_logs WHERE task_id = ?"
                + cond
                + " AND (attempt > ? OR (attempt = ? AND seq > ?)) ORDER BY attempt, seq",
                (*params, after_attempt, after_attempt, after_seq),
            ).fetchall()
            drops = c.execute(
                "SELECT attempt, dropped FROM task_log_attempts WHERE task_id = ?" + cond,
                tuple(params),
            ).fetchall()
            lines = [LogLine(int(a), int(s), float(at), st, tx) for a, s, at, st, tx in rows]
            return lines, {int(a): int(d) for a, d in drops}

        return self._snap(read)
