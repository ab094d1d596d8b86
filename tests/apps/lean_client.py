"""The client's side of the unknown-task test (see ``apps.lean``)."""

from __future__ import annotations

import accord

app = accord.App("lean")


@app.task
def known(x: int) -> int:
    return x + 1


@app.task(retries=3)
def only_on_client(x: int) -> int:
    return x - 1
