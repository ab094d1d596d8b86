"""Benchmark of the object store (``accord.data.Objects``), beside raw baselines.

Every figure of accord's is printed beside a baseline measured in the same
run on the same files, with the ratio of the times, accord/baseline (the
goal: within 1.3x). The files are kept in the page cache, so the figures are
of accord's own work and the durable writes, not of cold reads. It prints:

- the machine's own baselines: durable one-row commits per second in plain
  SQLite (WAL, synchronous=FULL) and sha256 throughput (every put hashes,
  every read verifies);
- put and get throughput (MiB/s) of 1 MiB, 64 MiB and 1 GiB objects on the
  local directory backend: ``put_file`` against ``shutil.copyfile`` plus an
  ``fsync`` of the copy; ``get_file`` against the same copy; reading through
  ``open`` and ``get`` against reading the file itself and hashing it (every
  read of accord's checks the digest, so a read can be no faster than sha256);
- the same on PostgreSQL (objects in 1 MiB chunks in the database) for 1 MiB
  and 64 MiB, with ``--pg URL`` (or ``ACCORD_BENCH_PG``), or ``--pg-local``
  for a throwaway server started here from the system's binaries (``initdb``
  and ``postgres``; as root, run as the ``postgres`` user); the baseline is
  plain psycopg writing the same 1 MiB chunks to a ``bytea`` table in one
  transaction and reading them back;
- ``put_file`` and ``get_file`` throughput on S3 for 1 MiB and 64 MiB, through
  ``Objects(store, "s3://bucket/prefix")`` (s3fs), each beside two baselines
  sending the same file to the same server: boto3's ``upload_file`` and
  ``download_file`` (multipart, in threads) and s3fs's own ``put_file`` and
  ``get_file`` (what accord's backend drives); downloads are fsynced, like
  ``get_file``'s. ``--s3`` starts moto's S3 server here (``python -m
  moto.server`` on loopback, its log in the temporary directory), ``--s3-url
  s3://bucket/prefix`` uses a real endpoint with the environment's
  credentials; the bench writes under a new ``accord-bench-<id>`` folder of
  that prefix and removes it afterwards;
- puts per second of small objects (4 KiB, distinct random contents) beside
  the same durable steps done plainly (the bytes to a file, fsync, one SQLite
  commit, rename, fsync of the directory), and repeat puts of an object
  already stored (a lookup) beside a plain SQLite commit of one updated row
  and a ``stat`` of the file;
- the time from submit to result of a task given a 256 MiB float64 numpy
  array (64 MiB with ``--quick``), run in a slot process of a node, against
  ``np.load`` of the same array from a local ``.npy`` file (both sum it); and
  ``objects.put`` / ``objects.get`` of the array against ``np.save`` (with an
  fsync) / ``np.load`` of the ``.npy`` file.

- the host cache: 4 ``accord worker`` processes, each with a cache directory
  of its own (as 4 hosts would have), run 16 tasks that each read one shard
  of 512 MiB (64 MiB with ``--quick``) kept in the database: the fetches from
  the store, the cache hits and the hit rate (one fetch per node is the best
  possible), and the time of a first read and of a cached one beside
  ``np.load`` of the same array from a local ``.npy`` file.

The PostgreSQL and S3 figures are of the backend itself: their objects are
read with no host cache (``cache=False``).

Pointing s3fs at an endpoint other than AWS's, through the environment (as
checked with s3fs/fsspec 2026.9, aiobotocore 3.10, botocore 1.43):
``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``) is read by botocore each
time a client is made, so it reaches s3fs and boto3 alike, whenever it is
set; ``FSSPEC_S3_ENDPOINT_URL`` reaches s3fs only, and only if set before
fsspec is first imported (fsspec reads ``FSSPEC_*`` once, at import); boto3
ignores it, so the baseline's client is given fsspec's endpoint, if any, by
hand. ``--s3`` sets ``AWS_ENDPOINT_URL_S3`` and test credentials for moto.

    python bench/bench_objects.py [--quick] [--sizes 1M,64M,1G]
        [--pg URL | --pg-local] [--s3 | --s3-url s3://bucket/prefix]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_state import raw_commits_per_second  # noqa: E402

import accord  # noqa: E402
from accord.data import Objects  # noqa: E402
from accord.store import open_store  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
CHUNK = MiB
GOAL = 1.3  # accord's time within 1.3x the baseline's
PG_SIZES = (MiB, 64 * MiB)
S3_SIZES = (MiB, 64 * MiB)
S3_BUCKET = "accord-bench"  # the bucket made on moto's server (--s3)
LABEL = 28  # width of the first column
Counted = tuple[int, float]  # operations done, in seconds

# The app of the end-to-end figure. Its slot process imports this script
# again (as __mp_main__), so everything below the guard at the end stays there.
app = accord.App("bench-objects")


@app.task
def array_sum(x: np.ndarray) -> float:
    return float(np.sum(x))


# The app of the cache figure, run by 4 ``accord worker`` processes (each a
# "host" with a cache directory of its own) that import this script.
shard_app = accord.App("bench-objects-shard", objects="database")


@shard_app.task
def shard_read(ref: Any) -> dict[str, Any]:
    """Read the shard ``ref`` through this node's cache: whether it had to be
    fetched from the store, and how long the read and sum took."""
    from accord.data.objects import current

    objects = current()
    cache = objects.cache
    assert cache is not None, "the node has no cache (ACCORD_CACHE_SIZE=0?)"
    misses = cache.misses
    started = time.perf_counter()
    total = float(np.sum(objects.get(ref)))
    return {
        "node": os.getpid(),
        "fetched": cache.misses > misses,
        "seconds": time.perf_counter() - started,
        "sum": total,
    }


# -- measuring ------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": KiB, "M": MiB, "G": GiB}.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in "KMG" else text
    try:
        size = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 1M or 1G") from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} is not positive")
    return size


def size_name(size: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def random_file(path: Path, size: int) -> None:
    """``size`` random bytes at ``path``, durable (so no later fsync pays for them)."""
    with path.open("wb") as out:
        left = size
        while left:
            n = min(left, 64 * MiB)
            out.write(os.urandom(n))
            left -= n
        out.flush()
        os.fsync(out.fileno())


def make_distinct(path: Path, rep: int) -> None:
    """Give the file new contents (its first 16 bytes), so no put finds it stored."""
    with path.open("r+b") as file:
        file.write(rep.to_bytes(8, "big") + os.urandom(8))
        file.flush()
        os.fsync(file.fileno())


def read_all(file: Any) -> int:
    total = 0
    while chunk := file.read(CHUNK):
        total += len(chunk)
    return total


def sha256_rate(seconds: float) -> float:
    data = os.urandom(64 * MiB)
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        hashlib.sha256(data).digest()
        done += len(data)
    return done / (time.perf_counter() - started) / MiB


def free_port() -> int:
    """A TCP port free on loopback now (someone may still take it before us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- printing -------------------------------------------------------------------
def verdict(ratio: float) -> str:
    return "ok" if ratio <= GOAL else "MISSED"


def table_head(what: str) -> None:
    print(what)
    print(f"  {'':<{LABEL}} {'accord':>14} {'baseline':>14} {'ratio':>7}")


def rate_row(label: str, size: int, mine: list[float], theirs: list[float], base_label: str) -> str:
    """Throughput of ``size`` bytes moved in the median of each list of times."""
    a, b = statistics.median(mine), statistics.median(theirs)
    return (
        f"  {label:<{LABEL}} {size / a / MiB:>8,.0f} MiB/s {size / b / MiB:>8,.0f} MiB/s"
        f" {a / b:>6.2f}x {verdict(a / b):<6}  ({base_label}; n={len(mine)})"
    )


def time_row(label: str, mine: list[float], theirs: list[float], base_label: str) -> str:
    """The median of each list of times, in milliseconds."""
    a, b = statistics.median(mine), statistics.median(theirs)
    return (
        f"  {label:<{LABEL}} {a * 1000:>11,.1f} ms {b * 1000:>11,.1f} ms"
        f" {a / b:>6.2f}x {verdict(a / b):<6}  ({base_label}; n={len(mine)})"
    )


def count_row(label: str, mine: Counted, theirs: Counted, base: str) -> str:
    """Operations per second, each of ``(count, seconds)``; the ratio is of
    the time of one operation, as in the other tables."""
    a, b = mine[0] / mine[1], theirs[0] / theirs[1]
    return (
        f"  {label:<{LABEL}} {a:>11,.0f} /s {b:>11,.0f} /s"
        f" {b / a:>6.2f}x {verdict(b / a):<6}  ({base}; n={mine[0]}, {theirs[0]})"
    )


class Pairs:
    """The times of accord and of its baselines, per operation, over repetitions."""

    def __init__(self) -> None:
        self.times: dict[str, list[list[float]]] = {}

    def add(
        self, name: str, rep: int, accord_op: Callable[[], Any], *base_ops: Callable[[], Any]
    ) -> None:
        ops = [accord_op, *base_ops]
        times = self.times.setdefault(name, [[] for _ in ops])
        # Turn about which goes first, so that none always finds the caches
        # (the page cache, the server's) as another one left them.
        first = rep % len(ops)
        for i in [*range(first, len(ops)), *range(first)]:
            times[i].append(timed(ops[i]))

    def print(self, size: int, labels: Mapping[str, tuple[str, tuple[str, ...]]]) -> None:
        for name, (mine, *theirs) in self.times.items():
            label, base_labels = labels[name]
            for base_label, base_times in zip(base_labels, theirs, strict=True):
                print(rate_row(f"{size_name(size)} {label}", size, mine, base_times, base_label))


def reps_for(size: int, quick: bool) -> int:
    if size <= MiB:
        return 8 if quick else 16
    return (3 if quick else 5) if size <= 64 * MiB else 1


# -- 1. the local directory backend ---------------------------------------------------
LOCAL_LABELS = {
    "put": ("put_file", ("copyfile + fsync",)),
    "get_file": ("get_file", ("copyfile + fsync",)),
    "open": ("open + read", ("open + read + sha256 of the file",)),
    "get": ("get (bytes)", ("Path.read_bytes + sha256",)),
}


def local_rep(objects: Objects, folder: Path, size: int, rep: int, pairs: Pairs) -> None:
    """One repetition of every local figure, on new contents of ``source.bin``."""
    src, copy, out = folder / "source.bin", folder / "copy.bin", folder / "out.bin"
    make_distinct(src, rep)
    refs: list[Any] = []

    def copy_sync() -> None:
        shutil.copyfile(src, copy)
        fsync_path(copy)

    def read_open() -> None:
        with objects.open(refs[0]) as file:
            assert read_all(file) == size

    # Every read of accord's checks the digest: the plain reads hash too.
    def read_plain() -> None:
        digest = hashlib.sha256()
        with src.open("rb") as file:
            while chunk := file.read(CHUNK):
                digest.update(chunk)
        assert digest.hexdigest()

    def get_plain() -> None:
        assert hashlib.sha256(src.read_bytes()).hexdigest()

    # Each put keeps its object until the collection after the last rep, so
    # the baseline keeps its copy as long: both write to new files and pages
    # (on a virtual machine, memory touched for the first time costs more).
    kept = folder / f"kept-{rep}.bin"

    def copy_kept() -> None:
        shutil.copyfile(src, kept)
        fsync_path(kept)

    pairs.add("put", rep, lambda: refs.append(objects.put_file(src)), copy_kept)
    assert refs[0].size == size
    pairs.add("get_file", rep, lambda: objects.get_file(refs[0], out), copy_sync)
    copy.unlink()
    assert out.stat().st_size == size
    out.unlink()
    pairs.add("open", rep, read_open, read_plain)
    pairs.add("get", rep, lambda: objects.get(refs[0]), get_plain)


def local_throughput(folder: Path, sizes: list[int], quick: bool) -> None:
    store = open_store(f"sqlite:///{folder / 'local.db'}")
    objects = Objects(store)
    table_head(f"local directory backend ({objects.location}), page cache warm:")
    try:
        for size in sizes:
            reps = reps_for(size, quick)
            # The source, its copy, get_file's output, and each rep's object
            # (they stay until the collection after the last rep).
            need = (3 + 2 * reps) * size + 64 * MiB
            free = shutil.disk_usage(folder).free
            if free < need:
                print(
                    f"  {size_name(size)}: skipped, {free / GiB:.1f} GiB free of {need / GiB:.1f}"
                )
                continue
            random_file(folder / "source.bin", size)
            pairs = Pairs()
            for rep in range(reps):
                local_rep(objects, folder, size, rep, pairs)
            (folder / "source.bin").unlink()
            for rep in range(reps):
                (folder / f"kept-{rep}.bin").unlink()
            report = objects.gc(grace=0)  # nothing references them: the bytes go
            assert len(report.collected) == reps, report
            pairs.print(size, LOCAL_LABELS)
    finally:
        store.close()


# -- 2. PostgreSQL chunks ---------------------------------------------------------------
def pg_bin_dir() -> Path | None:
    """The directory of ``postgres`` and ``initdb``: PATH's, else the newest
    ``/usr/lib/postgresql/*/bin`` (Debian's packages put them there)."""
    found = shutil.which("postgres")
    if found and (Path(found).resolve().parent / "initdb").exists():
        return Path(found).resolve().parent
    candidates = [
        Path(p)
        for p in glob.glob("/usr/lib/postgresql/*/bin")
        if Path(p, "postgres").exists() and Path(p, "initdb").exists()
    ]

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)

    return max(candidates, key=version, default=None)


