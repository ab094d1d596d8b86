"""Fixtures of the multi-host tests: one topology (hub with PostgreSQL, hosts n1, n2,
n3; n3 reaches the database through a fault proxy) shared by the whole package,
and a fresh database per test."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import accord
from apps import netchaos
from support import netns, pgserver
from support.common import bind
from support.netharness import Topology


def _skip_reason() -> str | None:
    reason = netns.unavailable()
    if reason is not None:
        return reason
    if pgserver.find_bin_dir() is None:
        return "PostgreSQL server binaries not found (apt-get install postgresql)"
    return None


@pytest.fixture(scope="session")
def topology() -> Iterator[Topology]:
    """Hub ``db`` running PostgreSQL, hosts n1, n2, n3 (n3 with a fault proxy)."""
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    # The postgres user must be able to enter the directory: not under a 0700 tmp_path.
    base = Path(tempfile.mkdtemp(prefix="accord-net-"))
    base.chmod(0o755)
    topo = Topology(base, ("n1", "n2", "n3"), proxy_host="n3")
    try:
        topo.open()
        yield topo
    finally:
        topo.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def net(topology: Topology) -> Iterator[Topology]:
    """The shared topology, healed (and its database running) before and after the test."""
    _restore(topology)
    try:
        yield topology
    finally:
        _restore(topology)


def _restore(topo: Topology) -> None:
    topo.heal_all()
    assert topo.pg is not None
    if not topo.pg.running:
        topo.pg.start()


@pytest.fixture
def app(net: Topology) -> Iterator[accord.App]:
    """tests/apps/netchaos.py's app on a fresh database of the hub's server."""
    bind(netchaos.app, net.local_url(net.create_database("net")))
    try:
        yield netchaos.app
    finally:
        netchaos.app.close()
