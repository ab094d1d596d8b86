"""Hosts in Linux network namespaces for partition tests (root only).

A star: one hub namespace (the database host) and N hosts, each joined to the hub by
its own veth pair on its own /24 (``10.213.<i>.1`` in the hub, ``10.213.<i>.2`` in host
i). Hosts reach the hub only, not each other. Namespaces share the file system, so
processes inside them use the same files, venv and Unix sockets as the test process.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import os
import shutil
import subprocess
from collections.abc import Sequence
from types import TracebackType

_instances = itertools.count()


def _ip(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True, timeout=30)


@functools.cache
def unavailable() -> str | None:
    """Why namespaces can't be used here (None if they can). Tries a real namespace."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = f"acc{os.getpid()}-probe"
    added = _ip("netns", "add", probe)
    if added.returncode != 0:
        return f"`ip netns add` failed: {added.stderr.strip()}"
    try:
        veth = _ip("-n", probe, "link", "add", "name", "a", "type", "veth", "peer", "name", "b")
        if veth.returncode != 0:
            return f"cannot create a veth pair: {veth.stderr.strip()}"
        nft = subprocess.run(
            ["ip", "netns", "exec", probe, "nft", "list", "ruleset"], capture_output=True
        )
        if nft.returncode != 0:
            return f"nft does not work in a namespace: {nft.stderr.decode().strip()}"
    finally:
        _ip("netns", "del", probe)
    return None


class Hosts:
    """Namespaces named ``acc<pid>-<name>`` (``acc<pid>x<k>-<name>`` for the k-th
    object of this process). Methods take the short name or the full namespace name."""

    def __init__(self, subnet: str = "10.213") -> None:
        k = next(_instances)
        self.prefix = f"acc{os.getpid()}" + (f"x{k}" if k else "")
        self.subnet = subnet
        self.hub: str | None = None
        self.hosts: dict[str, int] = {}  # namespace -> index i of 10.213.<i>.0/24
        self._created: list[str] = []
        self._cut: set[str] = set()
        self._loss: dict[str, float] = {}
        atexit.register(self.cleanup)

    def ns(self, name: str) -> str:
        """The namespace name for a short ``name`` (a full name is returned as is)."""
        return name if name.startswith(self.prefix + "-") else f"{self.prefix}-{name}"

    def _add_ns(self, name: str) -> str:
        ns = self.ns(name)
        if len(ns) > 15:
            raise ValueError(f"namespace name {ns!r} is longer than 15 characters")
        self._check(_ip("netns", "add", ns))
        self._created.append(ns)
        self._check(_ip("-n", ns, "link", "set", "lo", "up"))
        return ns

    @staticmethod
    def _check(done: subprocess.CompletedProcess[str]) -> None:
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(done.args)} failed: {done.stderr.strip()}")

    def add_hub(self, name: str = "db") -> str:
        """Create the hub (database host) namespace; returns its namespace name."""
        if self.hub is not None:
            raise RuntimeError(f"hub already exists: {self.hub}")
        self.hub = self._add_ns(name)
        return self.hub

    def add_host(self, name: str) -> tuple[str, str]:
        """Create host ``name`` joined to the hub (made as ``db`` if missing).
        Returns (the hub's address as seen from this host, the host's own address)."""
        hub = self.hub or self.add_hub()
        i = len(self.hosts) + 1
        if i > 254:
            raise ValueError("at most 254 hosts")
        ns = self._add_ns(name)
        self.hosts[ns] = i
        hub_if = f"h{i}"
        veth = ["link", "add", "name", hub_if, "netns", hub, "type", "veth"]
        self._check(_ip(*veth, "peer", "name", "eth0", "netns", ns))
        hub_addr, host_addr = self.addresses(ns)
        self._check(_ip("-n", hub, "addr", "add", f"{hub_addr}/24", "dev", hub_if))
        self._check(_ip("-n", ns, "addr", "add", f"{host_addr}/24", "dev", "eth0"))
        self._check(_ip("-n", hub, "link", "set", hub_if, "up"))
        self._check(_ip("-n", ns, "link", "set", "eth0", "up"))
        return hub_addr, host_addr

    def addresses(self, host: str) -> tuple[str, str]:
        """(hub address seen from ``host``, ``host``'s own address)."""
        i = self.hosts[self.ns(host)]
        return f"{self.subnet}.{i}.1", f"{self.subnet}.{i}.2"

    def argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside namespace ``ns`` (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.ns(ns), *argv]

    def run(self, ns: str, argv: Sequence[str]) -> str:
        """Run a command in ``ns``; return its stdout, raise on failure."""
        done = subprocess.run(self.argv(ns, argv), capture_output=True, text=True, timeout=30)
        self._check(done)
        return done.stdout

    def _nft(self, ns: str, script: str) -> None:
        self._check(_ip("netns", "exec", ns, "nft", "-f", "-", stdin=script))

    def cut(self, host: str) -> None:
        """Partition ``host`` from the hub both ways: nft drops every packet arriving on
        the link, in both namespaces. Senders see silence (no error, no RST), as in a
        real partition; established TCP connections survive a short cut."""
        ns = self.ns(host)
        if ns in self._cut:
            return
        assert self.hub is not None
        i = self.hosts[ns]
        for where, dev in ((ns, "eth0"), (self.hub, f"h{i}")):
            chain = f'type filter hook input priority -10; iifname "{dev}" drop;'
            self._nft(where, f"table inet accord_cut_{dev} {{\n chain in {{ {chain} }}\n}}\n")
        self._cut.add(ns)

    def heal(self, host: str) -> None:
        """Undo ``cut(host)``."""
        ns = self.ns(host)
        if ns not in self._cut:
            return
        assert self.hub is not None
        for where, dev in ((ns, "eth0"), (self.hub, f"h{self.hosts[ns]}")):
            self._nft(where, f"delete table inet accord_cut_{dev}")
        self._cut.discard(ns)

    def loss(self, host: str, probability: float) -> None:
        """Drop packets on ``host``'s link at random with ``probability``, each way
        (iptables statistic on input in the host and in the hub); 0 removes it."""
        ns = self.ns(host)
        assert self.hub is not None
        dev = {ns: "eth0", self.hub: f"h{self.hosts[ns]}"}
        old = self._loss.pop(ns, 0.0)
        for where in (ns, self.hub):
            for op, p in (("-D", old), ("-A", probability)):
                if p > 0:
                    rule = ["-i", dev[where], "-m", "statistic", "--mode", "random"]
                    rule += ["--probability", f"{p:.6f}", "-j", "DROP"]
                    self.run(where, ["iptables", op, "INPUT", *rule])
        if probability > 0:
            self._loss[ns] = probability

    def cleanup(self) -> None:
        """Delete the namespaces this object made (their veths go with them). Idempotent."""
        while self._created:
            _ip("netns", "del", self._created.pop())
        self.hub = None
        self.hosts.clear()
        self._cut.clear()
        self._loss.clear()
        atexit.unregister(self.cleanup)

    def __enter__(self) -> Hosts:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
