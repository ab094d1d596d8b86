"""A small TCP fault proxy for tests (this kernel has no ``tc netem``).

Clients connect to the proxy, which connects to the target and pumps bytes both ways,
with knobs for delay, blackhole, refused connections and TCP resets. ``FaultProxy`` runs
in-process on a daemon thread; ``python tests/support/faultproxy.py --listen H:P --target H:P
--control H:P`` runs it as a process (inside a network namespace, say) driven by
``ProxyClient`` over a line protocol (``delay 50 10\\n`` -> ``ok\\n``). A ``--control``
value with a ``/`` in it is a Unix socket path, reachable from outside the namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

Address = tuple[str, int]
_LINGER_RST = struct.pack("ii", 1, 0)


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Abort with a TCP RST: SO_LINGER (1, 0), then close."""
    if writer is None or writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


class _Conn:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.target: asyncio.StreamWriter | None = None
        self.task = asyncio.current_task()

    def abort(self) -> None:
        _rst(self.client)
        _rst(self.target)
        if self.task is not None:
            self.task.cancel()


class _Core:
    """The proxy itself; lives on one event loop and is only touched from it."""

    def __init__(self, listen: Address, target: Address, seed: int = 0) -> None:
        self.listen, self.target = listen, target
        self.rng = random.Random(seed)
        self.delay = (0.0, 0.0)
        self.reset_p = 0.0
        self.open = asyncio.Event()
        self.open.set()
        self.lsock: socket.socket | None = None
        self.conns: set[_Conn] = set()
        self.handlers: set[asyncio.Task[None]] = set()
        self.counts = {"accepted": 0, "bytes_up": 0, "bytes_down": 0, "resets": 0}

    async def start(self) -> Address:
        family = socket.AF_INET6 if ":" in self.listen[0] else socket.AF_INET
        self.lsock = socket.create_server(self.listen, family=family, backlog=128)
        self.lsock.setblocking(False)
        self.listen = self.lsock.getsockname()[:2]
        asyncio.get_running_loop().add_reader(self.lsock.fileno(), self._accept)
        return self.listen

    def _accept(self) -> None:
        # Accept synchronously in a reader callback, not with asyncio.Server or an accept
        # task: stopping those races with sockets just accepted, which then leak or close.
        assert self.lsock is not None
        for _ in range(64):
            try:
                sock, _ = self.lsock.accept()
            except OSError:  # BlockingIOError: nothing left to accept
                return
            task = asyncio.get_running_loop().create_task(self._handle(sock))
            self.handlers.add(task)  # the loop holds tasks only weakly
            task.add_done_callback(self.handlers.discard)

    async def close(self) -> None:
        await self._set_refuse(True)
        for conn in list(self.conns):
            conn.abort()
        while self.conns or self.handlers:
            await asyncio.sleep(0.005)

    async def _set_refuse(self, on: bool) -> None:
        if on and self.lsock is not None:  # open connections stay
            asyncio.get_running_loop().remove_reader(self.lsock.fileno())
            self.lsock.close()
            self.lsock = None
        elif not on and self.lsock is None:
            await self.start()

    async def apply(self, cmd: str, *args: str) -> Any:
        """One knob command; the control protocol and ``FaultProxy`` both end up here."""
        if cmd == "delay":
            self.delay = (float(args[0]), float(args[1]) if len(args) > 1 else 0.0)
        elif cmd == "blackhole" and args[0] == "1":
            self.open.clear()
        elif cmd == "blackhole":
            self.open.set()
        elif cmd == "refuse":
            await self._set_refuse(args[0] == "1")
        elif cmd == "reset_all":
            self.counts["resets"] += len(self.conns)
            for conn in list(self.conns):
                conn.abort()
        elif cmd == "reset_probability":
            self.reset_p = float(args[0])
            if len(args) > 1:
                self.rng.seed(int(args[1]))
        elif cmd == "heal":
            self.delay, self.reset_p = (0.0, 0.0), 0.0
            self.open.set()
            await self._set_refuse(False)
        elif cmd == "stats":
            return {**self.counts, "open": len(self.conns)}
        elif cmd == "address":
            return list(self.listen)
        elif cmd != "ping":
            raise ValueError(f"unknown command {cmd!r}")
        return None

    async def _handle(self, sock: socket.socket) -> None:
        self.counts["accepted"] += 1
        try:
            reader, writer = await asyncio.open_connection(sock=sock)
        except OSError:
            sock.close()
            return
        conn = _Conn(writer)
        self.conns.add(conn)
        try:
            await self.open.wait()  # blackholed: hold the client, don't even dial
            try:
                treader, conn.target = await asyncio.open_connection(*self.target)
            except OSError:
                _rst(writer)
                return
            await asyncio.gather(
                self._pump(reader, conn.target, conn, "bytes_up"),
                self._pump(treader, writer, conn, "bytes_down"),
            )
        except asyncio.CancelledError:
            pass
        finally:
            self.conns.discard(conn)
            for w in (writer, conn.target):
                if w is not None:
                    w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn, key: str
    ) -> None:
        """Forward one direction. A reader task stamps each chunk with its due time, so
        a delay adds latency without limiting throughput, and byte order is kept."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue(maxsize=64)

        async def feed() -> None:
            try:
                while True:
                    await self.open.wait()
                    data = await reader.read(65536)
                    ms, jitter = self.delay
                    extra = ms + self.rng.uniform(0, jitter) if jitter else ms
                    await chunks.put((loop.time() + extra / 1000, data))
                    if not data:
                        return
            except OSError:
                await chunks.put((0.0, None))

        feeder = asyncio.create_task(feed())
        try:
            while True:
                due, data = await chunks.get()
                if data is None:  # the peer reset: pass the reset on
                    conn.abort()
                    return
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                await self.open.wait()  # blackholed: hold the bytes, in order
                if self.reset_p and self.rng.random() < self.reset_p:
                    self.counts["resets"] += 1
                    conn.abort()
                    return
                writer.write(data)
                await writer.drain()
                self.counts[key] += len(data)
        except OSError:
            conn.abort()
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder


class _Knobs:
    """The fault knobs, shared by ``FaultProxy`` (in-process) and ``ProxyClient``."""

    def _do(self, cmd: str, *args: object) -> Any:
        raise NotImplementedError

    def set_delay(self, ms: float, jitter_ms: float = 0) -> None:
        """Add ``ms`` (+ uniform ``0..jitter_ms``) to every chunk, in each direction."""
        self._do("delay", ms, jitter_ms)

    def set_blackhole(self, on: bool) -> None:
        """Pass nothing (connections stay open, new ones are accepted); bytes are held
        and flow in order once lifted, as TCP retransmission would after a partition."""
        self._do("blackhole", int(on))

    def set_refuse(self, on: bool) -> None:
        """Stop listening, so new connections get ECONNREFUSED; open ones are kept."""
        self._do("refuse", int(on))

    def reset_all(self) -> None:
        """Abort every open connection with a TCP RST on both sides."""
        self._do("reset_all")

    def set_reset_probability(self, p: float, seed: int | None = None) -> None:
        """Per forwarded chunk, abort its connection (RST both sides) with probability p."""
        self._do("reset_probability", p, *(() if seed is None else (seed,)))

    def heal(self) -> None:
        """All knobs off."""
        self._do("heal")

    def stats(self) -> dict[str, int]:
        """accepted, open, bytes_up (client to target), bytes_down, resets."""
        return dict(self._do("stats"))


class FaultProxy(_Knobs):
    """The proxy on its own event loop in a daemon thread; every knob is thread-safe."""

    def __init__(
        self,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        target_host: str = "127.0.0.1",
        target_port: int = 0,
        *,
        seed: int = 0,
    ) -> None:
        self._args = ((listen_host, listen_port), (target_host, target_port), seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._core: _Core | None = None
        self.address: Address = (listen_host, listen_port)

    def _run(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    def start(self) -> FaultProxy:
        self._loop = loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(loop, ready), name="faultproxy", daemon=True
        )
        self._thread.start()
        ready.wait()

        async def make() -> Address:
            self._core = _Core(*self._args)
            return await self._core.start()

        self.address = asyncio.run_coroutine_threadsafe(make(), loop).result(10)
        return self

    def _do(self, cmd: str, *args: object) -> Any:
        assert self._loop is not None and self._core is not None, "start() first"
        coro = self._core.apply(cmd, *(str(a) for a in args))
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def stop(self) -> None:
        if self._loop is None or self._thread is None or self._core is None:
            return
        asyncio.run_coroutine_threadsafe(self._core.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = self._thread = self._core = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProxyClient(_Knobs):
    """Drives a proxy process over its control socket: TCP ``host, port`` or, with
    ``control_port=None``, the Unix socket at path ``control_host``."""

    def __init__(self, control_host: str, control_port: int | None = None) -> None:
        self.control = (control_host, control_port)

    def _do(self, cmd: str, *args: object) -> Any:
        host, port = self.control
        if port is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(host)
        else:
            sock = socket.create_connection((host, port), timeout=10)
        with sock, sock.makefile("rwb") as f:
            f.write((" ".join([cmd, *map(str, args)]) + "\n").encode())
            f.flush()
            reply = f.readline().decode().strip()
        status, _, payload = reply.partition(" ")
        if status != "ok":
            raise RuntimeError(f"proxy said {reply!r} to {cmd!r}")
        return json.loads(payload) if payload else None

    @property
    def address(self) -> Address:
        """Where the proxy process listens."""
        host, port = self._do("address")
        return host, int(port)


def spawn(
    listen: Address, target: Address, control: str, *, prefix: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """Start ``faultproxy.py`` as a process (``prefix``: e.g. ``ip netns exec NS``) and
    wait until it serves; ``control`` is ``HOST:PORT`` or a Unix socket path (has a ``/``).
    The caller terminates and waits the process."""
    argv = [*prefix, sys.executable, __file__, "--listen", f"{listen[0]}:{listen[1]}"]
    argv += ["--target", f"{target[0]}:{target[1]}", "--control", control]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with proc.stdout:
        line = proc.stdout.readline()
    if not line.startswith(b"ready"):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"faultproxy process did not start: {line!r}")
    return proc


def _split(hostport: str) -> Address:
    host, _, port = hostport.rpartition(":")
    return host, int(port)


async def _main(listen: Address, target: Address, control: str) -> None:
    core = _Core(listen, target)
    await core.start()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.closing(writer):
            while line := (await reader.readline()).decode().split():
                try:
                    result = await core.apply(*line)
                    reply = "ok" if result is None else "ok " + json.dumps(result)
                except Exception as exc:
                    reply = f"err {type(exc).__name__}: {exc}"
                writer.write((reply + "\n").encode())
                await writer.drain()

    if "/" in control:
        ctl = await asyncio.start_unix_server(serve, control)
    else:
        ctl = await asyncio.start_server(serve, *_split(control), reuse_address=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    print("ready", json.dumps({"listen": core.listen, "control": control}), flush=True)
    await done.wait()
    ctl.close()
    await core.close()
    if "/" in control:
        with contextlib.suppress(OSError):
            os.unlink(control)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT (port 0: pick one)")
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--control", required=True, help="HOST:PORT or a Unix socket path")
    ns = parser.parse_args()
    asyncio.run(_main(_split(ns.listen), _split(ns.target), ns.control))
