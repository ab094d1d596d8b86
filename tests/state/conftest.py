"""Fixtures of the state-store and messaging suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import accord


@pytest.fixture
def app(store_url: str) -> Iterator[accord.App]:
    """An app named ``st`` on a fresh store."""
    with accord.App("st", store=store_url) as a:
        yield a


@pytest.fixture
def state(app: accord.App) -> accord.State:
    return app.state
