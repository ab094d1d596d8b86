"""An app whose module cannot be imported in a node's slot process.

The test process imports it; a spawned slot process fails to, as when the
task module is missing on the node's machine.
"""

from __future__ import annotations

import multiprocessing

import accord

if multiprocessing.parent_process() is not None:
    raise ImportError("apps.unloadable cannot be imported in a slot process (on purpose)")

app = accord.App("unloadable")


@app.task
def anything(x: int) -> int:
    return x
