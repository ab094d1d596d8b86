"""Tests of the test harness itself: pgserver, faultproxy and netns."""

from __future__ import annotations

import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from support import faultproxy, netns, pgserver

# -- PostgreSQL ---------------------------------------------------------------------------


def _require_pg() -> None:
    if pgserver.find_bin_dir() is None:
        reason = "PostgreSQL binaries (postgres, initdb) not on PATH nor in /usr/lib/postgresql"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI is set")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def pg() -> Iterator[pgserver.PgServer]:
    _require_pg()
    server = pgserver.PgServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_find_bin_dir_and_free_port() -> None:
    bin_dir = pgserver.find_bin_dir()
    if bin_dir is not None:
        assert (bin_dir / "postgres").exists() and (bin_dir / "initdb").exists()
    port = pgserver.free_port()
    with socket.create_server(("127.0.0.1", port)):
        pass


@pytest.mark.timeout(60)
def test_server_runs_as_direct_child(pg: pgserver.PgServer) -> None:
    assert pg.running and pg.pid is not None
    assert _ppid(pg.pid) == os.getpid()
    if os.geteuid() == 0:
        assert Path(f"/proc/{pg.pid}").stat().st_uid != 0
    with psycopg.connect(pg.url()) as conn:
        assert conn.execute("SHOW fsync").fetchone() == ("on",)
        assert conn.execute("SHOW max_connections").fetchone() == ("200",)
    assert "ready to accept connections" in pg.log_tail()
    assert pg.url("x") == f"postgresql://postgres@127.0.0.1:{pg.port}/x"


@pytest.mark.timeout(60)
def test_create_and_drop_database(pg: pgserver.PgServer) -> None:
    pg.create_database("harness_db")
    conn = psycopg.connect(pg.url("harness_db"))
    try:
        assert conn.execute("SELECT current_database()").fetchone() == ("harness_db",)
        pg.drop_database("harness_db")  # FORCE: the open connection does not stop it
    finally:
        conn.close()
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(pg.url("harness_db")).close()


@pytest.mark.timeout(60)
def test_fresh_url_and_schema_url(pg: pgserver.PgServer) -> None:
    a, b = pg.fresh_url("h"), pg.fresh_url("h")
    assert a != b
    with psycopg.connect(a) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0].startswith("h_")
    url = pg.schema_url("s")
    assert "?options=-csearch_path%3Ds_" in url
    with psycopg.connect(url) as conn:
        (schema,) = conn.execute("SELECT current_schema()").fetchone()
        assert schema.startswith("s_")
        conn.execute("CREATE TABLE t (x int)")
    with psycopg.connect(pg.url()) as conn:
        found = conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 't'"
        )
        assert found.fetchall() == [(schema,)]


@pytest.mark.timeout(60)
def test_kill_then_start_again(pg: pgserver.PgServer) -> None:
    url = pg.fresh_url("k")
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
    idle = psycopg.connect(url)
    try:
        for _ in range(2):
            old, port = pg.pid, pg.port
            assert old is not None
            pg.kill()
            assert not pg.running and not Path(f"/proc/{old}").exists()  # reaped, no zombie
            pg.start(timeout=20)  # no stale postmaster.pid trouble
            assert pg.port == port and pg.pid != old
        with psycopg.connect(url) as conn:  # committed data survived the crashes
            assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
        with pytest.raises(psycopg.OperationalError):
            idle.execute("SELECT 1")
    finally:
        idle.close()
    pg.stop()
    assert not pg.running
    pg.start()
    with psycopg.connect(pg.url()) as conn:
        conn.execute("SELECT 1")


