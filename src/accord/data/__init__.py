"""Sharing data: a durable, content-addressed object store (``app.objects``).

See :mod:`accord.data.objects` and ``docs/objects.md``.
"""

from __future__ import annotations

from accord.data.objects import DEFAULT_INLINE_LIMIT, GcReport, Objects, Problem, current
from accord.data.ref import ObjectRef

__all__ = ["DEFAULT_INLINE_LIMIT", "GcReport", "ObjectRef", "Objects", "Problem", "current"]
