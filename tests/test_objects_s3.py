"""The object store's fsspec backend (``Remote``) against a real S3 server:
moto's, as a subprocess on loopback (tests/support/s3server.py), one for the
module, each test under its own prefix of the bucket.

s3fs is pointed at it the way a deployment points it at any S3 endpoint, by
botocore's environment (``AWS_ENDPOINT_URL``, the credentials, the region).
fsspec's configuration makes its parts 5 MiB (S3's least), so that a 12 MiB
put is a multipart upload; botocore makes one attempt per request, so that a
stopped server fails a request at once instead of after its backoff.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec.config
import numpy as np
import pytest
from s3fs import S3FileSystem

import accord
from accord.data import ObjectRef, Objects
from accord.errors import (
    ConfigError,
    CorruptObjectError,
    ObjectNotFound,
    StoreError,
    StoreUnavailableError,
)
from accord.store import open_store
from apps import objects_s3 as oa
from support.common import bind, subprocess_env
from support.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server

MiB = 1024 * 1024


def blob(seed: int, size: int) -> bytes:
    return np.random.default_rng(seed).bytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One moto server for the module, and the environment that points s3fs at it."""
    server = S3Server(log_dir=str(tmp_path_factory.mktemp("moto")))
    with pytest.MonkeyPatch.context() as env:
        for key in list(os.environ):  # none of the caller's AWS settings
            if key.startswith("AWS_"):
                env.delenv(key)
        env.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        env.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        env.setenv("AWS_DEFAULT_REGION", REGION)
        env.setenv("AWS_ENDPOINT_URL", server.endpoint)
        env.setenv("AWS_CONFIG_FILE", os.devnull)  # nothing from the user's ~/.aws
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        env.setenv("AWS_MAX_ATTEMPTS", "1")
        env.setitem(
            fsspec.config.conf,
            "s3",
            {**fsspec.config.conf.get("s3", {}), "default_block_size": 5 * MiB},
        )
        S3FileSystem.clear_instance_cache()  # none made before this environment
        try:
            with server:
                yield server
        finally:
            S3FileSystem.clear_instance_cache()


