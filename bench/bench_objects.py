"""Benchmark of the object store (``accord.data.Objects``), beside raw baselines.

Prints, each figure beside a baseline measured in the same run on the same
files (kept in the page cache, so the figures are of accord's own work and
the durable writes, not of cold reads):

- the machine's own baseline: durable one-row commits per second in plain
  SQLite (WAL, synchronous=FULL) and sha256 throughput (every put hashes,
  every read verifies);
- put and get throughput (MiB/s) of 1 MiB, 64 MiB and 1 GiB objects on the
  local directory backend: ``put_file`` against ``shutil.copyfile`` plus an
  ``fsync`` of the copy; ``get_file`` against the same copy; reading through
  ``open`` and ``get`` against reading the file itself; with the ratio of the
  times, accord/baseline (the goal: within 1.3x);
- the same on PostgreSQL (objects in 1 MiB chunks in the database) for 1 MiB
  and 64 MiB, with ``--pg URL`` (or ``ACCORD_BENCH_PG``), or ``--pg-local``
  for a throwaway server started from the system's binaries; the baseline is
  plain psycopg writing the same 1 MiB chunks to a ``bytea`` table in one
  transaction and reading them back;
- puts per second of small objects (4 KiB, distinct random contents) and of
  repeat puts of an object already stored (a lookup), beside the commit rate;
- the time from submit to result of a task given a 256 MiB float64 numpy
  array (64 MiB with ``--quick``), run in a slot process of a node, against
  ``np.load`` of the same array from a local ``.npy`` file (both sum it).

    python bench/bench_objects.py [--quick] [--sizes 1M,64M,1G] [--pg URL | --pg-local]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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

# The app of the end-to-end figure. Its slot process imports this script
# again (as __mp_main__), so everything below the guard at the end stays there.
app = accord.App("bench-objects")


@app.task
def array_sum(x: np.ndarray) -> float:
    return float(np.sum(x))


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
    size = int(float(number) * scale)
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


class Pairs:
    """The times of accord and of its baseline, per operation, over repetitions."""

    def __init__(self) -> None:
        self.times: dict[str, tuple[list[float], list[float]]] = {}

    def add(
        self, name: str, rep: int, accord_op: Callable[[], Any], base_op: Callable[[], Any]
    ) -> None:
        mine, theirs = self.times.setdefault(name, ([], []))
        if rep % 2:  # alternate which goes first
            mine.append(timed(accord_op))
            theirs.append(timed(base_op))
        else:
            theirs.append(timed(base_op))
            mine.append(timed(accord_op))

    def print(self, size: int, labels: dict[str, tuple[str, str]]) -> None:
        for name, (mine, theirs) in self.times.items():
            label, base_label = labels[name]
            print(rate_row(f"{size_name(size)} {label}", size, mine, theirs, base_label))


def rate_row(label: str, size: int, mine: list[float], theirs: list[float], base_label: str) -> str:
    a, b = statistics.median(mine), statistics.median(theirs)
    ratio = a / b
    verdict = "ok" if ratio <= GOAL else "MISSED"
    return (
        f"  {label:<26} {size / a / MiB:>8,.0f} MiB/s {size / b / MiB:>8,.0f} MiB/s"
        f" {ratio:>6.2f}x {verdict:<6}  ({base_label}; n={len(mine)})"
    )


def table_head(what: str) -> None:
    print(what)
    print(f"  {'':<26} {'accord':>14} {'baseline':>14} {'ratio':>7}")


LOCAL_LABELS = {
    "put": ("put_file", "copyfile + fsync"),
    "get_file": ("get_file", "copyfile + fsync"),
    "open": ("open + read", "open + read of the file"),
    "get": ("get (bytes)", "Path.read_bytes"),
}


def reps_for(size: int) -> int:
    return 16 if size <= MiB else 5 if size <= 64 * MiB else 1


# -- 1. the local directory backend ---------------------------------------------------
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

    def read_plain() -> None:
        with src.open("rb") as file:
            assert read_all(file) == size

    pairs.add("put", rep, lambda: refs.append(objects.put_file(src)), copy_sync)
    copy.unlink()
    assert refs[0].size == size
    pairs.add("get_file", rep, lambda: objects.get_file(refs[0], out), copy_sync)
    copy.unlink()
    assert out.stat().st_size == size
    out.unlink()
    pairs.add("open", rep, read_open, read_plain)
    pairs.add("get", rep, lambda: objects.get(refs[0]), src.read_bytes)


def local_throughput(folder: Path, sizes: list[int]) -> None:
    store = open_store(f"sqlite:///{folder / 'local.db'}")
    objects = Objects(store)
    table_head(f"local directory backend ({objects.location}), page cache warm:")
    try:
        for size in sizes:
            need = 4 * size + 64 * MiB
            free = shutil.disk_usage(folder).free
            if free < need:
                print(
                    f"  {size_name(size)}: skipped, {free / GiB:.1f} GiB free of {need / GiB:.1f}"
                )
                continue
            random_file(folder / "source.bin", size)
            pairs = Pairs()
            for rep in range(reps_for(size)):
                local_rep(objects, folder, size, rep, pairs)
            (folder / "source.bin").unlink()
            report = objects.gc(grace=0)  # nothing references them: the bytes go
            assert len(report.collected) == reps_for(size), report
            pairs.print(size, LOCAL_LABELS)
    finally:
        store.close()


# -- 2. PostgreSQL chunks ---------------------------------------------------------------
@contextmanager
def pg_server(args: argparse.Namespace) -> Iterator[str | None]:
    """The URL of a PostgreSQL database to measure (None: skip)."""
    if args.pg_local:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from support.pgserver import PgServer, find_bin_dir

        if find_bin_dir() is None:
            print("postgresql: skipped, --pg-local found no postgres/initdb binaries")
            yield None
            return
        server = PgServer()
        try:
            server.init()
            server.start()
            yield server.url()
        finally:
            server.cleanup()
        return
    yield args.pg or os.environ.get("ACCORD_BENCH_PG") or None


PG_LABELS = {
    "put": ("put_file", "psycopg INSERT of the 1 MiB chunks, one transaction"),
    "get_file": ("get_file", "psycopg SELECT of the chunks to a file + fsync"),
    "open": ("open + read", "psycopg SELECT of the chunks"),
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


def pg_throughput(server: str, folder: Path) -> None:
    import psycopg
    from bench_postgres import drop_schema, fresh_schema

    schema, url = fresh_schema(server)
    store = open_store(url)
    try:
        objects = Objects(store, "database")
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
                reps = 8 if size <= MiB else 2
                for rep in range(reps):
                    pg_rep(objects, conn, folder, size, rep, pairs)
                (folder / "pg-source.bin").unlink()
                report = objects.gc(grace=0)
                assert len(report.collected) == reps, report
                pairs.print(size, PG_LABELS)
    finally:
        store.close()
        drop_schema(server, schema)


# -- 3. small objects -------------------------------------------------------------------
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
        put_rate = len(refs) / (time.perf_counter() - started)
        assert len({r.digest for r in refs}) == len(refs)
        done = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            again = objects.put(blobs[done % len(refs)])
            assert again == refs[done % len(refs)]
            done += 1
        lookup_rate = done / (time.perf_counter() - started)
        print(f"  {'put, 4 KiB, distinct contents':<44} {put_rate:>10,.0f} /s  (n={len(refs)})")
        label = "put again of a stored 4 KiB object (lookup)"
        print(f"  {label:<44} {lookup_rate:>10,.0f} /s  (n={done})")
    finally:
        store.close()


# -- 4. a task given a large array ----------------------------------------------------
def task_argument(folder: Path, nbytes: int, reps: int) -> None:
    count = nbytes // 8
    rng = np.random.default_rng(1)
    array = rng.standard_normal(count)
    npy = folder / "array.npy"
    np.save(npy, array)
    fsync_path(npy)
    app.use_store(f"sqlite:///{folder / 'task.db'}")
    with app, app.embedded_node(mode="process", slots=1):
        array_sum.submit(np.zeros(4)).result(timeout=120)  # the slot is up and warm
        mine, theirs, again = [], [], []
        for rep in range(reps):
            array[0] = rep + 0.5  # new contents: the array is stored anew each time
            expect = float(np.sum(array))
            np.save(npy, array)
            fsync_path(npy)

            def load(npy: Path = npy, expect: float = expect) -> None:
                assert float(np.sum(np.load(npy))) == expect

            def submit(expect: float = expect) -> None:
                assert array_sum.submit(array).result(timeout=600) == expect

            theirs.append(timed(load))
            mine.append(timed(submit))
            again.append(timed(submit))  # the same array: found stored, not written
        # For reference: the two halves of the argument's path, in this process.
        array[0] = -1.0
        put_s = timed(lambda: app.objects.put(array))
        ref = app.objects.put(array)
        get_s = timed(lambda: float(np.sum(app.objects.get(ref))))
    npy.unlink()
    name = size_name(nbytes)
    a, b, c = (statistics.median(t) for t in (mine, theirs, again))
    print(f"  {'np.load of the .npy file + sum (baseline)':<52} {b * 1000:>9,.1f} ms  (n={reps})")
    print(
        f"  {'submit -> result, array_sum(' + name + ' float64)':<52} {a * 1000:>9,.1f} ms"
        f"  {a / b:>6.2f}x the baseline  (n={reps})"
    )
    print(
        f"  {'the same, array already stored':<52} {c * 1000:>9,.1f} ms"
        f"  {c / b:>6.2f}x the baseline  (n={reps})"
    )
    print(f"  {'for reference: app.objects.put(array)':<52} {put_s * 1000:>9,.1f} ms  (n=1)")
    print(f"  {'for reference: app.objects.get(ref) + sum':<52} {get_s * 1000:>9,.1f} ms  (n=1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="no 1 GiB object, shorter runs")
    parser.add_argument(
        "--sizes",
        metavar="SIZES",
        help="comma-separated object sizes for the throughput table (e.g. 1M,64M,1G)",
    )
    parser.add_argument(
        "--pg", metavar="URL", help="also measure PostgreSQL (a database allowed to create schemas)"
    )
    parser.add_argument(
        "--pg-local", action="store_true", help="also measure a throwaway local PostgreSQL server"
    )
    args = parser.parse_args()
    if args.sizes:
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    else:
        sizes = [MiB, 64 * MiB] if args.quick else [MiB, 64 * MiB, GiB]
    seconds = 1.0 if args.quick else 3.0
    array_bytes = 64 * MiB if args.quick else 256 * MiB
    if os.environ.pop("ACCORD_OBJECTS", None) is not None:
        print("(ACCORD_OBJECTS is ignored here: objects go beside the SQLite store)")
    with tempfile.TemporaryDirectory(prefix="accord-bench-objects-", dir="/tmp") as tmp:
        folder = Path(tmp)
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
        local_throughput(folder, sizes)
        print()
        with pg_server(args) as server:
            if server is None:
                print(
                    "postgresql: skipped; run with --pg postgresql://user@host/db (or set "
                    "ACCORD_BENCH_PG), or --pg-local for a throwaway server"
                )
            else:
                table_head("postgresql backend (1 MiB chunks in the database), page cache warm:")
                pg_throughput(server, folder)
        print()
        print("small objects, local directory backend, SQLite catalogue:")
        print(f"  {'baseline: plain SQLite commits':<44} {commits:>10,.0f} /s")
        small_objects(folder, seconds)
        print()
        print(f"a task given a {size_name(array_bytes)} float64 array (node with 1 process slot):")
        task_argument(folder, array_bytes, 3)
        print()
        print("cache: not built yet (there is no node-local object cache; nothing measured)")
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
