"""The ``accord`` command: a thin shell over the public API.

Every option has an environment default under ``ACCORD_`` (the store URL is
``ACCORD_STORE``). Errors a user can cause print one line and exit with 2.
One module per group of commands: :mod:`~accord.cli.runs`,
:mod:`~accord.cli.nodes`, :mod:`~accord.cli.state` and :mod:`~accord.cli.demo`;
:mod:`~accord.cli.common` holds what they share.
"""

from __future__ import annotations

from accord.cli import demo, nodes, objects, runs, state
from accord.cli.common import cli

__all__ = ["cli", "demo", "main", "nodes", "objects", "runs", "state"]

state.register(cli)  # accord state | mailbox | topic ...
objects.register(cli)  # accord objects ...


def main() -> None:
    cli()
