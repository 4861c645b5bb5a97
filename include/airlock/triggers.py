"""Deferrable waits: the triggerer polls a check function, so waiting holds no worker slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from airlock.progress import Every, clock, wait_line
from airlock.waits import MAX_CONSECUTIVE_ERRORS, CheckFailed, backoff_seconds, load_check

WAIT_LOG_SECONDS = 300
"""A wait for a maintenance window logs how long is left this often."""


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
    listed = "; ".join(run["description"] for run in active[:3]) + (f"; and {len(active) - 3} more"
                                                                     if len(active) > 3 else "")
    return {"done": not active, "runs": active or runs,
            "progress": f"{len(active)} run(s) still going on {environment or url}: {listed}" if active else ""}


def snapshot_check(aws_conn_id: str, instance_id: str, snapshot_id: str) -> dict:
    """Done when the RDS snapshot is available; a failed or vanished snapshot is an error."""
    from airlock.rds import RdsSnapshots

    status = RdsSnapshots.connect(aws_conn_id, instance_id).snapshot_status(snapshot_id)
    if status in ("failed", "incompatible-restore", "missing"):
        raise CheckFailed(f"RDS snapshot {snapshot_id} of {instance_id} is {status}")
    return {"done": status == "available", "status": status, "snapshot": snapshot_id}


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
        check, polls, errors, started, every = load_check(self.check), 0, 0, datetime.now(UTC), Every()
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
                backoff = backoff_seconds(self.poll_interval, errors)
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
            if every.due():
                self.log.info(wait_line(f"waiting ({self.check.rsplit(':', 1)[-1]})",
                                        (datetime.now(UTC) - started).total_seconds(),
                                        (deadline - datetime.now(UTC)).total_seconds(), result))
            await asyncio.sleep(self.poll_interval)


class HoldTrigger(PollTrigger):
    """A PollTrigger that ends its task here, in success, whatever the outcome (done, timeout or
    errors): the task holds a pool slot while deferred, and resuming it on a worker would need a slot
    again, which another run may have taken by then (so this run would not end until that one did)."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("airlock.triggers.HoldTrigger", super().serialize()[1])

    async def run(self) -> AsyncIterator[TriggerEvent]:
        async for event in super().run():
            outcome = {key: value for key, value in event.payload.items() if key != "done"}
            if outcome["status"] != "done":
                self.log.warning("released before the run ended (%s): another run may now take the slot", outcome)
            yield TaskSuccessEvent(xcoms={"return_value": {"held": True, "released": outcome}})
            return


def serving_check(platform: str, url: str, auth_conn_id: str | None, environment: str, version: str | None,
                  process: dict | None = None) -> dict:
    """Done when the server at `url` answers its health check and, when `version` is given, serves it
    (before a switch; during a rollout an old replica may still answer with the old one: not yet). A
    local server that exited (seen from its own host) is a verdict."""
    from airlock.drivers.process import exited
    from airlock.environment import adapter_for
    from airlock.http import ServerError
    from airlock.platform_auth import AuthError

    try:
        adapter = adapter_for(platform, url, auth_conn_id, environment)
        adapter.health()
        served = adapter.server_version() if version else None
    except AuthError as error:  # a refused login does not fix itself: fail now, saying which
        raise CheckFailed(str(error)) from None
    except ServerError as error:
        if exited(process):
            raise CheckFailed(f"the server (pid {process['pid']}) exited while starting") from None
        return {"done": False, "answer": str(error)[-300:], "progress": f"not answering yet: {str(error)[-200:]}"}
    return {"done": served == version, **({"serving": served} if version else {}),
            "progress": f"answers, serving {served} (waiting for {version})" if served != version else ""}


def watch_probe(platform: str, url: str, auth_conn_id: str | None, environment: str, version: str,
                smoke: bool) -> None:
    """One look at the upgraded server: it answers, serves `version`, and (when `smoke`) passes the
    platform's smoke test. Raises with what is wrong."""
    from airlock.environment import adapter_for

    adapter = adapter_for(platform, url, auth_conn_id, environment)
    adapter.health()
    served = adapter.server_version()
    if served != version:
        raise RuntimeError(f"{environment} answers but serves {served}, expected {version}")
    if smoke:
        adapter.smoke_test()


class WatchTrigger(BaseTrigger):
    """Watches an upgraded server for `seconds` in the triggerer (no worker slot): `watch_probe`
    every `interval` seconds, the smoke test with it once every `smoke_interval` seconds, judged by a
    WatchJudge; fires "passed" or "failed" (with the verdict)."""

    def __init__(self, probe: dict[str, Any], seconds: float, interval: float, smoke_interval: float,
                 consecutive_failures: int, unhealthy_seconds: float):
        super().__init__()
        self.probe, self.seconds, self.interval, self.smoke_interval = probe, seconds, interval, smoke_interval
        self.consecutive_failures, self.unhealthy_seconds = consecutive_failures, unhealthy_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("airlock.triggers.WatchTrigger", {
            "probe": self.probe, "seconds": self.seconds, "interval": self.interval,
            "smoke_interval": self.smoke_interval, "consecutive_failures": self.consecutive_failures,
            "unhealthy_seconds": self.unhealthy_seconds})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airlock.watching import WatchJudge

        loop = asyncio.get_running_loop()
        judge = WatchJudge(self.consecutive_failures, self.unhealthy_seconds)
        started = loop.time()
        ends, next_smoke, smoke_tests = started + self.seconds, started + self.smoke_interval, 0  # the smoke step
        # has just run before the watch
        environment = self.probe["environment"]
        while True:
            smoke = loop.time() >= next_smoke
            try:
                await asyncio.to_thread(watch_probe, **self.probe, smoke=smoke)
                if smoke:
                    smoke_tests, next_smoke = smoke_tests + 1, loop.time() + self.smoke_interval
                if (lasted := judge.passed(loop.time())) is not None:
                    self.log.warning("%s recovered after %.1f s unhealthy: not a verdict", environment, lasted)
            except Exception as error:
                verdict = judge.failed(loop.time())
                self.log.warning("%s probe %d failed (%d in a row, %.1f s unhealthy): %s", environment, judge.probes,
                                 judge.failures, judge.unhealthy_for(loop.time()), error)
                if verdict:
                    yield TriggerEvent({"status": "failed", "probes": judge.probes, "message": (
                        f"{environment} has been unhealthy for {judge.unhealthy_for(loop.time()):.0f} s "
                        f"({judge.failures} failed probes in a row) after the upgrade to {self.probe['version']}: "
                        f"{error}")})
                    return
            if judge.done(loop.time(), ends):
                yield TriggerEvent({"status": "passed", "probes": judge.probes, "seconds": self.seconds,
                                    "smoke_tests": smoke_tests,
                                    "recovered_after_seconds": judge.recovered_after_seconds})
                return
            await asyncio.sleep(self.interval)


class WaitUntilTrigger(BaseTrigger):
    """Sleeps in the triggerer until `moment`, then fires with when the wait began (in the event: a
    resumed task always gets the event, not always what else it deferred with)."""

    def __init__(self, moment: str, since: str):
        super().__init__()
        self.moment, self.since = moment, since

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("airlock.triggers.WaitUntilTrigger", {"moment": self.moment, "since": self.since})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        moment = datetime.fromisoformat(self.moment)
        while (remaining := (moment - datetime.now(UTC)).total_seconds()) > 0:
            self.log.info("waiting until %s: %s to go", self.moment, clock(remaining))
            await asyncio.sleep(min(remaining, WAIT_LOG_SECONDS))
        yield TriggerEvent({"moment": self.moment, "since": self.since})
