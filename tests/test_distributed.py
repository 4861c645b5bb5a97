"""The upgrade DAG on a distributed Airflow started by the tests (tests/distributed.py): CeleryExecutor
with two workers on their own hostnames and homes, a separate scheduler, dag-processor and triggerer.

A process target declares the queue of the machine its servers live on; every one of its tasks must
run there, whichever worker picks up the rest of the queue.
"""

from __future__ import annotations

import os

import pytest
from distributed import SERVERS_QUEUE, DistributedAirflow, task_instances, unpause_when_parsed, wait_for_state
from harness import CONN_ID, NEW, fingerprints, make_scenario, served, start_and_seed, stop_all, write_targets
from leaks import PLANTED
from services import connection_uri_for_airflow

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory, mlflow_venvs):
    """One distributed Airflow for the module, with a process target whose servers live on worker-a's
    queue."""
    root = tmp_path_factory.mktemp("distributed")
    scenario = make_scenario("dist_process", root, 5274, 5275, settings={"queue": SERVERS_QUEUE})
    targets_file = root / "targets.yaml"
    write_targets(targets_file, [scenario])
    connections = {f"AIRFLOW_CONN_{CONN_ID.upper()}": connection_uri_for_airflow()}
    airflow = DistributedAirflow(root / "airflow", extra_env={
        "AIRLOCK_TARGETS_FILE": str(targets_file), "AIRLOCK_DATA_DIR": str(root / "data"),
        "AIRLOCK_VENV_ROOT": os.environ.get("AIRLOCK_VENV_ROOT") or str(mlflow_venvs["2.16.2"].parent),
        "AIRFLOW_VAR_AIRLOCK_BACKUP_SIGNING_KEY": PLANTED["signing_key"], **connections})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRLOCK_TARGETS_FILE", str(targets_file))
        for name, value in connections.items():
            patch.setenv(name, value)
        airflow.start()
        try:
            yield scenario, airflow
        finally:
            airflow.stop()
            stop_all(scenario)


def upgrade(airflow: DistributedAirflow, dag_id: str) -> tuple[dict, list[dict]]:
    """Trigger an upgrade to NEW through the REST API, approve it like a person, follow it to its end."""
    unpause_when_parsed(airflow, dag_id)
    run = airflow.call("POST", f"/dags/{dag_id}/dagRuns",
                       {"logical_date": None, "conf": {"target_version": NEW, "watch_seconds": 3}})
    finished = wait_for_state(airflow, dag_id, run["dag_run_id"], timeout=900, answers={"uat.approval": "Approve"})
    return finished, task_instances(airflow, dag_id, run["dag_run_id"])


def test_a_process_targets_upgrade_runs_every_task_on_the_worker_of_its_queue(world):
    scenario, airflow = world
    start_and_seed(scenario)
    before = fingerprints(scenario)

    finished, tis = upgrade(airflow, "airlock_upgrade__dist_process")

    assert finished["state"] == "success", {ti["task_id"]: ti["state"] for ti in tis}
    assert served(scenario, "staging") == served(scenario, "production") == NEW
    assert fingerprints(scenario) == before
    ran = {ti["task_id"]: ti["hostname"] for ti in tis if ti["state"] == "success" and ti["hostname"]}
    assert len(ran) > 20
    assert set(ran.values()) == {"worker-a"}, ran  # worker-b takes `default`, never the servers' queue
    assert {ti["queue"] for ti in tis if ti["task_id"] in ran} == {SERVERS_QUEUE}
