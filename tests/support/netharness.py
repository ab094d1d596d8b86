"""Nodes on separate "hosts" (network namespaces) for tests/netchaos (RELIABILITY.md Q7, Q8).

- :class:`Topology`: a hub namespace running its own PostgreSQL (a direct child, see
  ``pgserver``), N host namespaces joined to the hub by veth, and optionally a fault
  proxy (``faultproxy``) inside a host, in front of the database. The test process
  itself stays in the root namespace and talks to the database over its Unix socket
  (a path, so it crosses namespaces). :meth:`Topology.close` stops every process and
  deletes every namespace it made.
- :class:`NetCluster`: :class:`support.cluster.Cluster` whose worker ``i`` runs inside a given
  namespace (``ip netns exec`` execs the worker: the pid stays the worker's) with its
  own store URL (the hub's address as seen from that host, or the proxy's).
- :class:`FaultLog`: network and database faults logged as :class:`support.recorder.Fault`
  (monotonic start and end) into the cluster's fault log, so that ``account`` counts
  an attempt cut off by a partition as hit by a fault, like a kill.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from support import faultproxy, netns, pgserver
from support.cluster import Cluster
from support.recorder import Execution, Fault


@dataclass(slots=True)
class Host:
    """One host namespace: its name, its address, the hub's address seen from it."""

    name: str
    ns: str
    addr: str
    hub_addr: str


class Topology:
    """Hub (database) + ``hosts`` namespaces, PostgreSQL in the hub, an optional fault
    proxy in ``proxy_host`` listening on its 127.0.0.1 and forwarding to the hub."""

    def __init__(
        self,
        base_dir: Path,
        hosts: Sequence[str] = ("n1", "n2", "n3"),
        *,
        proxy_host: str | None = None,
        subnet: str = "10.213",
    ) -> None:
        self.base_dir = base_dir
        self.net = netns.Hosts(subnet)
        self.hosts: dict[str, Host] = {}
        self.pg: pgserver.PgServer | None = None
        self.proxy_proc: subprocess.Popen[bytes] | None = None
        self.proxy: faultproxy.ProxyClient | None = None
        self.proxy_host = proxy_host
        self.proxy_port: int | None = None
        self._names = list(hosts)

    def open(self) -> Topology:
        try:
            hub = self.net.add_hub("db")
            for name in self._names:
                hub_addr, addr = self.net.add_host(name)
                self.hosts[name] = Host(name, self.net.ns(name), addr, hub_addr)
            self.pg = pgserver.PgServer(
                self.base_dir / "pg",
                host=next(iter(self.hosts.values())).hub_addr,
                netns=hub,
                settings={"listen_addresses": "*"},
            )
            self.pg.init()
            self.pg.start()
            if self.proxy_host is not None:
                self._start_proxy()
        except BaseException:
            self.close()
            raise
        return self

    def _start_proxy(self) -> None:
        assert self.pg is not None and self.proxy_host is not None
        host = self.hosts[self.proxy_host]
        control = str(self.base_dir / "proxy.sock")
        self.proxy_port = 15432
        self.proxy_proc = faultproxy.spawn(
            ("127.0.0.1", self.proxy_port),
            (host.hub_addr, self.pg.port),
            control,
            prefix=["ip", "netns", "exec", host.ns],
        )
        self.proxy = faultproxy.ProxyClient(control)

    # -- URLs -----------------------------------------------------------------
    def create_database(self, prefix: str = "net") -> str:
        """A new empty database; returns its name."""
        assert self.pg is not None
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.pg.create_database(name)
        return name

    def local_url(self, db: str) -> str:
        """The database over the hub's Unix socket (usable from the root namespace)."""
        assert self.pg is not None
        sock = quote(str(self.pg.socket_dir), safe="")
        return f"postgresql://postgres@/{db}?host={sock}&port={self.pg.port}"

    def url_from(self, host: str, db: str, *, via_proxy: bool = False) -> str:
        """The database as ``host`` reaches it: the hub's address on its link, or
        the fault proxy on its own loopback."""
        assert self.pg is not None
        if via_proxy:
            if host != self.proxy_host or self.proxy_port is None:
                raise ValueError(f"host {host} has no proxy")
            return f"postgresql://postgres@127.0.0.1:{self.proxy_port}/{db}"
        return self.pg.url(db, host=self.hosts[host].hub_addr)

    # -- faults ---------------------------------------------------------------
    def heal_all(self) -> None:
        """Lift every partition, loss rule and proxy fault."""
        for host in self.hosts:
            self.net.heal(host)
            self.net.loss(host, 0.0)
        if self.proxy is not None and self.proxy_proc is not None:
            if self.proxy_proc.poll() is None:
                self.proxy.heal()

    def close(self) -> None:
        """Stop the proxy and the database, delete the namespaces. Idempotent."""
        try:
            if self.proxy_proc is not None:
                if self.proxy_proc.poll() is None:
                    self.proxy_proc.terminate()
                try:
                    self.proxy_proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proxy_proc.kill()
                    self.proxy_proc.wait()
                self.proxy_proc = None
        finally:
            try:
                if self.pg is not None:
                    self.pg.cleanup()
                    self.pg = None
            finally:
                self.net.cleanup()

    def __enter__(self) -> Topology:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()


