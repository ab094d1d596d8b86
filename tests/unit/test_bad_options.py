"""Options refused when they are given, before any store is named or opened:
an app's payload limit (from tests/test_names.py) and a policy's aging rate
(from tests/scheduling/test_bad_input.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest

import accord
from accord.scheduling import CostPolicy

NAN = math.nan
INF = math.inf


@pytest.mark.parametrize(
    "limit", [-5, 0, True, 1.5, "10", None, 2**40], ids=lambda v: f"max_payload={v!r}"
)
def test_payload_limit_must_be_a_size(limit: object) -> None:
    with pytest.raises(accord.ConfigError, match="max_payload must be"):
        accord.App("sized", max_payload=limit)  # type: ignore[arg-type]


@pytest.mark.parametrize("aging", [-0.1, NAN, INF, "fast", None], ids=repr)
def test_bad_aging_rate(aging: Any) -> None:
    with pytest.raises(accord.ConfigError, match="aging must be"):
        CostPolicy(aging=aging)
