"""The object store (accord.data) on both backends: putting and reading,
content addressing, verification, references moving by themselves, the
collector, a host's cache, and bad input."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import accord
from accord.data import ObjectRef, Objects
from accord.data.cache import Cache, parse_size
from accord.errors import ConfigError, CorruptObjectError, ObjectNotFound
from accord.store import open_store
from apps import objects_app as oa
from support.common import sql, table_counts

MiB = 1024 * 1024


@pytest.fixture
def app(store_url: str) -> Iterator[accord.App]:
    app = accord.App("objects", store=store_url, inline_limit=4096)
    yield app
    app.close()


@pytest.fixture
def objects(app: accord.App) -> Objects:
    return app.objects


def corrupt_stored(
    store_url: str, objects: Objects, ref: ObjectRef, *, truncate: bool = False
) -> None:
    """Damage the stored bytes of ``ref`` where its backend keeps them."""
    path = objects.backend.path(ref.digest)
    if path is not None:
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[:-1] if truncate else data[:-1] + bytes([data[-1] ^ 1]))
        return
    last = sql(store_url, "SELECT max(seq) FROM object_chunks WHERE digest = ?", (ref.digest,))
    seq = last[0][0]
    (data,) = sql(
        store_url, "SELECT data FROM object_chunks WHERE digest = ? AND seq = ?", (ref.digest, seq)
    )[0]
    data = bytes(data)
    changed = data[:-1] if truncate else data[:-1] + bytes([data[-1] ^ 1])
    sql(
        store_url,
        "UPDATE object_chunks SET data = ? WHERE digest = ? AND seq = ?",
        (changed, ref.digest, seq),
    )


# -- putting and reading ------------------------------------------------------
def test_bytes_value_and_array_round_trip(objects: Objects) -> None:
    blob = os.urandom(3 * MiB + 17)
    ref = objects.put(blob)
    assert ref == ObjectRef(hashlib.sha256(blob).hexdigest(), len(blob), "bytes")
    assert objects.get(ref) == blob

    value = {"name": "features", "rows": [1.5, 2.5], "nested": [1, "two"]}
    assert objects.get(objects.put(value)) == value

    array = np.arange(60_000, dtype=np.float32).reshape(200, 300)
    aref = objects.put(array)
    assert aref.kind == "ndarray"
    back = objects.get(aref)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert np.array_equal(back, array)
    assert not back.flags.writeable  # a read-only view of the stored bytes

    fortran = np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4))
    assert np.array_equal(objects.get(objects.put(fortran)), fortran)
    strided = np.arange(100, dtype=np.int16)[::3]
    assert np.array_equal(objects.get(objects.put(strided)), strided)
    empty = np.zeros((0, 5), dtype=np.uint8)
    assert objects.get(objects.put(empty)).shape == (0, 5)


def test_arrays_keep_their_native_layout(objects: Objects) -> None:
    """The array's bytes are stored as they are in memory (after a header),
    not re-encoded: the object ends with exactly the array's buffer."""
    array = np.random.default_rng(1).random(10_000)
    ref = objects.put(array)
    stored = objects.read_bytes(ref)
    assert stored.endswith(array.tobytes())
    assert ref.size - array.nbytes < 128


def test_put_file_stream_and_get_file(objects: Objects, tmp_path: Path) -> None:
    source = tmp_path / "shard.bin"
    source.write_bytes(os.urandom(5 * MiB + 3))
    ref = objects.put_file(source)
    assert ref.size == source.stat().st_size and ref.kind == "bytes"
    with source.open("rb") as stream:
        assert objects.put_stream(stream) == ref

    target = objects.get_file(ref, tmp_path / "copy.bin")
    assert target.read_bytes() == source.read_bytes()
    assert not list(tmp_path.glob(".*.part"))

    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    eref = objects.put_file(empty)
    assert eref.size == 0 and objects.get(eref) == b""


def test_same_bytes_are_stored_once(store_url: str, objects: Objects, tmp_path: Path) -> None:
    blob = os.urandom(2 * MiB)
    first = objects.put(blob)
    (tmp_path / "f").write_bytes(blob)
    assert objects.put_file(tmp_path / "f") == first
    assert objects.put_stream(io.BytesIO(blob)) == first
    assert objects.put(blob) == first
    assert [row.digest for row in objects.ls()] == [first.digest]
    if objects.backend.path(first.digest) is None:  # in the database: one set of chunks
        (count,) = sql(
            store_url, "SELECT count(*) FROM object_chunks WHERE digest = ?", (first.digest,)
        )[0]
        assert count == 2