class NetCluster(Cluster):
    """A :class:`Cluster` whose worker ``i`` runs in namespace ``placement[i][0]``
    with store URL ``placement[i][1]``."""

    def __init__(
        self,
        tmp_path: Path,
        store_url: str,
        placement: Sequence[tuple[str, str]],
        **kwargs: Any,
    ) -> None:
        super().__init__(tmp_path, store_url, n=len(placement), **kwargs)
        self.placement = list(placement)

    def _prefix(self, i: int) -> list[str]:
        # ``ip netns exec`` execs the worker: it stays a direct child with its own pid.
        return ["ip", "netns", "exec", self.placement[i][0]]

    def _env(self, i: int) -> dict[str, str]:
        return {**self.env, "ACCORD_STORE": self.placement[i][1]}


class FaultLog:
    """Network and database faults, logged into ``cluster.faults``.

    A fault on host ``i`` carries the pid of worker ``i``'s current process, so the
    checker counts an attempt that ran there as hit by it (as for a kill)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._lock = threading.Lock()

    def begin(self, kind: str, target: int, detail: str = "") -> Fault:
        pid = self.cluster.pid(target) if target >= 0 else -1
        fault = Fault(kind, target, pid, time.monotonic(), detail=detail)
        with self._lock:
            self.cluster.faults.append(fault)
        return fault

    @staticmethod
    def end(fault: Fault) -> Fault:
        fault.end = time.monotonic()
        return fault


def read_ticks(folder: Path) -> list[dict[str, Any]]:
    """The ``tick`` lines (side effects of ``apps.netchaos.ticker``) of every
    recorder file under ``folder``, by time."""
    ticks = []
    for path in sorted(folder.glob("exec-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line being written
            if entry.get("ev") == "tick":
                ticks.append(entry)
    ticks.sort(key=lambda e: e["t"])
    return ticks


def window_excess(executions: Sequence[Execution], faults: Sequence[Fault]) -> list[int]:
    """Tasks run more than 1 + the faults that hit them, where a fault that lasts (a
    lossy or flapping link) hits every execution on its node that overlaps it."""
    per_task: dict[int, int] = {}
    hit: dict[int, int] = {}
    for e in executions:
        per_task[e.task_id] = per_task.get(e.task_id, 0) + 1
        for f in faults:
            end = f.end if f.end is not None else float("inf")
            if f.pid == e.ppid and e.start <= end and (e.end is None or e.end >= f.start):
                hit[e.task_id] = hit.get(e.task_id, 0) + 1
                break
    return sorted(t for t, n in per_task.items() if n > 1 + hit.get(t, 0))


def finish_times(url: str) -> list[tuple[float, str | None]]:
    """(finished_at, node name) of every succeeded task, by time (server clock)."""
    from support.common import sql

    rows = sql(
        url,
        "SELECT t.finished_at, n.name FROM tasks t LEFT JOIN nodes n ON n.id = t.node_id "
        "WHERE t.state = 'succeeded' ORDER BY t.finished_at",
    )
    return [(float(at), name) for at, name in rows]


def recovery_times(
    faults: Mapping[str, Fault], done: Sequence[tuple[float, str | None]]
) -> dict[str, dict[str, float | None]]:
    """For each named fault: seconds from its end to the next completion anywhere
    (``any``) and to the next one by the faulted host's node (``host``, any
    generation; for a database crash, the last node to complete again)."""
    out: dict[str, dict[str, float | None]] = {}
    for name, fault in faults.items():
        if fault.end is None:
            continue
        end_wall = fault.wall + (fault.end - fault.start)
        later = [(at, node) for at, node in done if at >= end_wall]
        first_any = later[0][0] - end_wall if later else None
        if name == "db_crash":
            firsts: dict[str, float] = {}
            for at, node in later:
                host = (node or "").split(".")[0]
                firsts.setdefault(host, at - end_wall)
            first_host = max(firsts.values()) if firsts else None
        else:
            prefix = f"w{fault.target}."
            mine = [at for at, node in later if (node or "").startswith(prefix)]
            first_host = mine[0] - end_wall if mine else None
        out[name] = {
            "any": None if first_any is None else round(first_any, 3),
            "host": None if first_host is None else round(first_host, 3),
        }
    return out
