"""Tasks: registration, options, submission, handles and the running attempt's context.

- :mod:`~accord.tasks.registry`: the :class:`Runtime`, what lower layers need of an app.
- :mod:`~accord.tasks.options`: :class:`TaskOptions` and their checks.
- :mod:`~accord.tasks.task`: :class:`Task`, a registered function (call, submit, map, start).
- :mod:`~accord.tasks.handles`: :class:`Handle` and :class:`Run`, and waiting on them.
- :mod:`~accord.tasks.context`: the running attempt and the children it submits.
"""

from __future__ import annotations

from accord.tasks.context import TaskContext, current
from accord.tasks.handles import Handle, Run
from accord.tasks.options import OPTION_NAMES, TaskOptions
from accord.tasks.registry import DEFAULT_MAX_PAYLOAD, Runtime
from accord.tasks.task import Task

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "OPTION_NAMES",
    "Handle",
    "Run",
    "Runtime",
    "Task",
    "TaskContext",
    "TaskOptions",
    "current",
]
