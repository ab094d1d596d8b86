"""The object store's catalogue and its chunks of bytes, in the SQL both backends share.

One row of ``objects`` per object, whatever holds its bytes (a directory, a
bucket, or ``object_chunks`` in this database). ``accord.data`` makes the
bytes durable before it records the row (see :mod:`accord.data.backends`).
The collector asks :meth:`ObjectsMixin.object_references` which objects are
referenced anywhere the store keeps values, in one consistent read.
"""

from __future__ import annotations

import uuid
from typing import Any

from accord.errors import StoreError
from accord.store.records import ObjectRow
from accord.store.sql.core import Conn, SqlBase, _Tx

CHUNK = 1024 * 1024  # the size of every chunk but an object's last (accord.data)

_COLS = "digest, size, kind, location, created_at, touched_at, pinned"

# Every stored reference to an object (accord.data.ObjectRef, or a value
# moved to the object store) holds this marker followed by the digest's 32
# bytes: the collector reads only the values that hold it.
MARKER = b"ACOBJ1"

# Where values live: (table, column, the rows whose values still count).
_VALUE_PLACES = (
    ("tasks", "args", "1 = 1"),
    ("tasks", "result", "1 = 1"),
    ("kv_history", "value", "1 = 1"),
    ("kv", "value", "1 = 1"),
    ("mailbox_messages", "payload", "acked_at IS NULL"),
    ("topic_messages", "payload", "1 = 1"),
)


def _row(r: Any) -> ObjectRow:
    digest, size, kind, location, created, touched, pinned = r
    return ObjectRow(
        str(digest),
        int(size),
        str(kind),
        str(location),
        float(created),
        float(touched),
        bool(pinned),
    )


def digests_in(blob: bytes) -> set[str]:
    """The digests of the object references inside one stored value."""
    found: set[str] = set()
    at = blob.find(MARKER)
    while at >= 0:
        raw = blob[at + len(MARKER) : at + len(MARKER) + 32]
        if len(raw) == 32:
            found.add(raw.hex())
        at = blob.find(MARKER, at + 1)
    return found


