"""Connections PostgreSQL refuses for good fail at once; outages are retried.

A wrong password, a missing role or a missing database cannot mend
themselves: opening the store fails in well under a second with the
server's reason and what to check, and logs no retry. A server that cannot
be reached is still waited for (``retry_for``), with one log line when the
waiting starts, not one per attempt.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from accord.errors import ConfigError, StoreUnavailableError, StoreURLError
from accord.store import open_store
from accord.store.postgres import PgStore
from support import pgserver
from support.common import subprocess_env

# A bound on a hang (the bug retried for 30 s), not a benchmark.
AT_ONCE = 5.0
ROLE, PASSWORD = "accord_pw", "right-password"


def _retry_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]


def _pool_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("psycopg.pool")]


def _refused(url: str, caplog: pytest.LogCaptureFixture) -> StoreURLError:
    """Open the store at ``url``: it must fail at once, and retry nothing."""
    caplog.set_level(logging.INFO)
    start = time.monotonic()
    with pytest.raises(StoreURLError) as info:
        PgStore(url)
    elapsed = time.monotonic() - start
    assert elapsed < AT_ONCE, f"took {elapsed:.1f}s: retried"
    assert _retry_lines(caplog) == []
    assert not any("error connecting" in line for line in _pool_lines(caplog))
    assert isinstance(info.value, ConfigError)  # fix the URL; no StoreError, no retry
    assert "refused the connection" in str(info.value)
    assert "FATAL" in info.value.reason  # type: ignore[attr-defined]
    return info.value


@pytest.fixture(scope="module")
def pw_server() -> Iterator[pgserver.PgServer]:
    """A server of its own that asks for passwords over TCP (scram-sha-256),
    except of ``postgres``, which the support code connects as; the Unix
    socket trusts everyone, for the set-up."""
    if pgserver.find_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    server = pgserver.PgServer()
    hba = server.base_dir / "pg_hba_password.conf"
    hba.write_text(
        "local all all trust\n"
        "host all postgres 127.0.0.1/32 trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
        "host all all ::1/128 scram-sha-256\n"
    )
    hba.chmod(0o644)
    server.settings["hba_file"] = str(hba)
    try:
        server.start()
        with psycopg.connect(server.admin_conninfo(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
            conn.execute(f"CREATE DATABASE {ROLE} OWNER {ROLE}")
        yield server
    finally:
        server.cleanup()


def _pw_url(server: pgserver.PgServer, password: str | None) -> str:
    auth = ROLE if password is None else f"{ROLE}:{password}"
    return f"postgresql://{auth}@127.0.0.1:{server.port}/{ROLE}"


def test_the_right_password_opens_the_store(pw_server: pgserver.PgServer) -> None:
    # The set-up does what the other tests take it to do.
    with open_store(_pw_url(pw_server, PASSWORD)) as store:
        assert store.schema_version() >= 1  # type: ignore[attr-defined]


def test_wrong_password_fails_at_once(
    pw_server: pgserver.PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    error = _refused(_pw_url(pw_server, "wrong-password"), caplog)
    assert f'password authentication failed for user "{ROLE}"' in str(error)
    assert "check the user name and password in the store URL" in str(error)
    assert "wrong-password" not in str(error)
    assert error.url == f"postgresql://{ROLE}:***@127.0.0.1:{pw_server.port}/{ROLE}"  # type: ignore[attr-defined]


def test_no_password_fails_at_once(
    pw_server: pgserver.PgServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-such-pgpass"))
    start = time.monotonic()
    with pytest.raises(StoreURLError) as info:
        PgStore(_pw_url(pw_server, None))
    assert time.monotonic() - start < AT_ONCE
    assert "no password supplied" in str(info.value)
    assert "password" in str(info.value).rsplit(";", 1)[1]
    assert _retry_lines(caplog) == []


def test_missing_database_fails_at_once(
    pg_server: pgserver.PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    error = _refused(pg_server.url("no_such_db"), caplog)
    assert 'database "no_such_db" does not exist' in str(error)
    assert "check the database name in the store URL" in str(error)
    assert "CREATE DATABASE no_such_db" in str(error) and "accord migrate" in str(error)


def test_missing_role_fails_at_once(
    pg_server: pgserver.PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"postgresql://no_such_role@127.0.0.1:{pg_server.port}/postgres"
    error = _refused(url, caplog)
    assert 'role "no_such_role" does not exist' in str(error)
    assert "check the user name in the store URL" in str(error)


def test_unreachable_server_is_retried_with_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    port = pgserver.free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(StoreUnavailableError) as info:
        PgStore(f"postgresql://postgres@127.0.0.1:{port}/postgres", retry_for=1.0)
    elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < 1.0 + AT_ONCE
    lines = _retry_lines(caplog)
    assert len(lines) == 1, lines
    assert "unreachable, retrying for up to 1s" in lines[0] and "Connection refused" in lines[0]
    assert [r.name for r in caplog.records if "retrying" in r.getMessage()] == ["accord.store"]
    assert "tried for 1s" in str(info.value) and "Connection refused" in str(info.value)


def test_lost_server_is_retried_with_one_line_and_its_reason(
    pw_server: pgserver.PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The pool of a store that has worked reconnects on its own; its line for
    # every failed attempt is not logged, but the reason ends in the error.
    store = PgStore(pw_server.url(), retry_for=1.0)
    try:
        assert store.schema_version() >= 1
        caplog.set_level(logging.INFO)
        pw_server.stop()
        with pytest.raises(StoreUnavailableError) as info:
            store.schema_version()
        lines = _retry_lines(caplog)
        assert len(lines) == 1, lines
        assert not any("error connecting" in line for line in _pool_lines(caplog))
        assert "Connection refused" in str(info.value), str(info.value)
    finally:
        store.close()
        pw_server.start()


def test_cli_fails_at_once_on_a_missing_database(
    pg_server: pgserver.PgServer, tmp_path: Path
) -> None:
    url = pg_server.url("no_such_db")
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "accord", "runs", "--store", url],
        env=subprocess_env(url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - start
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert elapsed < AT_ONCE, f"took {elapsed:.1f}s"
    assert done.stderr.startswith("error: the store")
    assert 'database "no_such_db" does not exist' in done.stderr
    assert done.stderr.count("FATAL") == 1, done.stderr
    assert "retrying" not in done.stderr and "Traceback" not in done.stderr