def test_open_is_seekable_and_verifies(objects: Objects) -> None:
    blob = os.urandom(3 * MiB + 5)
    ref = objects.put(blob)
    with objects.open(ref) as file:
        assert file.read(10) == blob[:10]
        file.seek(2 * MiB + 1)
        assert file.read(100) == blob[2 * MiB + 1 : 2 * MiB + 101]
        file.seek(-4, io.SEEK_END)
        assert file.read() == blob[-4:]
        file.seek(0)
        assert file.read() == blob


def test_a_reference_found_by_its_digest(objects: Objects) -> None:
    ref = objects.put(b"some bytes")
    assert objects.ref(ref.digest) == ref
    assert objects.ref(f"sha256:{ref.digest.upper()}") == ref


def test_reference_serialises_and_reads_in_the_app(app: accord.App) -> None:
    ref = app.objects.put([1, 2, 3])
    app.state.put("pointer", ref)
    stored = app.state.value("pointer")
    assert isinstance(stored, ObjectRef) and stored == ref
    assert stored.get() == [1, 2, 3]
    with stored.open() as file:
        assert file.read() == app.objects.read_bytes(ref)


# -- corruption ---------------------------------------------------------------
@pytest.mark.parametrize("truncate", [False, True], ids=["flipped", "truncated"])
def test_damaged_object_is_never_returned(store_url: str, objects: Objects, truncate: bool) -> None:
    blob = os.urandom(2 * MiB + 100)
    ref = objects.put(blob)
    keep = objects.put(b"intact")
    corrupt_stored(store_url, objects, ref, truncate=truncate)
    if objects.cache is not None:
        objects.cache.discard(ref.digest)

    with pytest.raises(CorruptObjectError, match=ref.digest) as caught:
        objects.get(ref)
    assert caught.value.digest == ref.digest

    handed: list[bytes] = []
    with pytest.raises(CorruptObjectError), objects.open(ref) as file:
        while chunk := file.read(64 * 1024):
            handed.append(chunk)
    assert sum(map(len, handed)) < len(blob)  # the last byte was held back

    problems = objects.verify()
    assert [p.digest for p in problems] == [ref.digest]
    assert "damaged" in problems[0].problem
    assert objects.get(keep) == b"intact"


def test_damaged_array_is_never_mapped(store_url: str, objects: Objects) -> None:
    ref = objects.put(np.ones(100_000))
    corrupt_stored(store_url, objects, ref)
    if objects.cache is not None:
        objects.cache.discard(ref.digest)
    with pytest.raises(CorruptObjectError, match=ref.digest):
        objects.get(ref)


# -- bad input ----------------------------------------------------------------
def test_missing_object_names_the_store(store_url: str, objects: Objects) -> None:
    ghost = ObjectRef("ab" * 32, 10, "bytes")
    with pytest.raises(ObjectNotFound, match="ab" * 32) as caught:
        objects.get(ghost)
    assert objects.location in str(caught.value)
    with pytest.raises(ObjectNotFound, match="accord objects gc"):
        objects.ref("cd" * 32)


@pytest.mark.parametrize("digest", ["", "xyz", "ab" * 31, "g" * 64, "ab" * 33])
def test_malformed_digest_is_refused(objects: Objects, digest: str) -> None:
    with pytest.raises(ConfigError, match="digest"):
        objects.ref(digest)
    with pytest.raises(ConfigError, match="digest"):
        ObjectRef(digest, 1, "bytes")


def test_bad_input_changes_nothing(store_url: str, objects: Objects, tmp_path: Path) -> None:
    objects.put(b"x")  # the tables exist
    before = table_counts(store_url)
    with pytest.raises(TypeError):
        objects.put(object())
    with pytest.raises(TypeError, match="numpy"):
        objects.put(np.array([object()], dtype=object))
    with pytest.raises(ConfigError, match="cannot read"):
        objects.put_file(tmp_path / "absent")
    with pytest.raises(ConfigError, match="binary"):
        objects.put_stream(io.StringIO("text"))
    with pytest.raises(ConfigError, match="readable"):
        objects.put_stream(b"bytes are not a stream")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ObjectRef"):
        objects.get("ab" * 32)  # type: ignore[arg-type]
    for grace in (-1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="grace"):
            objects.gc(grace=grace)
    assert table_counts(store_url) == before
    assert len(objects.ls()) == 1


