"""The node's side of the unknown-task test: app "lean" with one task.

``apps.lean_client`` defines an app of the same name with one more task, so
a client can submit a task that a node running this module does not know.
"""

from __future__ import annotations

import accord

app = accord.App("lean")


@app.task
def known(x: int) -> int:
    return x + 1