def _ssl_probe(port: int, timeout: float) -> bytes:
    """Send an SSLRequest; a live postmaster answers one byte (``N``: no SSL) at once."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall((8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"))
        try:
            return s.recv(1)
        except TimeoutError:
            return b""


@pytest.mark.timeout(60)
def test_pause_and_resume(pg: pgserver.PgServer) -> None:
    assert _ssl_probe(pg.port, 2) == b"N"
    pg.pause()
    try:
        assert _ssl_probe(pg.port, 0.3) == b""
    finally:
        pg.resume()
    assert _ssl_probe(pg.port, 2) == b"N"


@pytest.mark.timeout(60)
def test_failed_start_reports_the_log() -> None:
    _require_pg()
    bad = pgserver.PgServer(settings={"max_connections": "lots"})
    try:
        with pytest.raises(RuntimeError, match="max_connections"):
            bad.start(timeout=20)
        assert not bad.running
    finally:
        bad.cleanup()
    assert not bad.base_dir.exists()


# -- fault proxy ------------------------------------------------------------------------


class _Echo(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                while data := self.request.recv(65536):
                    self.request.sendall(data)
            except OSError:
                pass


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = _Echo(("127.0.0.1", 0), _Echo.Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[0], server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[faultproxy.FaultProxy]:
    with faultproxy.FaultProxy(target_host=echo[0], target_port=echo[1]) as p:
        yield p


def _round_trip(sock: socket.socket, payload: bytes) -> float:
    start = time.monotonic()
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        got += chunk
    assert got == payload
    return time.monotonic() - start


@pytest.mark.timeout(30)
def test_proxy_passes_bytes(proxy: faultproxy.FaultProxy) -> None:
    payload = os.urandom(1 << 20)
    with socket.create_connection(proxy.address, timeout=5) as s:
        _round_trip(s, payload)
    stats = proxy.stats()
    assert stats["accepted"] == 1
    assert stats["bytes_up"] == stats["bytes_down"] == len(payload)


@pytest.mark.timeout(30)
def test_proxy_delay(proxy: faultproxy.FaultProxy) -> None:
    with socket.create_connection(proxy.address, timeout=5) as s:
        fast = _round_trip(s, b"ping")
        proxy.set_delay(50, jitter_ms=10)
        slow = min(_round_trip(s, b"ping") for _ in range(3))
        assert slow >= 0.100  # 50 ms each way
        big = os.urandom(300_000)
        _round_trip(s, big)  # many chunks with jitter: still in order
        proxy.heal()
        assert _round_trip(s, b"ping") < 0.05 + fast


@pytest.mark.timeout(30)
def test_proxy_blackhole_holds_bytes_until_lifted(proxy: faultproxy.FaultProxy) -> None:
    with socket.create_connection(proxy.address, timeout=5) as s:
        _round_trip(s, b"a")
        proxy.set_blackhole(True)
        s.sendall(b"held")
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(10)
        with socket.create_connection(proxy.address, timeout=5) as s2:  # accepted, silent
            s2.sendall(b"x")
            s2.settimeout(0.2)
            with pytest.raises(TimeoutError):
                s2.recv(10)
            proxy.set_blackhole(False)
            s2.settimeout(5)
            assert s2.recv(10) == b"x"
        s.settimeout(5)
        got = b""
        while len(got) < 4:
            got += s.recv(10)
        assert got == b"held"


@pytest.mark.timeout(30)
def test_proxy_reset_all_resets_both_sides() -> None:
    with socket.create_server(("127.0.0.1", 0)) as target:
        host, port = target.getsockname()[:2]
        with (
            faultproxy.FaultProxy(target_host=host, target_port=port) as p,
            socket.create_connection(p.address, timeout=5) as client,
        ):
            client.sendall(b"hello")
            target.settimeout(5)
            upstream, _ = target.accept()
            with upstream:
                upstream.settimeout(5)
                assert upstream.recv(10) == b"hello"
                p.reset_all()
                with pytest.raises(ConnectionResetError):
                    client.recv(10)
                with pytest.raises(ConnectionResetError):
                    upstream.recv(10)
            assert p.stats()["resets"] == 1


@pytest.mark.timeout(30)
def test_proxy_refuse(proxy: faultproxy.FaultProxy) -> None:
    with socket.create_connection(proxy.address, timeout=5) as old:
        _round_trip(old, b"accepted")  # not just queued in the listen backlog
        proxy.set_refuse(True)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(proxy.address, timeout=5).close()
        _round_trip(old, b"still open")
        proxy.set_refuse(False)
    with socket.create_connection(proxy.address, timeout=5) as s:
        _round_trip(s, b"back")


@pytest.mark.timeout(30)
def test_proxy_reset_probability(proxy: faultproxy.FaultProxy) -> None:
    proxy.set_reset_probability(1.0, seed=1)
    with socket.create_connection(proxy.address, timeout=5) as s:
        s.sendall(b"x")
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass
    proxy.set_reset_probability(0.0)
    with socket.create_connection(proxy.address, timeout=5) as s:
        _round_trip(s, b"fine")
    assert proxy.stats()["resets"] == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("control", ["tcp", "unix"])
def test_proxy_process(echo: tuple[str, int], control: str, tmp_path: Path) -> None:
    if control == "tcp":
        port = pgserver.free_port()
        where, client = f"127.0.0.1:{port}", faultproxy.ProxyClient("127.0.0.1", port)
    else:
        where = str(tmp_path / "ctl.sock")
        client = faultproxy.ProxyClient(where)
    proc = faultproxy.spawn(("127.0.0.1", 0), echo, where)
    try:
        address = client.address
        with socket.create_connection(address, timeout=5) as s:
            _round_trip(s, b"via process")
            client.set_delay(40)
            assert _round_trip(s, b"slow") >= 0.080
            client.heal()
        assert client.stats()["bytes_up"] == len(b"via process") + len(b"slow")
        with pytest.raises(RuntimeError, match="unknown command"):
            client._do("bogus")
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


# -- network namespaces -----------------------------------------------------------------

_ECHO_SERVER = """
import socket, sys, threading
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("up", flush=True)
def serve(c):
    with c:
        while data := c.recv(1024):
            c.sendall(data)
