"""Tasks that take and return values larger than the app's inline limit, so
they move through the object store (tests/test_objects.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

import accord
from accord.data import ObjectRef

INLINE = 4096
app = accord.App("objects_app", inline_limit=INLINE)


@app.task
def describe(array: np.ndarray, extra: bytes) -> dict[str, Any]:
    """What arrived: the array's sum and layout, the bytes' length."""
    return {
        "sum": float(array.sum()),
        "dtype": array.dtype.str,
        "shape": list(array.shape),
        "writeable": bool(array.flags.writeable),
        "extra": len(extra),
    }


@app.task
def make(n: int) -> np.ndarray:
    """A result far over the inline limit."""
    return np.arange(n, dtype=np.float64)


@app.task
def read_ref(ref: ObjectRef) -> int:
    """A reference passed by hand, read in the task with ``ref.get()``."""
    return len(ref.get())


@app.task
def store_big(key: str, n: int) -> str:
    """A state value over the inline limit, written from a task."""
    accord.current().state.put(key, "s" * n)
    return key


@app.task
def cache_read(ref: ObjectRef) -> dict[str, Any]:
    """Read ``ref`` through this process's host cache: whether it was fetched."""
    import hashlib

    from accord.data.objects import current

    objects = current()
    cache = objects.cache
    misses = cache.misses if cache is not None else 0
    data = objects.read_bytes(ref)
    return {
        "sha": hashlib.sha256(data).hexdigest(),
        "cached": cache is not None,
        "fetched": cache is not None and cache.misses > misses,
    }