class ObjectsMixin(SqlBase):
    """The catalogue of objects and the bytes of those kept in the database."""

    blob_contains: str  # dialect: a condition that column {col} holds the ? bytes

    def object_row(self, digest: str) -> ObjectRow | None:
        rows = self._read(f"SELECT {_COLS} FROM objects WHERE digest = ?", (digest,))
        return _row(rows[0]) if rows else None

    def object_touch(self, digest: str) -> ObjectRow | None:
        """Mark ``digest`` as put again now (the collector's grace starts over)."""

        def body(tx: _Tx) -> ObjectRow | None:
            tx.news = False
            rows = tx.c.execute(
                f"UPDATE objects SET touched_at = ? WHERE digest = ? RETURNING {_COLS}",
                (tx.now, digest),
            ).fetchall()
            return _row(rows[0]) if rows else None

        return self._write(body)

    def object_record(self, digest: str, size: int, kind: str, location: str) -> ObjectRow:
        """Record an object whose bytes are whole where ``location`` says."""

        def body(tx: _Tx) -> ObjectRow:
            tx.news = False
            rows = tx.c.execute(
                f"INSERT INTO objects ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, 0) "
                "ON CONFLICT (digest) DO UPDATE SET touched_at = excluded.touched_at "
                f"RETURNING {_COLS}",
                (digest, size, kind, location, tx.now, tx.now),
            ).fetchall()
            return _row(rows[0])

        return self._write(body)

    def object_rows(self, digests: list[str] | None = None) -> list[ObjectRow]:
        """Every object recorded (or those of ``digests``), oldest first."""
        if digests is None:
            rows = self._read(f"SELECT {_COLS} FROM objects ORDER BY created_at, digest")
        else:
            rows = []
            for start in range(0, len(digests), 500):
                part = digests[start : start + 500]
                marks = ", ".join("?" * len(part))
                rows += self._read(
                    f"SELECT {_COLS} FROM objects WHERE digest IN ({marks})", tuple(part)
                )
            rows.sort(key=lambda r: (r[4], r[0]))
        return [_row(r) for r in rows]

    def object_pin(self, digest: str, pinned: bool) -> bool:
        def body(tx: _Tx) -> bool:
            tx.news = False
            return bool(
                tx.c.execute(
                    "UPDATE objects SET pinned = ? WHERE digest = ? RETURNING digest",
                    (int(pinned), digest),
                ).fetchall()
            )

        return self._write(body)

    def object_forget(self, digest: str, touched_before: float) -> bool:
        """Drop the row (and any chunks) of an unpinned object last put before
        ``touched_before``; False if it was put again since, or pinned."""

        def body(tx: _Tx) -> bool:
            tx.news = False
            gone = tx.c.execute(
                "DELETE FROM objects WHERE digest = ? AND touched_at < ? AND pinned = 0 "
                "RETURNING digest",
                (digest, touched_before),
            ).fetchall()
            if not gone:
                return False
            tx.c.execute("DELETE FROM object_chunks WHERE digest = ?", (digest,))
            return True

        return self._write(body)

    def object_references(self, run_id: int | None = None) -> set[str]:
        """The digests referenced by any value the store keeps, read in one
        consistent state (or only by the tasks of run ``run_id``)."""

        def read(c: Conn) -> set[str]:
            found: set[str] = set()
            for table, column, live in _VALUE_PLACES:
                where = f"{live} AND " + self.blob_contains.format(col=column)
                params: tuple[object, ...] = (MARKER,)
                if run_id is not None:
                    if table != "tasks":
                        continue
                    where += " AND run_id = ?"
                    params += (run_id,)
                for (blob,) in c.execute(
                    f"SELECT {column} FROM {table} WHERE {where}", params
                ).fetchall():
                    found |= digests_in(bytes(blob))
            return found

        return self._snap(read)

    # -- bytes kept in the database --------------------------------------
    def object_upload(self) -> str:
        """A fresh name to write chunks under until the object is committed."""
        return f"upload:{uuid.uuid4().hex}"

    def object_chunk_write(self, upload: str, seq: int, data: bytes) -> None:
        def body(tx: _Tx) -> None:
            tx.news = False
            tx.c.execute(
                "INSERT INTO object_chunks (digest, seq, data, written_at) VALUES (?, ?, ?, ?)",
                (upload, seq, data, tx.now),
            )

        self._write(body)

    def object_chunks_commit(
        self, upload: str, digest: str, size: int, kind: str, location: str
    ) -> ObjectRow:
        """Make the chunks of ``upload`` the bytes of ``digest`` and record it,
        in one transaction (if ``digest`` is already whole, the upload goes)."""

        def body(tx: _Tx) -> ObjectRow:
            tx.news = False
            recorded = tx.c.execute(
                f"SELECT 1 FROM objects WHERE digest = ?{self.lock}", (digest,)
            ).fetchall()
            # Whole already, unless its chunks were set aside as damaged.
            have = (
                recorded
                and tx.c.execute(
                    "SELECT 1 FROM object_chunks WHERE digest = ? AND seq = 0", (digest,)
                ).fetchall()
            )
            count, length = tx.c.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0) FROM object_chunks "
                "WHERE digest = ?",
                (upload,),
            ).fetchone()
            if int(length) != size or (size and int(count) != -(-size // CHUNK)):
                # A put that stalled longer than the collector's grace: its
                # chunks went. Record nothing; the caller's put fails.
                tx.c.execute("DELETE FROM object_chunks WHERE digest = ?", (upload,))
                raise StoreError(
                    f"the upload of object {digest} lost chunks while it was written (it "
                    "stalled longer than the collector's grace); nothing was stored, put "
                    "it again",
                    digest=digest,
                )
            if have:
                tx.c.execute("DELETE FROM object_chunks WHERE digest = ?", (upload,))
            else:
                tx.c.execute("DELETE FROM object_chunks WHERE digest = ?", (digest,))
                tx.c.execute(
                    "UPDATE object_chunks SET digest = ? WHERE digest = ?", (digest, upload)
                )
            rows = tx.c.execute(
                f"INSERT INTO objects ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, 0) "
                "ON CONFLICT (digest) DO UPDATE SET touched_at = excluded.touched_at "
                f"RETURNING {_COLS}",
                (digest, size, kind, location, tx.now, tx.now),
            ).fetchall()
            return _row(rows[0])

        return self._write(body)

    def object_chunks_exist(self, name: str) -> bool:
        """Whether any chunk is stored under ``name`` (a digest, an upload's name)."""
        return bool(self._read("SELECT 1 FROM object_chunks WHERE digest = ? AND seq = 0", (name,)))

    def object_chunks_names(self, prefix: str) -> list[str]:
        """The names that chunks are stored under, of those starting ``prefix``."""
        rows = self._read(
            "SELECT digest FROM object_chunks WHERE digest LIKE ? AND seq = 0", (prefix + "%",)
        )
        return [str(r[0]) for r in rows]

    def object_chunks_move(self, name: str, to: str | None) -> None:
        """Store the chunks of ``name`` under ``to`` instead (replacing what
        was there), or drop them where ``to`` is None."""

        def body(tx: _Tx) -> None:
            tx.news = False
            if to is not None:
                tx.c.execute("DELETE FROM object_chunks WHERE digest = ?", (to,))
                tx.c.execute("UPDATE object_chunks SET digest = ? WHERE digest = ?", (to, name))
            else:
                tx.c.execute("DELETE FROM object_chunks WHERE digest = ?", (name,))

        self._write(body)

    def object_chunk(self, digest: str, seq: int) -> bytes | None:
        rows = self._read(
            "SELECT data FROM object_chunks WHERE digest = ? AND seq = ?", (digest, seq)
        )
        return bytes(rows[0][0]) if rows else None

    def object_uploads_drop(self, written_before: float, upload: str | None = None) -> int:
        """Drop chunks of uploads never committed (a writer died), or of one."""

        def body(tx: _Tx) -> int:
            tx.news = False
            if upload is not None:
                sql, params = "DELETE FROM object_chunks WHERE digest = ?", (upload,)
            else:
                # An upload still being written is kept by its latest chunk.
                sql = (
                    "DELETE FROM object_chunks WHERE digest IN (SELECT digest FROM "
                    "object_chunks WHERE digest LIKE 'upload:%' GROUP BY digest "
                    "HAVING max(written_at) < ?)"
                )
                params = (written_before,)  # type: ignore[assignment]
            return len(tx.c.execute(sql + " RETURNING seq", params).fetchall())

        return self._write(body)
