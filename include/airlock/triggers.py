"""Deferrable drain: the triggerer polls the platform for running runs, holding no worker slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airlock.http import ServerError
from airlock.registry import PLATFORMS, load_class


def blocking_runs(platform: str, url: str, stale_after_minutes: float) -> list[dict]:
    """Runs that still hold the drain (stale ones are reported but not waited for)."""
    adapter = load_class(PLATFORMS, platform)(url)
    runs = adapter.running_runs(timedelta(minutes=stale_after_minutes))
    return [{"description": run.describe(), "stale": run.stale} for run in runs]


class DrainTrigger(BaseTrigger):
    """Fires "drained" when no active run is left, or "timeout" with the runs still going."""

    def __init__(self, platform: str, url: str, stale_after_minutes: float, poll_interval: float,
                 deadline: str):
        super().__init__()
        self.platform, self.url = platform, url
        self.stale_after_minutes, self.poll_interval, self.deadline = stale_after_minutes, poll_interval, deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("airlock.triggers.DrainTrigger", {
            "platform": self.platform, "url": self.url, "stale_after_minutes": self.stale_after_minutes,
            "poll_interval": self.poll_interval, "deadline": self.deadline})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = datetime.fromisoformat(self.deadline)
        polls = 0
        while True:
            polls += 1
            try:
                runs = await asyncio.to_thread(blocking_runs, self.platform, self.url, self.stale_after_minutes)
            except ServerError as error:
                yield TriggerEvent({"status": "error", "message": str(error), "polls": polls})
                return
            active = [run for run in runs if not run["stale"]]
            if not active:
                yield TriggerEvent({"status": "drained", "runs": runs, "polls": polls})
                return
            if datetime.now(UTC) >= deadline:
                yield TriggerEvent({"status": "timeout", "runs": active, "polls": polls})
                return
            self.log.info("%d run(s) still going on %s; next look in %ss", len(active), self.url,
                          self.poll_interval)
            await asyncio.sleep(self.poll_interval)
