"""Extension points: plugins told of what the node and the store do.

Subclass :class:`Hook`, override the methods of the events you need and add
it to an app (``app.hooks.add(MyHook())``); see :mod:`accord.hooks.hook`
for who tells what, and when. A failing hook is logged, never fatal.
"""

from __future__ import annotations

from accord.hooks.events import NodeEvent, RefusedWrite, RunEvent, TaskEvent
from accord.hooks.hook import Hook, OptionCheck
from accord.hooks.hookset import Hooks

for _public in (Hook, Hooks, NodeEvent, RefusedWrite, RunEvent, TaskEvent):
    _public.__module__ = __name__

__all__ = [
    "Hook",
    "Hooks",
    "NodeEvent",
    "OptionCheck",
    "RefusedWrite",
    "RunEvent",
    "TaskEvent",
]
