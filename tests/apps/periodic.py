"""An app with periodic tasks (tests/test_schedules.py).

``tick`` fires every second; the hourly ones fire only when a test moves
their next slot back (downtime), one per catch-up policy; ``five_minutes`` is
a cron rule.
"""

from __future__ import annotations

from datetime import timedelta

import accord

app = accord.App("periodic")


@app.schedule(every=timedelta(seconds=1), args=("tock",))
def tick(word: str) -> str:
    return word


@app.schedule(every=timedelta(hours=1), name="hourly_skip")
def hourly() -> int:
    return 1


@app.schedule(every=timedelta(hours=1), catch_up="all", kwargs={"n": 2})
def hourly_all(n: int) -> int:
    return n


@app.schedule("*/5 * * * *")
def five_minutes() -> None:
    return None
