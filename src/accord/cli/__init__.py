"""The ``accord`` command: a thin shell over the public API.

Every option has an environment default under ``ACCORD_`` (the store URL is
``ACCORD_STORE``). Errors a user can cause print one line and exit with 2.
One module per group of commands: :mod:`~accord.cli.runs`,
:mod:`~accord.cli.nodes`, :mod:`~accord.cli.state` and :mod:`~accord.cli.demo`;
:mod:`~accord.cli.common` holds what they share.
"""

from __future__ import annotations

from accord.cli import demo, housekeeping, logs, nodes, objects, runs, schedules, state, task
from accord.cli.common import cli

__all__ = [
    "cli",
    "demo",
    "housekeeping",
    "logs",
    "main",
    "nodes",
    "objects",
    "runs",
    "state",
    "task",
]

state.register(cli)  # accord state | mailbox | topic ...
objects.register(cli)  # accord objects ...
housekeeping.register(cli)  # accord prune
schedules.register(cli)  # accord schedules [pause | resume]
logs.register(cli)  # accord logs TASK


def main() -> None:
    cli()