@contextmanager
def local_postgres() -> Iterator[str | None]:
    """A throwaway PostgreSQL server (fsync on) in a temporary directory, its
    URL; None, said why, where it cannot be started."""
    import psycopg

    bin_dir = pg_bin_dir()
    if bin_dir is None:
        print("postgresql: skipped, --pg-local found no postgres/initdb binaries")
        yield None
        return
    base = Path(tempfile.mkdtemp(prefix="accord-bench-pg-"))
    # setpriv execs its argument, so the postmaster is our own child; it dies
    # with us (--pdeathsig) if this process is killed before it stops it.
    prefix = ["setpriv", "--pdeathsig=KILL"] if shutil.which("setpriv") else []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            print("postgresql: skipped, --pg-local as root needs a postgres user")
            shutil.rmtree(base)
            yield None
            return
        if not prefix:
            print("postgresql: skipped, --pg-local as root needs setpriv")
            shutil.rmtree(base)
            yield None
            return
        os.chown(base, user.pw_uid, user.pw_gid)
        prefix += ["--reuid=postgres", "--regid=postgres", "--init-groups", "--reset-env"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    data, port = base / "data", free_port()
    proc: subprocess.Popen[bytes] | None = None
    try:
        with (base / "initdb.log").open("wb") as log:
            argv = [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
            argv += ["-E", "UTF8", "--locale=C", "--no-sync"]
            done = subprocess.run([*prefix, *argv], stdout=log, stderr=subprocess.STDOUT, env=env)
        if done.returncode != 0:
            tail = log_tail(base / "initdb.log")
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{tail}")
        with (base / "postgres.log").open("ab") as log:
            argv = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(base)]
            argv += ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=on"]
            proc = subprocess.Popen(
                [*prefix, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {proc.returncode}:\n{log_tail(base / 'postgres.log')}"
                )
            try:
                with psycopg.connect(url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postgres did not answer in 30 s:\n{log_tail(base / 'postgres.log')}"
                    ) from None
                time.sleep(0.05)
        yield url
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # fast shutdown
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def pg_server(args: argparse.Namespace) -> Iterator[str | None]:
    """The URL of a PostgreSQL database to measure (None: skip)."""
    if args.pg_local:
        with local_postgres() as url:
            yield url
        return
    yield args.pg or os.environ.get("ACCORD_BENCH_PG") or None


@contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """A URL of the server at ``url`` whose search path is a new, empty
    schema, dropped afterwards (so autovacuum does not clean up after it
    while later figures are measured)."""
    import psycopg
    from psycopg import sql

    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    joiner = "&" if "?" in url else "?"
    try:
        yield f"{url}{joiner}options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


PG_LABELS = {
    "put": ("put_file", ("psycopg INSERT of the 1 MiB chunks, one transaction",)),
    "get_file": ("get_file", ("psycopg SELECT of the chunks to a file + fsync",)),
    "open": ("open + read", ("psycopg SELECT of the chunks",)),
}


def pg_rep(objects: Objects, conn: Any, folder: Path, size: int, rep: int, pairs: Pairs) -> None:
    """One repetition of every PostgreSQL figure, on new contents of ``pg-source.bin``."""
    src, out = folder / "pg-source.bin", folder / "pg-out.bin"
    make_distinct(src, rep)
    key = f"r{size}-{rep}"
    refs: list[Any] = []

    def raw_put() -> None:
        with conn.transaction(), src.open("rb") as file:
            seq = 0
            while chunk := file.read(CHUNK):
                conn.execute("INSERT INTO raw_chunks VALUES (%s, %s, %s)", (key, seq, chunk))
                seq += 1

    def raw_chunks() -> Iterator[bytes]:
        seq = 0
        while True:
            found = conn.execute(
                "SELECT data FROM raw_chunks WHERE k = %s AND seq = %s", (key, seq)
            ).fetchone()
            if found is None:
                return
            yield bytes(found[0])
            seq += 1

    def raw_get_file() -> None:
        with out.open("wb") as file:
            for chunk in raw_chunks():
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())

    def raw_read() -> None:
        assert sum(len(c) for c in raw_chunks()) == size

    def read_open() -> None:
        with objects.open(refs[0]) as file:
            assert read_all(file) == size

    pairs.add("put", rep, lambda: refs.append(objects.put_file(src)), raw_put)
    assert refs[0].size == size
    pairs.add("get_file", rep, lambda: objects.get_file(refs[0], out), raw_get_file)
    assert out.stat().st_size == size
    out.unlink()
    pairs.add("open", rep, read_open, raw_read)


def pg_throughput(server: str, folder: Path, quick: bool) -> None:
    import psycopg

    with fresh_schema(server) as url:
        store = open_store(url)
        try:
            # No host cache: the figures are of reading the database.
            objects = Objects(store, "database", cache=False)
            with psycopg.connect(url, autocommit=True) as conn:
                settings = [
                    f"{name}={row[0] if (row := conn.execute(f'SHOW {name}').fetchone()) else '?'}"
                    for name in ("server_version", "fsync", "synchronous_commit")
                ]
                print(f"  ({', '.join(settings)})")
                conn.execute(
                    "CREATE TABLE raw_chunks (k text, seq int, data bytea, PRIMARY KEY (k, seq))"
                )
                for size in PG_SIZES:
                    random_file(folder / "pg-source.bin", size)
                    pairs = Pairs()
                    reps = (4 if quick else 8) if size <= MiB else 2
                    for rep in range(reps):
                        pg_rep(objects, conn, folder, size, rep, pairs)
                    (folder / "pg-source.bin").unlink()
                    report = objects.gc(grace=0)
                    assert len(report.collected) == reps, report
                    pairs.print(size, PG_LABELS)
        finally:
            store.close()


# -- 3. S3 -------------------------------------------------------------------------------
@contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """``os.environ`` with ``values`` set (None: removed), as it was afterwards."""
    before = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def moto_s3(folder: Path) -> Iterator[str]:
    """moto's S3 server on loopback, as a subprocess, with a bucket made; the
    URL of that bucket. The environment points s3fs and boto3 at it meanwhile."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = folder / "moto.log"
    credentials = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with log_path.open("ab") as log:  # a file, not a pipe: nobody would drain a pipe
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **credentials},
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the moto server exited with {proc.returncode}:\n{log_tail(log_path)}"
                )
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1.0):
                    break
            except urllib.error.HTTPError:
                break  # it answered
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the moto server did not answer in 30 s:\n{log_tail(log_path)}"
                    ) from None
                time.sleep(0.05)
        # botocore reads AWS_ENDPOINT_URL_S3 whenever a client is made (s3fs's
        # through aiobotocore as well as boto3's), whatever was imported when.
        # The caller's FSSPEC_S3_ENDPOINT_URL would win over it in s3fs (fsspec
        # reads it at its first import, still to come), and a profile or token
        # of the caller's must not reach moto: they go for the while.
        with environment(
            **credentials,
            AWS_ENDPOINT_URL_S3=endpoint,
            AWS_PROFILE=None,
            AWS_SESSION_TOKEN=None,
            FSSPEC_S3_ENDPOINT_URL=None,
        ):
            boto3_client().create_bucket(Bucket=S3_BUCKET)
            yield f"s3://{S3_BUCKET}"
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def s3_server(args: argparse.Namespace, folder: Path) -> Iterator[str | None]:
    """The ``s3://bucket/prefix`` URL to measure (None: skip)."""
    if args.s3:
        with moto_s3(folder) as url:
            yield url
        return
    yield args.s3_url


def boto3_client() -> Any:
    """A boto3 client for the server s3fs uses. boto3 reads botocore's
    settings (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, ``~/.aws``) as s3fs
    does, but not fsspec's (``FSSPEC_S3_ENDPOINT_URL``, fsspec's config
    files): an endpoint given there is passed on here."""
    import boto3  # type: ignore[import-untyped]
    import fsspec.config

    conf = fsspec.config.conf.get("s3", {})
    client_kwargs = conf.get("client_kwargs") or {}
    endpoint = conf.get("endpoint_url") or client_kwargs.get("endpoint_url")
    return boto3.client("s3", **({"endpoint_url": endpoint} if endpoint else {}))


S3_LABELS = {
    "put": ("put_file", ("boto3 upload_file", "s3fs put_file")),
    "get_file": ("get_file", ("boto3 download_file + fsync", "s3fs get_file + fsync")),
}


def s3_rep(
    objects: Objects,
    client: Any,
    fs: Any,
    root: str,
    folder: Path,
    size: int,
    rep: int,
    pairs: Pairs,
) -> None:
    """One repetition of every S3 figure, on new contents of ``s3-source.bin``.
    ``root`` is ``bucket/key-prefix``, the baselines' keys go under it."""
    src, out = folder / "s3-source.bin", folder / "s3-out.bin"
    make_distinct(src, rep)
    bucket, _, prefix = root.partition("/")
    key = f"{prefix}/baseline/{size}-{rep}"
    refs: list[Any] = []

    def boto3_get() -> None:
        client.download_file(bucket, f"{key}-boto3", str(out))
        fsync_path(out)

    def s3fs_get() -> None:
        fs.get_file(f"{bucket}/{key}-s3fs", str(out))
        fsync_path(out)

    pairs.add(
        "put",
        rep,
        lambda: refs.append(objects.put_file(src)),
        lambda: client.upload_file(str(src), bucket, f"{key}-boto3"),
        lambda: fs.put_file(str(src), f"{bucket}/{key}-s3fs"),
    )
    assert refs[0].size == size
    pairs.add("get_file", rep, lambda: objects.get_file(refs[0], out), boto3_get, s3fs_get)
    assert out.stat().st_size == size
    out.unlink()


def s3_throughput(url: str, folder: Path, quick: bool) -> None:
    import fsspec

    # A new folder of the prefix: the collection at the end removes whatever
    # bytes under the object store's URL its catalogue does not know.
    root = f"{url.removeprefix('s3://').rstrip('/')}/accord-bench-{uuid.uuid4().hex[:10]}"
    bucket, _, prefix = root.partition("/")
    client = boto3_client()
    fs = fsspec.filesystem("s3")
    store = open_store(f"sqlite:///{folder / 's3.db'}")
    try:
        # No host cache: the figures are of reading the server.
        objects = Objects(store, f"s3://{root}/objects", cache=False)
        print(f"  (objects at {objects.location}; endpoint {client.meta.endpoint_url})")
        for size in S3_SIZES:
            random_file(folder / "s3-source.bin", size)
            pairs = Pairs()
            reps = (4 if quick else 8) if size <= MiB else (2 if quick else 3)
            for rep in range(reps):
                s3_rep(objects, client, fs, root, folder, size, rep, pairs)
                if rep == 0:  # accord and the baselines talk to the same server
                    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/objects/")
                    assert listed.get("KeyCount", 0) > 0, (
                        f"accord's puts are not at {client.meta.endpoint_url}"
                    )
            (folder / "s3-source.bin").unlink()
            report = objects.gc(grace=0)
            assert len(report.collected) == reps, report
            pairs.print(size, S3_LABELS)
    finally:
        store.close()
        try:
            fs.rm(root, recursive=True)
        except FileNotFoundError:
            pass  # nothing was written
        except Exception as exc:  # best effort: do not hide why the section failed
            print(f"  (could not remove s3://{root}: {exc})")


# -- 4. small objects -------------------------------------------------------------------
def raw_small(folder: Path, blobs: list[bytes], seconds: float) -> tuple[Counted, Counted]:
    """The durable steps of a put of a new small object, done plainly, for
    ``seconds``: the bytes to a temporary file and fsync, one row committed
    in SQLite (WAL, synchronous=FULL), the file renamed to its name and its
    directory fsynced. Then, as a put of a stored object does, a commit of
    the row updated and a ``stat`` of the file. Each as (count, seconds)."""
    where = folder / "raw-small"
    where.mkdir()
    conn = sqlite3.connect(folder / "raw-small.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE objects (name TEXT PRIMARY KEY, size INTEGER, touched REAL)")
    dir_fd = os.open(where, os.O_RDONLY)
    try:
        done = 0
        started = time.perf_counter()
        while done < len(blobs) and time.perf_counter() - started < seconds:
            name = f"{done:08d}"
            part = where / f"{name}.part"
            with part.open("xb") as file:
                file.write(blobs[done])
                file.flush()
                os.fsync(file.fileno())
            conn.execute("INSERT INTO objects VALUES (?, ?, ?)", (name, len(blobs[done]), 0.0))
            os.replace(part, where / name)
            os.fsync(dir_fd)
            done += 1
        puts = (done, time.perf_counter() - started)
        again = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            name = f"{again % puts[0]:08d}"
            conn.execute("UPDATE objects SET touched = ? WHERE name = ?", (time.time(), name))
            os.stat(where / name)
            again += 1
        return puts, (again, time.perf_counter() - started)
    finally:
        os.close(dir_fd)
        conn.close()


def small_objects(folder: Path, seconds: float) -> None:
    store = open_store(f"sqlite:///{folder / 'small.db'}")
    objects = Objects(store)
    try:
        pool = os.urandom(4 * KiB * 8192)
        blobs = [pool[i : i + 4 * KiB] for i in range(0, len(pool), 4 * KiB)]
        refs = []
        started = time.perf_counter()
        for blob in blobs:
            refs.append(objects.put(blob))
            if time.perf_counter() - started >= seconds:
                break
        puts = (len(refs), time.perf_counter() - started)
        assert len({r.digest for r in refs}) == len(refs)
        done = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            again = objects.put(blobs[done % len(refs)])
            assert again == refs[done % len(refs)]
            done += 1
        lookups = (done, time.perf_counter() - started)
    finally:
        store.close()
    raw_puts, raw_lookups = raw_small(folder, blobs, seconds)
    base = "write, fsync, SQLite commit, rename, fsync dir"
    print(count_row("put, 4 KiB, distinct", puts, raw_puts, base))
    print(count_row("put again (a lookup)", lookups, raw_lookups, "SQLite UPDATE commit + stat"))


# -- 5. a task given a large array ----------------------------------------------------
def task_argument(folder: Path, nbytes: int, reps: int) -> None:
    count = nbytes // 8
    rng = np.random.default_rng(1)
    array = rng.standard_normal(count)
    saved: list[Path] = []

    def save() -> None:
        # A new file each time, kept: accord's puts keep each new array too.
        npy = folder / f"array-{len(saved)}.npy"
        np.save(npy, array)
        fsync_path(npy)
        saved.append(npy)

    save()
    app.use_store(f"sqlite:///{folder / 'task.db'}")
    with app, app.embedded_node(mode="process", slots=1):
        array_sum.submit(np.zeros(4)).result(timeout=120)  # the slot is up and warm
        submits, loads, again, saves, puts, gets = [], [], [], [], [], []
        for rep in range(reps):
            array[0] = rep + 0.5  # new contents: the array is stored anew each time
            expect = float(np.sum(array))
            saves.append(timed(save))

            def load(expect: float = expect) -> None:
                assert float(np.sum(np.load(saved[-1]))) == expect

            def submit(expect: float = expect) -> None:
                assert array_sum.submit(array).result(timeout=600) == expect

            loads.append(timed(load))
            submits.append(timed(submit))
            again.append(timed(submit))  # the same array: found stored, not written
        # The two halves of the argument's path, in this process.
        for rep in range(reps):
            array[0] = -1.0 - rep
            expect = float(np.sum(array))
            refs: list[Any] = []

            def put(refs: list[Any] = refs) -> None:
                refs.append(app.objects.put(array))

            puts.append(timed(put))

            def get(ref: Any = refs[0], expect: float = expect) -> None:
                assert float(np.sum(app.objects.get(ref))) == expect

            gets.append(timed(get))
    for npy in saved:
        npy.unlink()
    load_label = "np.load of the .npy + sum"
    print(time_row(f"submit -> result ({size_name(nbytes)})", submits, loads, load_label))
    print(time_row("  the array already stored", again, loads, load_label))
    print(time_row("app.objects.put(array)", puts, saves, "np.save to the .npy + fsync"))
    print(time_row("app.objects.get(ref) + sum", gets, loads, load_label))


def cache_hits(folder: Path, nbytes: int, nodes: int = 4, per_node: int = 4) -> None:
    """``nodes`` worker processes, each with a cache of its own, run
    ``nodes * per_node`` tasks that all read one shard kept in the database."""
    url = f"sqlite:///{folder / 'shard.db'}"
    array = np.random.default_rng(2).standard_normal(nbytes // 8)
    npy = folder / "shard.npy"
    np.save(npy, array)
    fsync_path(npy)
    expect = float(np.sum(array))
    env = dict(os.environ, ACCORD_OBJECTS="database", PYTHONPATH=str(Path(__file__).parent))
    shard_app.use_store(url)
    workers: list[subprocess.Popen[bytes]] = []
    logs = [folder / f"node{i}.log" for i in range(nodes)]
    try:
        ref = shard_app.objects.put(array)
        del array
        for i, log in enumerate(logs):
            argv = [sys.executable, "-m", "accord", "worker", "--app", "bench_objects:shard_app"]
            argv += ["--store", url, "--slots", "1", "--mode", "thread", "--name", f"node{i}"]
            argv += ["--cache-dir", str(folder / f"cache{i}"), "--cache-size", "4G"]
            with log.open("wb") as out:
                workers.append(
                    subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
                )
        handles = [shard_read.submit(ref) for _ in range(nodes * per_node)]
        try:
            results = [h.result(timeout=600) for h in handles]
        except Exception:
            print("\n".join(log_tail(log) for log in logs))
            raise
        assert all(r["sum"] == expect for r in results)
        loads = [timed(lambda: np.sum(np.load(npy))) for _ in range(3)]
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        shard_app.close()
        npy.unlink(missing_ok=True)
    by_node: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        by_node.setdefault(r["node"], []).append(r)
    fetched = [r for r in results if r["fetched"]]
    hits = len(results) - len(fetched)
    spread = ", ".join(
        f"{len(rs)} tasks/{sum(r['fetched'] for r in rs)} fetched" for rs in by_node.values()
    )
    print(
        f"  {len(results)} tasks on {len(by_node)} nodes ({spread}): {len(fetched)} fetches "
        f"from the store, {hits} cache hits, hit rate {hits / len(results):.0%} "
        f"(best possible {1 - len(by_node) / len(results):.0%}: one fetch per node)"
    )
    label = "np.load of the .npy + sum"
    print(
        time_row("first read on a node", [r["seconds"] for r in fetched], loads, label)
        + "  (fetch from the database into the cache, verified)"
    )
    hit_times = [r["seconds"] for r in results if not r["fetched"]]
    if hit_times:
        print(
            time_row("read from the node's cache", hit_times, loads, label)
            + "  (memory map, verified)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="no 1 GiB object, shorter runs")
    parser.add_argument(
        "--sizes",
        metavar="SIZES",
        help="comma-separated object sizes for the local table (e.g. 1M,64M,1G)",
    )
    pg = parser.add_mutually_exclusive_group()
    pg.add_argument(
        "--pg", metavar="URL", help="also measure PostgreSQL (a database allowed to create schemas)"
    )
    pg.add_argument(
        "--pg-local", action="store_true", help="also measure a throwaway local PostgreSQL server"
    )
    s3 = parser.add_mutually_exclusive_group()
    s3.add_argument(
        "--s3", action="store_true", help="also measure S3 on a local moto server (a subprocess)"
    )
    s3.add_argument(
        "--s3-url",
        metavar="URL",
        help="also measure S3 at s3://bucket/prefix, with the environment's endpoint and "
        "credentials (written under a new folder there, removed afterwards)",
    )
    args = parser.parse_args()
    if args.s3_url is not None and not re.fullmatch(r"s3://[^/]+(/.*)?", args.s3_url):
        parser.error(f"--s3-url {args.s3_url!r} is not of the form s3://bucket/prefix")
    try:
        if args.sizes:
            sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
        else:
            sizes = [MiB, 64 * MiB] if args.quick else [MiB, 64 * MiB, GiB]
    except argparse.ArgumentTypeError as exc:
        parser.error(f"--sizes: {exc}")
    seconds = 1.0 if args.quick else 3.0
    array_bytes = 64 * MiB if args.quick else 256 * MiB
    for name in ("ACCORD_OBJECTS", "ACCORD_CACHE_SIZE", "ACCORD_CACHE_DIR"):
        if os.environ.pop(name, None) is not None:
            print(f"({name} is ignored here: each section says where its objects go)")
    with tempfile.TemporaryDirectory(prefix="accord-bench-objects-", dir="/tmp") as tmp:
        folder = Path(tmp)
        # Nothing of the bench's may land in this user's own cache.
        os.environ["ACCORD_CACHE_DIR"] = str(folder / "cache")
        commits = raw_commits_per_second(folder, 1, seconds)
        print(
            f"accord {accord.__version__} object store benchmark, {os.cpu_count()} CPUs, "
            f"Python {sys.version.split()[0]}, numpy {np.__version__}, in {folder}"
        )
        print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        print(
            f"baseline: plain SQLite commits (WAL, synchronous=FULL): {commits:8,.0f} /s "
            f"({1000 / commits:.2f} ms each)"
        )
        hashing = sha256_rate(1.0)
        print(f"baseline: sha256 in this process: {hashing:29,.0f} MiB/s")
        print(f"goal: accord's time within {GOAL}x the baseline's (ratio = accord / baseline time)")
        print()
        local_throughput(folder, sizes, args.quick)
        print()
        with pg_server(args) as server:
            if server is None:
                if not args.pg_local:
                    print(
                        "postgresql: skipped; run with --pg postgresql://user@host/db (or set "
                        "ACCORD_BENCH_PG), or --pg-local for a throwaway server"
                    )
            else:
                table_head("postgresql backend (1 MiB chunks in the database), no host cache:")
                pg_throughput(server, folder, args.quick)
        print()
        with s3_server(args, folder) as url:
            if url is None:
                print(
                    "s3: skipped; run with --s3 (a local moto server) or --s3-url s3://bucket/prefix"
                )
            else:
                where = "a local moto server" if args.s3 else url
                table_head(f"s3 backend ({where}, through s3fs), no host cache:")
                s3_throughput(url, folder, args.quick)
        print()
        table_head("small objects, local directory backend, SQLite catalogue:")
        small_objects(folder, seconds)
        print()
        what = f"a task given a {size_name(array_bytes)} float64 array (node with 1 process slot):"
        table_head(what)
        task_argument(folder, array_bytes, 3)
        print()
        shard = 64 * MiB if args.quick else 512 * MiB
        table_head(
            f"the host cache: 4 nodes (worker processes, a cache directory each) "
            f"reading one {size_name(shard)} shard kept in the database (SQLite):"
        )
        cache_hits(folder, shard)
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
