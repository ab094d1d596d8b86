from __future__ import annotations

from collections.abc import Iterator

import pytest

import accord
from support.cluster import chaos_app


@pytest.fixture
def app(store_url: str) -> Iterator[accord.App]:
    """tests/apps/chaos.py's app on this test's store."""
    with chaos_app(store_url) as bound:
        yield bound
