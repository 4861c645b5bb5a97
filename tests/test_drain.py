"""The drain against a real MLflow server: active runs hold it, stale runs do not, a timeout lists them."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from airlock.config import load_targets
from airlock.environment import open_environment
from airlock.http import request_json
from harness import finish_run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def staging(tmp_path_factory, mlflow_venvs, monkeypatch_module):
    root = tmp_path_factory.mktemp("drain")
    monkeypatch_module.setenv("AIRLOCK_DATA_DIR", str(root))
    target = load_targets()["mlflow_demo"]
    env = open_environment(target, "staging")
    env.driver.start("2.16.2")
    yield env
    env.driver.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def running_run(url: str, started_minutes_ago: float = 0) -> str:
    start = int((time.time() - started_minutes_ago * 60) * 1000)
    return request_json("POST", f"{url}/api/2.0/mlflow/runs/create",
                        {"experiment_id": "0", "start_time": start})["run"]["info"]["run_id"]


def drain_trigger(url: str, stale_after_minutes: float, deadline: str):
    from airlock.triggers import PollTrigger

    return PollTrigger("airlock.triggers:drain_check", {"platform": "mlflow", "url": url,
                                                         "stale_after_minutes": stale_after_minutes}, 0.5, deadline)


def fire(trigger) -> dict:
    async def first_event():
        async for event in trigger.run():
            return event.payload
    return asyncio.run(first_event())


def test_timeout_lists_the_runs_still_going_and_the_sensor_fails_with_them(staging):
    from airflow.sdk.exceptions import AirflowException
    from airlock.operators import DrainSensor

    url = staging.config.url
    run_id = running_run(url)
    try:
        deadline = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        event = fire(drain_trigger(url, 60, deadline))
        assert event["status"] == "timeout"
        assert [run_id in r["description"] for r in event["runs"]] == [True]
        assert event["polls"] >= 2
        sensor = DrainSensor(task_id="drain", platform="mlflow", url=url, environment="staging",
                             timeout_minutes=0.03, poll_interval=0.5, stale_after_minutes=60)
        with pytest.raises(AirflowException) as error:
            sensor.execute_complete({}, event)
        assert run_id in str(error.value) and "nothing was stopped" in str(error.value)
    finally:
        finish_run(url, run_id)


def test_drain_completes_when_the_run_finishes_and_ignores_stale_runs(staging):

    url = staging.config.url
    stale = running_run(url, started_minutes_ago=120)  # a crashed client's run, RUNNING forever
    active = running_run(url)
    try:
        deadline = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()
        trigger = drain_trigger(url, 60, deadline)

        async def finish_later():
            await asyncio.sleep(3)
            await asyncio.to_thread(finish_run, url, active)

        async def both():
            task = asyncio.create_task(finish_later())
            async for event in trigger.run():
                await task
                return event.payload

        started = time.monotonic()
        event = asyncio.run(both())
        assert event["status"] == "done"
        assert time.monotonic() - started >= 3
        assert [stale in r["description"] and r["stale"] for r in event["runs"]] == [True]
    finally:
        finish_run(url, stale)
