"""Bad store URLs and store arguments are refused before anything is
opened or created (from tests/test_python_bad_input.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import accord
from accord.store import open_store


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://localhost/db", "unknown scheme 'mysql'"),
        ("postgresql://localhost/db?nosuchoption=1", "not a valid PostgreSQL URL"),
        ("postgresql://localhost:notaport/db", "port 'notaport' is not a number"),
        ("just/a/path.db", "has no scheme"),
        ("sqlite://", "has no file path"),
        ("sqlite:///", "has no file path"),
        ("sqlite://relative.db", "has no file path"),
        ("sqlite:///:memory:", "in-memory database cannot be shared"),
        ("sqlite:///x.db?mode=ro", "unknown parameter 'mode'.*SQLite's own URI options"),
        ("sqlite:///x.db?cache=shared", "unknown parameter 'cache'"),
        ("sqlite:///x.db?file_mode=0400", "must let the owner read and write"),
        ("sqlite:///x.db?file_mode=1777", "permission bits alone"),
        ("sqlite:///x.db?file_mode=rw", "file_mode 'rw' is not an octal mode"),
        ("sqlite:///x.db?file_mode", "parameter 'file_mode' needs one value"),
        ("sqlite:///x.db?file_mode=0600&file_mode=0640", "'file_mode' needs one value"),
        ("sqlite:///x.db?busy_timeout=-1", "busy_timeout '-1' is not a number of seconds"),
        ("sqlite:///x.db?busy_timeout=nan", "busy_timeout 'nan' is not a number"),
        ("", "is empty"),
        ("   ", "is empty"),
    ],
)
def test_bad_store_url(url: str, message: str, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(accord.StoreURLError, match=message) as caught:
        open_store(url)
    assert caught.value.url == url
    assert isinstance(caught.value, ValueError)
    app = accord.App("flows_probe", store=url)
    with pytest.raises(accord.StoreURLError, match=message):
        app.store  # noqa: B018 - opened on first use
    assert os.listdir(tmp_path) == []


def test_store_url_in_a_missing_directory(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/no/such/dir/accord.db"
    with pytest.raises(accord.StoreURLError, match="does not exist; create it first"):
        open_store(url)
    app = accord.App("flows_probe", store=url)
    with pytest.raises(accord.StoreURLError, match="does not exist"):
        app.store  # noqa: B018
    assert os.listdir(tmp_path) == []


def test_store_url_naming_a_directory(tmp_path: Path) -> None:
    with pytest.raises(accord.StoreURLError, match="is a directory") as caught:
        open_store(f"sqlite:///{tmp_path}")
    assert f"for example sqlite:///{tmp_path}/accord.db" in str(caught.value)
    assert "check the directory exists" not in str(caught.value)
    assert os.listdir(tmp_path) == []


def test_bad_store_url_from_the_environment(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("ACCORD_STORE", "redis://localhost")
    app = accord.App("flows_probe")
    with pytest.raises(accord.StoreURLError, match="unknown scheme 'redis'"):
        app.store  # noqa: B018


def test_store_argument_of_the_wrong_type() -> None:
    with pytest.raises(accord.ConfigError, match="store must be a URL string or a Store"):
        accord.App("flows_probe", store=42)  # type: ignore[arg-type]