def test_wrong_object_store_url_is_a_clear_error(store_url: str) -> None:
    with open_store(store_url) as store:
        with pytest.raises(ConfigError, match="nosuchscheme"):
            Objects(store, "nosuchscheme://bucket/prefix")
        with pytest.raises(ConfigError, match="empty"):
            Objects(store, "   ")


def test_a_file_in_the_way_of_the_directory(sqlite_url: str, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    with open_store(sqlite_url) as store:
        objects = Objects(store, str(blocker))
        with pytest.raises(accord.errors.StoreError, match=str(blocker)):
            objects.put(b"data")
        assert objects.ls() == []


# -- moving by themselves -----------------------------------------------------
def test_large_values_move_through_the_store_by_themselves(app: accord.App) -> None:
    big = "v" * 20_000
    app.state.put("big", big)
    assert app.state.value("big") == big
    rows = app.objects.ls()
    assert len(rows) == 1 and rows[0].size >= 20_000

    box = app.mailbox("inbox")
    box.send({"payload": b"p" * 50_000})
    message = box.receive(timeout=5)
    assert message is not None and message.payload == {"payload": b"p" * 50_000}
    message.ack()

    topic = app.topic("news")
    topic.publish(np.arange(10_000))
    (got,) = topic.read(0)
    assert np.array_equal(got.payload, np.arange(10_000))

    app.state.put("small", "tiny")
    assert len(app.objects.ls()) == 3  # the small value stayed inline


def test_task_arguments_and_results_spill_in_a_process_node(bind_app: object) -> None:
    app = bind_app(oa.app)  # type: ignore[operator]
    array = np.random.default_rng(7).random((300, 200))
    with app.embedded_node(mode="process", slots=1):
        described = oa.describe.submit(array, b"e" * 10_000).result(timeout=60)
        made = oa.make.submit(50_000).result(timeout=60)
        ref = app.objects.put(b"r" * 12345)
        length = oa.read_ref.submit(ref).result(timeout=60)
    assert described == {
        "sum": pytest.approx(float(array.sum())),
        "dtype": "<f8",
        "shape": [300, 200],
        "writeable": False,
        "extra": 10_000,
    }
    assert np.array_equal(made, np.arange(50_000, dtype=np.float64))
    assert length == 12345
    kinds = sorted(row.kind for row in app.objects.ls())
    assert kinds.count("ndarray") == 2  # the argument and the result, each stored once


def test_ls_of_a_run(bind_app: object) -> None:
    app = bind_app(oa.app)  # type: ignore[operator]
    with app.embedded_node(mode="thread", slots=1):
        handle = oa.make.submit(10_000)
        handle.result(timeout=60)
        oa.make.submit(1).result(timeout=60)
    listed = app.objects.ls(handle.info().run_id)
    assert [row.kind for row in listed] == ["ndarray"]
    assert listed[0].size > 80_000


# -- the collector ------------------------------------------------------------
def test_gc_keeps_what_is_referenced_and_takes_the_rest(app: accord.App) -> None:
    objects = app.objects
    loose = objects.put(b"nobody points here")
    pinned = objects.put(b"pinned")
    objects.pin(pinned)
    in_state = objects.put(b"in state")
    app.state.put("ref", in_state)
    spilled_value = "w" * 10_000
    app.state.put("spilled", spilled_value)
    inner = objects.put(b"inside a spilled value")
    app.state.put("nested", {"refs": [inner], "pad": "z" * 10_000})
    queued = objects.put(b"in a mailbox")
    app.mailbox("q").send(queued)
    fresh = objects.put(b"just put")

    dry = objects.gc(dry_run=True, grace=0)
    assert {row.digest for row in dry.collected} == {loose.digest, fresh.digest}
    assert objects.get(loose) == b"nobody points here"  # a dry run takes nothing

    report = objects.gc(grace=3600)  # everything is fresh: nothing goes
    assert report.collected == []
    report = objects.gc(grace=0)
    assert {row.digest for row in report.collected} == {loose.digest, fresh.digest}
    assert report.freed_bytes == loose.size + fresh.size
    with pytest.raises(ObjectNotFound):
        objects.get(loose)
    for ref, value in [
        (pinned, b"pinned"),
        (in_state, b"in state"),
        (inner, b"inside a spilled value"),
        (queued, b"in a mailbox"),
    ]:
        assert objects.get(ref) == value
    assert app.state.value("spilled") == spilled_value
    assert app.state.value("nested")["refs"] == [inner]

    # Once nothing references them, they go too.
    objects.unpin(pinned)
    app.state.delete("ref")
    message = app.mailbox("q").receive(timeout=5)
    assert message is not None
    message.ack()
    app.state.compact()
    report = objects.gc(grace=0)
    assert {pinned.digest, in_state.digest, queued.digest} <= {
        row.digest for row in report.collected
    }
    assert objects.verify() == []


def test_a_put_of_a_collected_object_stores_it_again(app: accord.App) -> None:
    ref = app.objects.put(b"again")
    app.objects.gc(grace=0)
    assert app.objects.put(b"again") == ref
    assert app.objects.get(ref) == b"again"


def test_put_again_restarts_the_grace(app: accord.App) -> None:
    ref = app.objects.put(b"touched")
    app.store.object_touch(ref.digest)
    report = app.objects.gc(grace=60)
    assert report.collected == [] and app.objects.get(ref) == b"touched"


# -- a host's cache -----------------------------------------------------------
def test_cache_of_objects_in_the_database(sqlite_url: str, tmp_path: Path) -> None:
    """Objects whose bytes are elsewhere are read once per host, then from
    the cache, within its bound; a deleted or damaged cache is fetched again."""
    with open_store(sqlite_url) as store:
        cache = Cache(tmp_path / "cache", 3 * MiB)
        objects = Objects(store, "database", cache=cache)
        arrays = [np.full(150_000, i, dtype=np.float64) for i in range(3)]  # 1.2 MB each
        refs = [objects.put(a) for a in arrays]
        for _ in range(3):
            assert np.array_equal(objects.get(refs[0]), arrays[0])
        assert (cache.misses, cache.hits) == (1, 2)

        for ref, array in zip(refs, arrays, strict=True):
            assert np.array_equal(objects.get(ref), array)
        assert cache.used() <= 3 * MiB
        assert len(cache.files()) == 2  # the least recently used went

        shutil.rmtree(tmp_path / "cache")
        assert np.array_equal(objects.get(refs[2]), arrays[2])
        with objects.open(refs[1]) as file:
            assert file.read() == objects._open_stored(refs[1]).read()

        copy = cache.lookup(refs[2].digest, refs[2].size)
        assert copy is not None
        copy.write_bytes(b"\0" * refs[2].size)
        assert np.array_equal(objects.get(refs[2]), arrays[2])  # fetched again

        big = objects.put(os.urandom(4 * MiB))  # larger than the cache: read around it
        assert len(objects.read_bytes(big)) == 4 * MiB
        assert cache.lookup(big.digest, big.size) is None


def test_a_nodes_cache_deleted_under_it_is_filled_again(
    bind_app: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node's slot process reads objects kept in the database through the
    host's cache; the cache directory removed while the node runs costs one
    fetch, not an error."""
    cache_dir = tmp_path / "node-cache"
    monkeypatch.setenv("ACCORD_OBJECTS", "database")
    monkeypatch.setenv("ACCORD_CACHE_DIR", str(cache_dir))
    app = bind_app(oa.app)  # type: ignore[operator]
    data = os.urandom(3 * MiB)
    ref = app.objects.put(data)
    digest = hashlib.sha256(data).hexdigest()
    with app.embedded_node(mode="process", slots=1):
        reads = [oa.cache_read.submit(ref).result(timeout=60) for _ in range(2)]
        shutil.rmtree(cache_dir)
        reads += [oa.cache_read.submit(ref).result(timeout=60) for _ in range(2)]
    assert [r["sha"] for r in reads] == [digest] * 4
    assert all(r["cached"] for r in reads)
    assert [r["fetched"] for r in reads] == [True, False, True, False]
    assert (cache_dir / digest[:2] / digest).stat().st_size == len(data)


def test_the_cache_is_set_by_the_environment(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACCORD_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("ACCORD_CACHE_SIZE", "64M")
    with open_store(sqlite_url) as store:
        objects = Objects(store, "database")
        assert objects.cache is not None and objects.cache.limit == 64 * MiB
        assert objects.cache.root == tmp_path / "c"
        assert Objects(store).cache is None  # a local directory needs none
        monkeypatch.setenv("ACCORD_CACHE_SIZE", "0")
        assert Objects(store, "database").cache is None
        monkeypatch.setenv("ACCORD_CACHE_SIZE", "lots")
        with pytest.raises(ConfigError, match="ACCORD_CACHE_SIZE='lots'"):
            Objects(store, "database")


@pytest.mark.parametrize(
    ("text", "size"), [("512", 512), ("4K", 4096), ("1.5M", 3 * MiB // 2), ("2GiB", 2 << 30)]
)
def test_cache_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_a_cache_that_cannot_be_written_is_read_around(sqlite_url: str, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    with open_store(sqlite_url) as store:
        objects = Objects(store, "database", cache=Cache(blocker / "cache", MiB))
        ref = objects.put(b"q" * 1000)
        assert objects.get(ref) == b"q" * 1000


# -- the fast paths of local files ---------------------------------------------------
def leftovers(objects: Objects) -> list[str]:
    """Temporary files left in a directory backend (none elsewhere)."""
    tmp = Path(objects.location) / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []


def test_large_puts_are_whole_and_stored_once(objects: Objects, tmp_path: Path) -> None:
    """From 4 MiB a put writes while a second thread hashes, put_file copies in
    the kernel and hashes the copy: the same digests, one object, and nothing
    left behind when the object was there already."""
    blob = os.urandom(9 * MiB + 7)
    array = np.frombuffer(blob[: 8 * MiB], dtype=np.float64).reshape(-1, 1024)
    source = tmp_path / "blob.bin"
    source.write_bytes(blob)
    ref = objects.put(blob)
    assert ref.digest == hashlib.sha256(blob).hexdigest()
    assert objects.put(blob) == ref
    assert objects.put_file(source) == ref
    assert objects.put_stream(io.BytesIO(blob)) == ref
    aref = objects.put(array)
    assert objects.put(array.copy()) == aref
    assert objects.get(aref).tobytes() == array.tobytes()  # random bits: NaNs among them
    assert sorted(row.digest for row in objects.ls()) == sorted([ref.digest, aref.digest])
    assert objects.read_bytes(ref) == blob
    out = objects.get_file(ref, tmp_path / "out.bin")
    assert out.read_bytes() == blob
    assert leftovers(objects) == []
    assert objects.verify() == []


@pytest.mark.parametrize("unoffered", [["copy_file_range"], ["copy_file_range", "sendfile"]])
def test_kernel_copy_falls_back_where_a_way_is_not_offered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unoffered: list[str]
) -> None:
    """File systems that cannot copy_file_range (EXDEV across mounts, EOPNOTSUPP)
    or sendfile between files: the copy is made by reads and writes."""
    import errno

    from accord.data import copying

    def refuse(*args: object) -> int:
        raise OSError(errno.EXDEV, "not offered here")

    for name in unoffered:
        monkeypatch.setattr(os, name, refuse)
    data = os.urandom(3 * MiB + 1)
    (tmp_path / "a").write_bytes(data)
    with (tmp_path / "a").open("rb") as src, (tmp_path / "b").open("wb") as dst:
        assert copying.kernel_copy(src.fileno(), dst.fileno()) == len(data)
    assert (tmp_path / "b").read_bytes() == data
    assert copying.hash_path(tmp_path / "b") == (hashlib.sha256(data).hexdigest(), len(data))


def test_a_kernel_copy_that_fails_otherwise_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, objects: Objects
) -> None:
    import errno

    def broken(*args: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "copy_file_range", broken)
    source = tmp_path / "blob.bin"
    source.write_bytes(os.urandom(MiB))
    if objects.backend.path("0" * 64) is None:
        pytest.skip("only a directory backend copies in the kernel")
    with pytest.raises(accord.StoreError, match="Input/output error"):
        objects.put_file(source)
    assert objects.ls() == []
    assert leftovers(objects) == []
