"""Tasks whose arguments and results are over the app's inline limit, with the
object store in S3 (tests/test_objects_s3.py points the S3 client at moto)."""

from __future__ import annotations

import hashlib

import accord

INLINE = 1024
PREFIX = "tasks"
app = accord.App("objects_s3", inline_limit=INLINE, objects=f"s3://accord-test/{PREFIX}")


@app.task
def digest_of(data: bytes) -> str:
    """The SHA-256 of what arrived."""
    return hashlib.sha256(data).hexdigest()


@app.task
def repeat(data: bytes, times: int) -> bytes:
    """A result over the inline limit too."""
    return data * times
