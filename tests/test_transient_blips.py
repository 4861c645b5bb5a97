"""A transient error at the worst time, through the real DAG: the S3 store holding the backups and
the in-progress marker resets its connections just when `decide` reads the marker (more resets than
boto's own retries absorb). The task is retried with backoff instead of failing the upgrade."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlparse

import pytest
from airlock import upgrade_log
from harness import (
    CONN_ID,
    NEW,
    WATCHING_STATES,
    make_scenario,
    run_upgrade,
    served,
    start_and_seed,
    stop_all,
    task_state,
    task_states,
    write_targets,
)
from services import FlakyProxy, aws_connection_json, connection_uri_for_airflow

pytestmark = pytest.mark.integration
BUCKET = "airlock-blips"
AWS = "airlock_test_blip"


@pytest.fixture
def world(tmp_path, airflow_db, mlflow_venvs, moto_endpoint, monkeypatch):
    import boto3

    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
    endpoint = urlparse(moto_endpoint)
    proxy = FlakyProxy(endpoint.hostname, endpoint.port, failures=0)
    scenario = make_scenario("s3_blip", tmp_path, 5250, 5251, settings={
        "backup": {"location": f"s3://{BUCKET}/airlock", "aws_conn_id": AWS}, "log_dir": str(tmp_path / "log")})
    targets = tmp_path / "targets.yaml"
    write_targets(targets, [scenario])
    monkeypatch.setenv("AIRLOCK_TARGETS_FILE", str(targets))
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", connection_uri_for_airflow())
    monkeypatch.setenv(f"AIRFLOW_CONN_{AWS.upper()}", aws_connection_json(f"http://127.0.0.1:{proxy.port}"))
    yield scenario, targets, proxy
    proxy.close()
    stop_all(scenario)


def test_decide_rides_out_s3_resets_and_the_upgrade_finishes(world):
    scenario, targets, proxy = world
    start_and_seed(scenario)
    armed: list[float] = []

    def cut_s3_when_decide_comes():
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not armed:
            if task_state("airlock_upgrade__s3_blip", "production_upgrade.watch") in WATCHING_STATES:
                proxy.arm(6)  # more than boto's own attempts at one call: a try of `decide` fails
                armed.append(time.monotonic())
            time.sleep(0.2)

    threading.Thread(target=cut_s3_when_decide_comes, daemon=True).start()
    run, _ = run_upgrade("airlock_upgrade__s3_blip", targets, {"target_version": NEW, "watch_seconds": 3})

    states = task_states(run)
    assert armed and proxy.reset == 6, (armed, proxy.reset)
    assert str(run.state) == "success", states
    assert try_number(run, "conclude.decide") >= 2  # failed on the resets, retried with backoff, went on
    assert served(scenario, "production") == NEW
    record = upgrade_log.read(scenario.root.parent / "log")[-1]
    assert (record["outcome"], record["rolled_back"]) == ("upgraded", False)


def try_number(run, task_id: str) -> int:
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.query(TaskInstance).filter_by(dag_id=run.dag_id, run_id=run.run_id,
                                                     task_id=task_id).one().try_number
