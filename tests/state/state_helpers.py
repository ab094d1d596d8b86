"""Helpers of the state and messaging tests: worker processes as direct children,
and SQL run on a test store behind the API's back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
WORKERS = HERE / "state_workers.py"


def spawn(*args: object, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``state_workers.py`` with ``args`` as a direct child of the test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
    command = [sys.executable, str(WORKERS), *map(str, args)]
    if log is None:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    with open(log, "ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> int:
    """Wait for a worker; kill it (and fail) if it overruns."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