@pytest.fixture
def prefix(s3: S3Server) -> str:
    """This test's own prefix of the bucket."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def url(s3: S3Server, prefix: str) -> str:
    return f"s3://{s3.bucket}/{prefix}"


@pytest.fixture
def objects(sqlite_url: str, url: str) -> Iterator[Objects]:
    """An object store in S3, read without a host cache (every read goes to S3)."""
    with open_store(sqlite_url) as store:
        yield Objects(store, url, cache=False)


def key_of(prefix: str, digest: str) -> str:
    return f"{prefix}/{digest[:2]}/{digest[2:4]}/{digest}"


class Stream:
    """A binary stream of ``count`` chunks of 1 MiB; ``on_chunk(i)`` runs before
    chunk ``i`` is handed over."""

    def __init__(
        self, seed: int, count: int, on_chunk: Callable[[int], None] = lambda i: None
    ) -> None:
        self.seed = seed
        self.count = count
        self.on_chunk = on_chunk
        self.index = 0

    @staticmethod
    def data(seed: int, count: int) -> bytes:
        return b"".join(blob(seed * 1000 + i, MiB) for i in range(count))

    def read(self, size: int = -1) -> bytes:
        if self.index >= self.count:
            return b""
        self.on_chunk(self.index)
        chunk = blob(self.seed * 1000 + self.index, MiB)
        self.index += 1
        return chunk


# -- putting and reading ------------------------------------------------------
def test_bytes_array_and_value_round_trip(objects: Objects, s3: S3Server, prefix: str) -> None:
    data = blob(1, 3 * MiB + 17)
    ref = objects.put(data)
    assert ref == ObjectRef(sha(data), len(data), "bytes")
    assert objects.get(ref) == data

    array = np.arange(60_000, dtype=np.float32).reshape(200, 300)
    aref = objects.put(array)
    back = objects.get(aref)
    assert aref.kind == "ndarray" and back.dtype == array.dtype and np.array_equal(back, array)

    value = {"name": "features", "rows": [1.5, 2.5], "nested": [1, "two"]}
    vref = objects.put(value)
    assert vref.kind == "value" and objects.get(vref) == value

    # Each under its digest, sharded; nothing left under tmp/.
    assert s3.keys(f"{prefix}/") == sorted(key_of(prefix, r.digest) for r in (ref, aref, vref))
    assert objects.backend.has(ref.digest)


def test_multipart_put_file_put_stream_and_get_file(
    objects: Objects, s3: S3Server, prefix: str, tmp_path: Path
) -> None:
    source = tmp_path / "shard.bin"
    source.write_bytes(blob(2, 12 * MiB + 5))
    ref = objects.put_file(source)
    assert ref == ObjectRef(sha(source.read_bytes()), 12 * MiB + 5, "bytes")
    with source.open("rb") as stream:
        assert objects.put_stream(stream) == ref  # streamed again: the same object

    streamed = objects.put_stream(Stream(3, 12))
    assert streamed == ObjectRef(sha(Stream.data(3, 12)), 12 * MiB, "bytes")

    assert objects.get_file(ref, tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    assert objects.get_file(streamed, tmp_path / "streamed.bin").read_bytes() == Stream.data(3, 12)
    assert not list(tmp_path.glob(".*.part"))

    # Sent in parts of 5 MiB, every multipart upload completed, nothing left over.
    log = s3.log_path.read_text(errors="replace")
    assert re.search(rf"PUT /{s3.bucket}/{prefix}/tmp/\S+\?partNumber=3&", log)
    uploads = s3.client().list_multipart_uploads(Bucket=s3.bucket, Prefix=f"{prefix}/")
    assert uploads.get("Uploads", []) == []
    assert s3.keys(f"{prefix}/") == sorted(key_of(prefix, r.digest) for r in (ref, streamed))


def test_same_bytes_are_stored_once(
    objects: Objects, s3: S3Server, prefix: str, tmp_path: Path
) -> None:
    data = blob(4, 2 * MiB)
    first = objects.put(data)
    assert objects.put(data) == first
    assert objects.put_stream(io.BytesIO(data)) == first  # written, then found and dropped
    (tmp_path / "f").write_bytes(data)
    assert objects.put_file(tmp_path / "f") == first
    assert s3.keys(f"{prefix}/") == [key_of(prefix, first.digest)]
    assert [row.digest for row in objects.ls()] == [first.digest]


def test_open_is_seekable_and_verifies(objects: Objects) -> None:
    data = blob(5, 12 * MiB + 5)
    ref = objects.put(data)
    with objects.open(ref) as file:
        assert file.read(10) == data[:10]
        file.seek(7 * MiB + 1)
        assert file.read(100) == data[7 * MiB + 1 : 7 * MiB + 101]
        file.seek(-4, io.SEEK_END)
        assert file.read() == data[-4:]
        file.seek(0)
        assert file.read() == data


def test_an_object_put_by_another_host_is_seen_at_once(
    objects: Objects, sqlite_url: str, url: str
) -> None:
    """A listing (the collector's) must not hide what another host publishes
    after it: s3fs would cache it, and say the new object is absent."""
    # Two values whose objects share a shard directory (ab/cd/), found by trying.
    seen: dict[str, int] = {}
    for i in itertools.count():
        shard = sha(b"value %d" % i)[:4]
        if shard in seen:
            here, there = seen[shard], i
            break
        seen[shard] = i
    mine = objects.put(b"value %d" % here)
    objects.gc(grace=3600)  # lists every object (and collects none: all are fresh)

    script = (
        "import sys, accord\n"
        "with accord.App('other', store=sys.argv[1], objects=sys.argv[2]) as app:\n"
        "    print(app.objects.put(sys.argv[3].encode()).digest)\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", script, sqlite_url, url, f"value {there}"],
        env=subprocess_env(sqlite_url),  # with the module's AWS_* settings
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other.returncode == 0, other.stderr
    theirs = objects.ref(other.stdout.strip())
    assert theirs.digest[:4] == mine.digest[:4]
    assert objects.backend.has(theirs.digest)
    assert objects.get(theirs) == b"value %d" % there


# -- damage and loss ----------------------------------------------------------
def test_a_corrupted_object_is_never_returned(objects: Objects, s3: S3Server, prefix: str) -> None:
    data = blob(6, 2 * MiB + 100)
    ref = objects.put(data)
    keep = objects.put(b"intact")
    damaged = data[:-1] + bytes([data[-1] ^ 1])
    s3.client().put_object(Bucket=s3.bucket, Key=key_of(prefix, ref.digest), Body=damaged)

    with pytest.raises(CorruptObjectError, match=ref.digest) as caught:
        objects.get(ref)
    assert caught.value.digest == ref.digest
    with pytest.raises(CorruptObjectError), objects.open(ref) as file:
        file.seek(MiB)  # a seek verifies the whole object first
    problems = objects.verify()
    assert [p.digest for p in problems] == [ref.digest]
    assert "damaged" in problems[0].problem and problems[0].location == objects.location
    assert objects.get(keep) == b"intact"


def test_a_deleted_key_is_object_not_found(objects: Objects, s3: S3Server, prefix: str) -> None:
    ref = objects.put(b"soon gone")
    s3.client().delete_object(Bucket=s3.bucket, Key=key_of(prefix, ref.digest))
    with pytest.raises(ObjectNotFound, match=ref.digest) as caught:
        objects.get(ref)
    assert objects.location in str(caught.value)
    assert not objects.backend.has(ref.digest)
    assert [(p.digest, p.problem) for p in objects.verify()] == [(ref.digest, "missing")]


# -- the collector ------------------------------------------------------------
def test_gc_takes_the_unreferenced_and_keeps_the_rest(
    sqlite_url: str, url: str, s3: S3Server, prefix: str
) -> None:
    with accord.App("objects_s3_gc", store=sqlite_url, objects=url) as app:
        objects = app.objects
        loose = objects.put(b"nobody points here")
        pinned = objects.put(b"pinned")
        objects.pin(pinned)
        in_state = objects.put(b"in state")
        app.state.put("k", in_state)

        report = objects.gc(grace=0)
        assert [row.digest for row in report.collected] == [loose.digest]
        assert report.freed_bytes == loose.size
        with pytest.raises(ObjectNotFound):
            objects.get(loose)
        assert objects.get(pinned) == b"pinned"
        assert objects.get(in_state) == b"in state"
        assert app.state.value("k") == in_state
        kept = {key_of(prefix, r.digest) for r in (pinned, in_state)}
        assert set(s3.keys(f"{prefix}/")) == kept  # nothing left in trash/ either
        assert objects.verify() == []


@pytest.mark.parametrize("under", ["objects", "tmp/objects"])
def test_gc_takes_bytes_no_row_records(
    sqlite_url: str, s3: S3Server, prefix: str, under: str
) -> None:
    """Bytes under a digest that the catalogue does not know (their row went
    with a collector that died) are collected, whatever the prefix is called."""
    base = f"{prefix}/{under}"
    with open_store(sqlite_url) as store:
        objects = Objects(store, f"s3://{s3.bucket}/{base}", cache=False)
        kept = objects.put(b"recorded")
        objects.pin(kept)
        orphan = b"not recorded"
        s3.client().put_object(Bucket=s3.bucket, Key=key_of(base, sha(orphan)), Body=orphan)
        stray = f"{base}/notes.txt"  # not an object: left alone
        s3.client().put_object(Bucket=s3.bucket, Key=stray, Body=b"hello")
        assert objects.gc(grace=0).collected == []
        assert s3.keys(f"{prefix}/") == sorted([key_of(base, kept.digest), stray])


# -- failures -----------------------------------------------------------------
def test_server_killed_mid_upload(objects: Objects, s3: S3Server, prefix: str) -> None:
    """The server dies after the first 5 MiB part went up: a clear error, and
    once it is back, nothing under the digest and nothing in the catalogue."""

    def kill_at(index: int) -> None:
        if index == 8:
            s3.stop()

    digest = sha(Stream.data(7, 12))
    try:
        with pytest.raises(StoreUnavailableError, match="cannot be reached") as caught:
            objects.put_stream(Stream(7, 12, on_chunk=kill_at))
    finally:
        s3.restart()
    assert isinstance(caught.value, StoreError) and objects.location in str(caught.value)
    assert not objects.backend.has(digest)
    assert s3.keys(f"{prefix}/") == []
    assert objects.store.object_row(digest) is None
    assert objects.ls() == []

    ref = objects.put_stream(Stream(7, 12))  # and the store works again
    assert ref.digest == digest and objects.read_bytes(ref) == Stream.data(7, 12)


def test_server_killed_mid_read(objects: Objects, s3: S3Server) -> None:
    """A read that fetches the next part from a server that died is a clear error."""
    data = blob(10, 12 * MiB)
    ref = objects.put(data)
    try:
        with objects.open(ref) as file:
            assert file.read(MiB) == data[:MiB]  # and the next 5 MiB are fetched ahead
            s3.stop()
            with pytest.raises(StoreUnavailableError, match="cannot be reached") as caught:
                file.read()
    finally:
        s3.restart()
    assert objects.location in str(caught.value)


def test_an_abandoned_put_completes_nothing(sqlite_url: str, s3: S3Server, prefix: str) -> None:
    """A put whose stream fails part-way throws its upload away (S3 aborts the
    multipart upload) rather than completing it only to delete it: in a
    versioned bucket not even a deleted version of it remains."""
    bucket = "accord-versioned"
    client = s3.client()
    if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        s3.create_bucket(bucket)
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})

    def fail_at(count: int) -> Callable[[int], None]:
        def check(index: int) -> None:
            if index == count:
                raise OSError("the source disk failed")

        return check

    with open_store(sqlite_url) as store:
        objects = Objects(store, f"s3://{bucket}/{prefix}", cache=False)
        for count in (3, 7):  # in the first part's buffer; after the first part went up
            with pytest.raises(OSError, match="source disk"):
                objects.put_stream(Stream(8, 12, on_chunk=fail_at(count)))
        versions = client.list_object_versions(Bucket=bucket, Prefix=f"{prefix}/")
        assert versions.get("Versions", []) == [] and versions.get("DeleteMarkers", []) == []
        uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=f"{prefix}/")
        assert uploads.get("Uploads", []) == []
        assert objects.ls() == []


def test_a_bucket_that_does_not_exist(sqlite_url: str, s3: S3Server, tmp_path: Path) -> None:
    url = "s3://accord-no-such-bucket/objects"
    (tmp_path / "f").write_bytes(b"from a file")
    with open_store(sqlite_url) as store:
        objects = Objects(store, url, cache=False)
        for put in (
            lambda: objects.put(b"data"),
            lambda: objects.put_stream(io.BytesIO(b"streamed")),
            lambda: objects.put_file(tmp_path / "f"),
        ):
            with pytest.raises(ConfigError, match="create the bucket") as caught:
                put()
            assert url in str(caught.value)
        assert objects.ls() == []
        with pytest.raises(ObjectNotFound, match=url):
            objects.get(ObjectRef(sha(b"data"), 4, "bytes"))
        assert objects.gc(grace=0).collected == []
    assert "accord-no-such-bucket" not in {b["Name"] for b in s3.client().list_buckets()["Buckets"]}


@pytest.fixture
def fresh_clients() -> Iterator[None]:
    """s3fs keeps one file system (and its credentials) per set of options:
    make a new one for this test, and none of this test's for the next."""
    S3FileSystem.clear_instance_cache()
    yield
    S3FileSystem.clear_instance_cache()


def test_missing_credentials(
    fresh_clients: None,
    sqlite_url: str,
    url: str,
    s3: S3Server,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with open_store(sqlite_url) as store:
        objects = Objects(store, url, cache=False)
        with pytest.raises(ConfigError, match="AWS_ACCESS_KEY_ID") as caught:
            objects.put(b"data")
        assert objects.location in str(caught.value) and "credentials" in str(caught.value)
        with pytest.raises(ConfigError, match="credentials"):
            objects.backend.has(sha(b"data"))
        assert objects.ls() == []
    assert s3.keys(f"{prefix}/") == []


@contextmanager
def auth_required(s3: S3Server) -> Iterator[None]:
    """moto checks every request's access key against its IAM (in which the
    test's key does not exist) until the block ends."""

    def reset(count: str) -> None:
        request = urllib.request.Request(
            f"{s3.endpoint}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert json.load(answer)["status"] == "ok"

    reset("0")
    try:
        yield
    finally:
        reset("inf")


def test_wrong_credentials(objects: Objects, s3: S3Server, prefix: str) -> None:
    ref = objects.put(b"readable before")
    with auth_required(s3):
        with pytest.raises(ConfigError, match="credentials") as caught:
            objects.put(b"data")
        assert objects.location in str(caught.value)
        with pytest.raises(ConfigError, match="refused"):
            objects.get(ref)
    assert [row.digest for row in objects.ls()] == [ref.digest]
    assert s3.keys(f"{prefix}/") == [key_of(prefix, ref.digest)]


# -- values moving by themselves ----------------------------------------------
def test_a_task_argument_over_the_inline_limit_goes_through_s3(
    s3: S3Server, sqlite_url: str
) -> None:
    app = bind(oa.app, sqlite_url)
    try:
        assert app.objects.location == f"s3://{s3.bucket}/{oa.PREFIX}"
        data = blob(9, 200_000)
        with app.embedded_node(mode="thread", slots=1):
            first = oa.digest_of.submit(data)
            assert first.result(timeout=60) == sha(data)
            second = oa.repeat.submit(b"ab" * 1000, 3)
            assert second.result(timeout=60) == b"ab" * 3000
        # The first's argument, the second's argument and its result, each in S3.
        (argument,) = app.objects.ls(first.info().run_id)
        assert argument.size > len(data)
        assert sorted(row.size for row in app.objects.ls(second.info().run_id)) == [
            pytest.approx(2000, abs=64),
            pytest.approx(6000, abs=64),
        ]
        rows = app.objects.ls()
        assert len(rows) == 3 and {row.location for row in rows} == {app.objects.location}
        assert s3.keys(f"{oa.PREFIX}/") == sorted(key_of(oa.PREFIX, row.digest) for row in rows)
    finally:
        app.close()


# -- the collector on another host ------------------------------------------------
def test_verify_while_the_server_is_down_raises(objects: Objects, s3: S3Server) -> None:
    """An outage says nothing about any object: verify raises, it does not
    report every object as damaged."""
    objects.put(b"one")
    objects.put(b"two")
    s3.stop()
    try:
        with pytest.raises(StoreUnavailableError, match="cannot be reached"):
            objects.verify()
    finally:
        s3.restart()  # (moto keeps its objects in memory: they are gone now)


def test_a_put_again_after_another_host_collected_stores_it_anew(
    sqlite_url: str, url: str, s3: S3Server, prefix: str
) -> None:
    """Host A put an object, host B collected it (row and bytes); A's next put
    of the same bytes must store them again, not find a stale listing."""
    with open_store(sqlite_url) as store:
        a = Objects(store, url, cache=False)
        b = Objects(store, url, cache=False)
        data = blob(21, 2 * MiB)
        ref = a.put(data)
        assert a.read_bytes(ref) == data
        assert [row.digest for row in b.gc(grace=0).collected] == [ref.digest]
        assert s3.keys(f"{prefix}/") == []
        again = a.put(data)
        assert again == ref
        assert s3.keys(f"{prefix}/") == [key_of(prefix, ref.digest)]
        assert b.read_bytes(again) == data
        assert a.verify() == []


def test_bytes_a_dead_collector_moved_aside_come_back(
    objects: Objects, s3: S3Server, prefix: str
) -> None:
    """A collector killed between moving the bytes aside and its second look,
    while a put recorded the object again: the next collection puts them back;
    bytes moved aside whose row is gone are dropped."""
    kept = objects.put(blob(22, MiB))
    objects.pin(kept)
    gone = blob(23, MiB)
    client = s3.client()
    for digest in (kept.digest, sha(gone)):
        if digest == sha(gone):
            client.put_object(Bucket=s3.bucket, Key=key_of(prefix, digest), Body=gone)
        client.copy_object(
            Bucket=s3.bucket,
            Key=f"{prefix}/trash/{digest}.{uuid.uuid4().hex}",
            CopySource={"Bucket": s3.bucket, "Key": key_of(prefix, digest)},
        )
        client.delete_object(Bucket=s3.bucket, Key=key_of(prefix, digest))
    with pytest.raises(accord.ObjectNotFound):
        objects.read_bytes(kept)
    objects.gc(grace=0)
    assert objects.read_bytes(kept) == blob(22, MiB)
    assert s3.keys(f"{prefix}/") == [key_of(prefix, kept.digest)]
    assert objects.verify() == []


def test_a_put_whose_publish_fails_records_nothing(
    objects: Objects, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row is recorded before the bytes are published under their digest;
    if publishing fails, the row goes again: no row without its bytes."""
    fs = objects.backend.fs  # type: ignore[attr-defined]
    real_mv = fs.mv

    def mv(source: str, target: str, *args: object, **kwargs: object) -> object:
        if "/tmp/" in source:
            s3.stop()
        return real_mv(source, target, *args, **kwargs)

    monkeypatch.setattr(fs, "mv", mv)
    try:
        with pytest.raises(StoreUnavailableError):
            objects.put(blob(24, MiB))
    finally:
        s3.restart()
    assert objects.ls() == []
