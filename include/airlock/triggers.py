"""Deferrable waits: the triggerer polls a check function, so waiting holds no worker slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from importlib import import_module
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class CheckFailed(RuntimeError):
    """A check's verdict (a snapshot that failed, a Job that vanished): fails the wait at once. Any
    other exception is taken as transient (a reset, a 500, a timeout) and retried with backoff."""


MAX_CONSECUTIVE_ERRORS = 6
"""Transient errors in a row a wait rides out (backing off up to BACKOFF_CAP_SECONDS) before failing."""
BACKOFF_CAP_SECONDS = 60.0


def drain_check(platform: str, url: str, stale_after_minutes: float, auth_conn_id: str | None = None,
                environment: str = "") -> dict:
    """Done when no active run is left; stale runs are reported but not waited for. The credential is
    looked up by connection id on each poll (trigger kwargs are stored: they carry no secret)."""
    from airlock.environment import adapter_for
    from airlock.platform_auth import AuthError

    try:
        adapter = adapter_for(platform, url, auth_conn_id, environment)
        found = adapter.running_runs(timedelta(minutes=stale_after_minutes))
    except AuthError as error:  # a refused login does not fix itself: fail now, saying which
        raise CheckFailed(str(error)) from None
    runs = [{"description": run.describe(), "stale": run.stale} for run in found]
    active = [run for run in runs if not run["stale"]]
    return {"done": not active, "runs": active or runs}


def snapshot_check(aws_conn_id: str, instance_id: str, snapshot_id: str) -> dict:
    """Done when the RDS snapshot is available; a failed or vanished snapshot is an error."""
    from airlock.rds import RdsSnapshots, client_for

    status = RdsSnapshots(client_for(aws_conn_id), instance_id).snapshot_status(snapshot_id)
    if status in ("failed", "incompatible-restore", "missing"):
        raise CheckFailed(f"RDS snapshot {snapshot_id} of {instance_id} is {status}")
    return {"done": status == "available", "status": status, "snapshot": snapshot_id}


def load_check(path: str):
    module, _, name = path.partition(":")
    return getattr(import_module(module), name)


class PollTrigger(BaseTrigger):
    """Calls `check(**kwargs)` (a "module:function" path) every `poll_interval` seconds until it
    returns done, raises CheckFailed, fails MAX_CONSECUTIVE_ERRORS times in a row (each transient
    error backs off: 2, 4, 8 … poll intervals), or `deadline` passes; fires "done", "error" or
    "timeout"."""

    def __init__(self, check: str, kwargs: dict[str, Any], poll_interval: float, deadline: str):
        super().__init__()
        self.check, self.kwargs, self.poll_interval, self.deadline = check, kwargs, poll_interval, deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("airlock.triggers.PollTrigger", {"check": self.check, "kwargs": self.kwargs,
                                                 "poll_interval": self.poll_interval, "deadline": self.deadline})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = datetime.fromisoformat(self.deadline)
        check, polls, errors = load_check(self.check), 0, 0
        while True:
            polls += 1
            try:
                result = await asyncio.to_thread(check, **self.kwargs)
                errors = 0
            except CheckFailed as error:  # the sensor turns it into a task failure with this message
                yield TriggerEvent({"status": "error", "message": str(error), "polls": polls})
                return
            except Exception as error:
                errors += 1
                if errors >= MAX_CONSECUTIVE_ERRORS or datetime.now(UTC) >= deadline:
                    yield TriggerEvent({"status": "error", "polls": polls,
                                        "message": f"{error} (failed {errors} times in a row)"})
                    return
                backoff = min(self.poll_interval * 2 ** errors, BACKOFF_CAP_SECONDS)
                self.log.warning("%s failed (%s), %d in a row; trying again in %.0f s", self.check, error, errors,
                                 backoff)
                await asyncio.sleep(backoff)
                continue
            if result["done"]:
                yield TriggerEvent({**result, "status": "done", "polls": polls})
                return
            if datetime.now(UTC) >= deadline:
                yield TriggerEvent({**result, "status": "timeout", "polls": polls})
                return
            self.log.info("not yet (%s); next look in %ss", self.check, self.poll_interval)
            await asyncio.sleep(self.poll_interval)
