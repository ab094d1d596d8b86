from __future__ import annotations

from accord.cli import main

main()