while True:
    threading.Thread(target=serve, args=(srv.accept()[0],), daemon=True).start()
"""

_ECHO_CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as s:
    s.sendall(b"over the veth")
    assert s.recv(100) == b"over the veth"
"""


@pytest.fixture
def hosts() -> Iterator[netns.Hosts]:
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(reason)
    h = netns.Hosts()
    yield h
    h.cleanup()


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.mark.timeout(60)
def test_netns_cut_and_heal(hosts: netns.Hosts) -> None:
    hub = hosts.add_hub()
    hub1, addr1 = hosts.add_host("n1")
    hub2, _ = hosts.add_host("n2")
    assert (hub1, addr1) == ("10.213.1.1", "10.213.1.2") and hub2 == "10.213.2.1"
    assert {hub, hosts.ns("n1"), hosts.ns("n2")} <= _namespaces()
    assert all(len(ns) <= 15 for ns in (hub, hosts.ns("n1")))

    port = 7007
    server = subprocess.Popen(
        hosts.argv(hub, [sys.executable, "-c", _ECHO_SERVER, str(port)]),
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None and server.stdout.readline() == b"up\n"

        def reaches(host: str, hub_addr: str) -> bool:
            argv = hosts.argv(host, [sys.executable, "-c", _ECHO_CLIENT, hub_addr, str(port)])
            return subprocess.run(argv, capture_output=True, timeout=20).returncode == 0

        assert reaches("n1", hub1) and reaches("n2", hub2)
        hosts.cut("n1")
        assert not reaches("n1", hub1)
        assert reaches("n2", hub2)  # only n1 is partitioned
        hosts.heal("n1")
        assert reaches("n1", hub1)
        hosts.loss("n1", 1.0)
        assert not reaches("n1", hub1)
        hosts.loss("n1", 0)
        assert reaches("n1", hub1)
    finally:
        server.kill()
        server.wait()
        assert server.stdout is not None
        server.stdout.close()
    made = {hub, hosts.ns("n1"), hosts.ns("n2")}
    hosts.cleanup()
    hosts.cleanup()  # idempotent
    assert not made & _namespaces()
