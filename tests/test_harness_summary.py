"""A test run says what it left out: without PostgreSQL's binaries a local run
counts the variants it skipped at the end, and CI fails instead."""

from __future__ import annotations

import os
import subprocess
import sys

from support.common import TESTS

ONE_STORE_TEST = "test_store.py::test_submit_is_one_transaction"


def run_pytest_without_postgresql(*, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PG_BIN_DIR"] = "/nonexistent"  # as on a machine without the server's binaries
    if ci:
        env["CI"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", ONE_STORE_TEST],
        cwd=TESTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_local_run_counts_the_postgresql_variants_it_skipped() -> None:
    proc = run_pytest_without_postgresql(ci=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 passed, 1 skipped" in proc.stdout
    assert "1 PostgreSQL variant(s) skipped: no server binaries" in proc.stdout


def test_ci_fails_rather_than_skips_without_postgresql() -> None:
    proc = run_pytest_without_postgresql(ci=True)
    assert proc.returncode != 0
    assert "PostgreSQL server binaries not found" in proc.stdout
    assert "variant(s) skipped" not in proc.stdout
