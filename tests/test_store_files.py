"""The SQLite store's files: private by default, a mode the user sets, and
URLs whose parameters are read, not taken for part of the file name (issue
"Hardening the kernel", items 14 and 15)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import accord
from accord.store import open_store
from accord.store.sqlite.store import SqliteStore
from apps import flows as f
from support.common import bind


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The umask most systems give users (022): files are world-readable unless
    their creator says otherwise."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _use(store: accord.store.Store) -> None:
    """Write, so that the -wal and -shm files exist beside the database (until
    the store is closed)."""
    accord.App("files", store=store).state.put("k", 1)
    assert os.path.exists(store.path + "-wal")  # type: ignore[attr-defined]


def _modes(db: Path) -> dict[str, int]:
    return {
        suffix: _mode(f"{db}{suffix}")
        for suffix in ("", "-wal", "-shm")
        if os.path.exists(f"{db}{suffix}")
    }


def test_store_files_are_private_by_default(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    store = open_store(f"sqlite:///{db}")
    try:
        _use(store)
        assert _modes(db) == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
    finally:
        store.close()


def test_the_default_directory_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store()
    try:
        _use(store)
        assert _mode(tmp_path / ".accord") == 0o700
        assert set(_modes(tmp_path / ".accord" / "accord.db").values()) == {0o600}
    finally:
        store.close()


def test_a_file_mode_from_the_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///.accord/accord.db?file_mode=0640"
    store = open_store(url)
    try:
        assert isinstance(store, SqliteStore) and store.file_mode == 0o640
        assert store.url == url  # what slot processes open: the same file, the same mode
        _use(store)
        assert _mode(tmp_path / ".accord") == 0o750
        assert set(_modes(tmp_path / ".accord" / "accord.db").values()) == {0o640}
    finally:
        store.close()
    assert not any("?" in name for name in os.listdir(tmp_path / ".accord"))


@pytest.mark.parametrize("mode", [0o600, 0o660])
def test_the_group_file_and_wake_ups_follow_the_file_mode(tmp_path: Path, mode: int) -> None:
    """A store a group shares (file_mode=0660) must let the group's processes
    commit for each other (the -group file) and wake each other (the sockets
    and their folder); a private one lets no one else."""
    db = tmp_path / "store.db"
    store = open_store(f"sqlite:///{db}?file_mode=0{mode:o}")
    try:
        assert isinstance(store, SqliteStore)
        _use(store)
        waiter = store._wakeups.listen("news")
        assert waiter is not None
        try:
            assert _mode(f"{db}-group") == mode
            assert _mode(store._wakeups.folder) == {0o600: 0o700, 0o660: 0o770}[mode]
            assert _mode(waiter.getsockname()) == mode
        finally:
            store._wakeups.forget(waiter)
    finally:
        store.close()


def test_an_explicit_mode_applies_to_an_existing_store(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    store = open_store(f"sqlite:///{db}")
    _use(store)
    store.close()
    os.chmod(db, 0o644)
    # Without file_mode, an existing file keeps the mode its owner gave it.
    again = open_store(f"sqlite:///{db}")
    again.close()
    assert _mode(db) == 0o644
    tightened = open_store(f"sqlite:///{db}?file_mode=0600")
    try:
        _use(tightened)
        assert set(_modes(db).values()) == {0o600}
    finally:
        tightened.close()


@pytest.mark.sqlite_only
def test_slot_processes_open_the_store_the_url_names(flows: accord.App, tmp_path: Path) -> None:
    """A process-mode node hands its store URL, parameters and all, to its
    slots: they must open the same file (not one named 'x.db?file_mode=...')."""
    db = tmp_path / "params.db"
    url = f"sqlite:///{db}?file_mode=0640&busy_timeout=5"
    bind(flows, url)
    assert flows.store_url == url
    handle = f.square.submit(7)
    with flows.embedded_node(mode="process", slots=1):
        assert handle.result(timeout=60) == 49
    assert sorted(p.name for p in tmp_path.iterdir() if "?" in p.name) == []
    assert _mode(db) == 0o640
    store = flows.store
    assert isinstance(store, SqliteStore) and store.busy_timeout == 5
