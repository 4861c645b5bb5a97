"""The upgrade DAG on a distributed Airflow started by the tests (tests/distributed.py): CeleryExecutor
with two workers on their own hostnames and homes, a separate scheduler, dag-processor and triggerer.
One topology serves the whole module (it is the expensive part); each test has its own target.

- A process target declares the queue of the machine its servers live on; every one of its tasks
  must run there.
- A Helm target with its backups in S3 runs on both workers (nothing a later task reads is local),
  while the triggerer is killed during the drain wait and the rollout wait, and the scheduler during
  the approval wait.
- The approval gate's and the drain decision's response timeouts are enforced by the real scheduler.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from airlock import upgrade_log
from airlock.helm import SdkHelm
from airlock.http import ServerError
from airlock.stores.s3 import S3BackupStore
from distributed import (
    REPO,
    SERVERS_QUEUE,
    WORKERS,
    DistributedAirflow,
    answer,
    task_instances,
    unpause_when_parsed,
    wait_for_state,
)
from harness import (
    CONN_ID,
    ENVS,
    KUBE_CONN_ID,
    NEW,
    OLD,
    TEAM_DAG_FILE,
    fingerprints,
    finish_run,
    install_and_seed,
    last_record,
    make_scenario,
    release,
    run_status,
    served,
    start_and_seed,
    start_training_run,
    stop_all,
    write_targets,
)
from kubelet import ProcessKubelet
from leaks import PLANTED
from services import aws_connection_json, connection_uri_for_airflow

pytestmark = pytest.mark.integration
AWS_CONN_ID, API_CONN_ID, BUCKET = "airlock_test_distributed_aws", "airlock_test_distributed_api", "airlock-dist"
TEAM_DAG = "team_training"


def scenarios_for(root) -> dict:
    """The module's targets: each on its own ports; process targets on worker-a's queue."""
    on_worker_a = {"queue": SERVERS_QUEUE}
    return {
        "process": make_scenario("dist_process", root, 5274, 5275, settings=on_worker_a),
        "helm": make_scenario("dist_helm", root, 5276, 5277, driver="helm", settings={
            "backup": {"location": f"s3://{BUCKET}/airlock", "aws_conn_id": AWS_CONN_ID}},
            helm_settings={env: {"image_tag": "v{version}"} for env in ENVS}),  # the chart tags images v3.17.2
        "gate": make_scenario("dist_gate_timeout", root, 5241, 5242, settings={
            **on_worker_a, "approval": {"timeout_minutes": 1}}),
        "drain": make_scenario("dist_drain_timeout", root, 5278, 5279, settings={
            **on_worker_a, "drain": {"timeout_minutes": 0.1, "poll_interval_seconds": 1, "decision_timeout_minutes": 1,
                                     "airflow_api_conn_id": API_CONN_ID}},
            environment_settings={"staging": {"pause_dags": [TEAM_DAG]}}),
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory, mlflow_venvs, kube_api, moto_endpoint):
    import boto3
    from kubernetes import client, config

    root = tmp_path_factory.mktemp("distributed")
    scenarios = scenarios_for(root)
    targets_file = root / "targets.yaml"
    write_targets(targets_file, list(scenarios.values()))
    dags = root / "dags"  # Airlock's DAG file and a team's DAG that the drain pauses
    dags.mkdir()
    (dags / "airlock_upgrade.py").symlink_to(REPO / "dags" / "airlock_upgrade.py")
    (dags / "team_training.py").write_text(TEAM_DAG_FILE)
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key=PLANTED["s3"]).create_bucket(Bucket=BUCKET)
    admin = client.CoreV1Api(config.new_client_from_config(config_file=str(kube_api.kubeconfig)))
    for env in ENVS:
        admin.create_namespace({"metadata": {"name": scenarios["helm"].namespace(env)}})
    connections = {
        CONN_ID: connection_uri_for_airflow(),
        KUBE_CONN_ID: json.dumps({"conn_type": "kubernetes", "extra": {"kube_config_path": str(kube_api.kubeconfig)}}),
        AWS_CONN_ID: aws_connection_json(moto_endpoint),
        API_CONN_ID: json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": 5270, "login": "admin",
                                 "password": PLANTED["airflow_api"]})}
    env_connections = {f"AIRFLOW_CONN_{conn_id.upper()}": value for conn_id, value in connections.items()}
    airflow = DistributedAirflow(root / "airflow", dags_folder=dags, passwords={"admin": PLANTED["airflow_api"]},
                                 remote_logs=(f"s3://{BUCKET}/task-logs", AWS_CONN_ID), extra_env={
        "AIRLOCK_TARGETS_FILE": str(targets_file), "AIRLOCK_DATA_DIR": str(root / "data"),
        "AIRLOCK_VENV_ROOT": os.environ.get("AIRLOCK_VENV_ROOT") or str(mlflow_venvs["2.16.2"].parent),
        "AIRFLOW_VAR_AIRLOCK_BACKUP_SIGNING_KEY": PLANTED["signing_key"], **env_connections})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRLOCK_TARGETS_FILE", str(targets_file))
        for name, value in env_connections.items():
            patch.setenv(name, value)
        helm = scenarios["helm"]
        kubelet = ProcessKubelet(str(kube_api.kubeconfig), {helm.namespace(env): helm.env(env) for env in ENVS})
        airflow.start()
        kubelet.start()
        try:
            yield scenarios, airflow, kubelet
        finally:
            kubelet.stop()
            airflow.stop()
            for scenario in scenarios.values():
                stop_all(scenario)


def trigger(airflow: DistributedAirflow, dag_id: str, **conf) -> str:
    unpause_when_parsed(airflow, dag_id)
    return airflow.call("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": {
        "target_version": NEW, "watch_seconds": 3, **conf}})["dag_run_id"]


def states(tis: list[dict]) -> dict[str, str]:
    return {ti["task_id"]: ti["state"] for ti in tis}


def test_a_process_targets_upgrade_runs_every_task_on_the_worker_of_its_queue(world):
    scenarios, airflow, _ = world
    scenario = scenarios["process"]
    start_and_seed(scenario)
    before = fingerprints(scenario)
    dag_id = "airlock_upgrade__dist_process"

    run_id = trigger(airflow, dag_id)
    finished = wait_for_state(airflow, dag_id, run_id, timeout=900, answers={"uat.approval": "Approve"})
    tis = task_instances(airflow, dag_id, run_id)

    assert finished["state"] == "success", states(tis)
    assert served(scenario, "staging") == served(scenario, "production") == NEW
    assert fingerprints(scenario) == before
    ran = {ti["task_id"]: ti["hostname"] for ti in tis if ti["state"] == "success" and ti["hostname"]}
    assert len(ran) > 20
    assert set(ran.values()) == {"worker-a"}, ran  # worker-b takes `default`, never the servers' queue
    assert {ti["queue"] for ti in tis if ti["task_id"] in ran} == {SERVERS_QUEUE}


def test_a_helm_target_with_s3_backups_upgrades_across_both_workers_through_component_crashes(world, kube_api):
    """The triggerer is SIGKILLed while it holds the drain wait (a training run still going) and the
    rollout wait, the scheduler while the gate waits for its answer; each comes back and the run ends
    as if nothing had happened. Nothing a task reads was left on the other worker's disk."""
    scenarios, airflow, kubelet = world
    scenario = scenarios["helm"]
    helm = SdkHelm(str(kube_api.kubeconfig))
    install_and_seed(scenario, helm)
    staging_url = scenario.env("staging").config.url
    production_before = fingerprints(scenario)["production"]
    training = start_training_run(scenario)
    dag_id = "airlock_upgrade__dist_helm"
    crashes: list[str] = []

    def crash(component: str, meanwhile=lambda: None):
        def act():
            airflow.kill(component)
            crashes.append(component)
            time.sleep(5)
            meanwhile()
            airflow.start_component(component)
        return act

    run_id = trigger(airflow, dag_id)
    finished = wait_for_state(airflow, dag_id, run_id, timeout=1200, on={
        ("staging_upgrade.drain", "deferred"): crash("triggerer", meanwhile=lambda: finish_run(staging_url, training)),
        ("uat.approval", "awaiting_input"): crash("scheduler", meanwhile=lambda: answer(
            airflow, dag_id, run_id, "uat.approval", "Approve")),
        ("production_upgrade.rollout", "deferred"): crash("triggerer")})
    tis = task_instances(airflow, dag_id, run_id)

    assert crashes == ["triggerer", "scheduler", "triggerer"], crashes  # each wait was really held, and crashed
    assert finished["state"] == "success", (states(tis), kubelet.errors)
    assert served(scenario, "staging") == served(scenario, "production") == NEW
    assert fingerprints(scenario)["production"] == production_before
    assert states(tis)["staging_upgrade.fingerprint"] == "success"  # staging's data, with the run, equal
    assert [entry["image"]["tag"] for entry in (helm.get_values(release(scenario, env)) for env in ENVS)] == [
        f"v{NEW}", f"v{NEW}"]
    assert {ti["hostname"] for ti in tis if ti["state"] == "success" and ti["hostname"]} == set(WORKERS)
    store = S3BackupStore(s3_client(airflow), f"s3://{BUCKET}/airlock", "dist_helm", "production")
    record = next(r for r in upgrade_log.read(store) if r["run_id"] == run_id)
    assert record["outcome"] == "upgraded", record


def s3_client(airflow: DistributedAirflow):
    import boto3

    settings = json.loads(airflow.extra_env[f"AIRFLOW_CONN_{AWS_CONN_ID.upper()}"])
    return boto3.client("s3", endpoint_url=settings["extra"]["endpoint_url"], region_name="us-east-1",
                        aws_access_key_id=settings["login"], aws_secret_access_key=settings["password"])


BAD_PARAMS = [
    ({"target_version": "3.17"}, "target_version"),
    ({"target_version": "9" * 5000 + ".0.0"}, "target_version"),
    ({"target_version": "3.17.2; rm -rf /"}, "target_version"),
    ({"target_version": ""}, "target_version"),
    ({"target_version": None}, "target_version"),
    ({"target_version": 3.17}, "target_version"),
    ({"mode": "yolo"}, "mode"),
    ({"drain_timeout_minutes": -1}, "drain_timeout_minutes"),
    ({"drain_timeout_minutes": 1e9}, "drain_timeout_minutes"),
    ({"drain_timeout_minutes": "NaN"}, "drain_timeout_minutes"),
    ({"watch_seconds": 1.5}, "watch_seconds"),
    ({"watch_seconds": 10**7}, "watch_seconds"),
    ({"watch_seconds": "60"}, "watch_seconds"),
]


def refused_params(airflow: DistributedAirflow, dag_id: str) -> list[str]:
    """Every bad conf is refused with 400 by the API server, naming the param; no run is created."""
    problems = []
    for conf, param in BAD_PARAMS:
        try:
            airflow.call("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
            problems.append(f"{conf!r:.80} was accepted")
        except ServerError as error:
            if "HTTP 400" not in str(error) or param not in str(error):
                problems.append(f"{conf!r:.80}: {error}")
    runs = airflow.call("GET", f"/dags/{dag_id}/dagRuns")["dag_runs"]
    return problems + [f"a run exists: {run['dag_run_id']}" for run in runs]


def answer_as_bob(airflow: DistributedAirflow, dag_id: str, run_id: str) -> str:
    """What the API says to bob, an Airflow admin but not an approver, trying to approve."""
    try:
        answer(airflow, dag_id, run_id, "uat.approval", "Approve", user="bob")
        return "accepted"
    except ServerError as error:
        return str(error)


def test_nobody_answering_the_gate_rejects_under_the_real_scheduler(world):
    """`dag.test()` never enforces a gate's timeout; the scheduler does. Nobody answers: the gate takes
    its default (Reject) when the approval timeout passes, production is never touched, and the log
    says nobody answered. On the way: bad params are refused by the API server before any run exists,
    a non-approver is refused at the gate (403), and a downgrade by the first task that reads versions."""
    scenarios, airflow, _ = world
    scenario = scenarios["gate"]
    start_and_seed(scenario)
    production = scenario.env("production")
    before, pid = production.adapter.fingerprint().digest, production.driver.running_pid()
    dag_id = "airlock_upgrade__dist_gate_timeout"
    unpause_when_parsed(airflow, dag_id)
    refused = refused_params(airflow, dag_id)
    bob_was_told: list[str] = []

    run_id = trigger(airflow, dag_id)
    finished = wait_for_state(airflow, dag_id, run_id, timeout=900, on={
        ("uat.approval", "awaiting_input"): lambda: bob_was_told.append(answer_as_bob(airflow, dag_id, run_id))})
    tis = states(task_instances(airflow, dag_id, run_id))
    gate = airflow.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/uat.approval/-1/hitlDetails")
    staging_pid = scenario.env("staging").driver.running_pid()
    downgrade = trigger(airflow, dag_id, target_version="1.0.0")  # well-formed; refused by preflight.plan
    downgrade_state = wait_for_state(airflow, dag_id, downgrade, timeout=600)["state"]
    downgrade_tis = states(task_instances(airflow, dag_id, downgrade))
    plan_log = json.dumps(airflow.call(
        "GET", f"/dags/{dag_id}/dagRuns/{downgrade}/taskInstances/preflight.plan/logs/1?full_content=true"))

    assert refused == []
    assert len(bob_was_told) == 1 and "HTTP 403" in bob_was_told[0], bob_was_told
    assert finished["state"] == "failed", tis
    assert tis["staging_upgrade.finish_staging"] == "success", tis
    assert gate["chosen_options"] == ["Reject"] and not gate.get("responded_by_user"), gate
    assert all(tis[t] == "skipped" for t in tis if t.startswith("production_upgrade.")), tis
    assert production.adapter.server_version() == OLD and production.driver.running_pid() == pid
    assert production.adapter.fingerprint().digest == before
    assert served(scenario, "staging") == NEW
    record = next(r for r in upgrade_log.read(scenario.root / "backups") if r["run_id"] == run_id)
    assert record["outcome"] == "rejected"
    assert "nobody (no answer before the timeout)" in record["detail"]
    assert downgrade_state == "failed", downgrade_tis
    assert downgrade_tis["preflight.plan"] == "failed", downgrade_tis
    touching = ("backup_and_prepare", "compatibility", "staging_upgrade", "production_upgrade")
    assert not [t for t, s in downgrade_tis.items() if s == "success" and t.split(".")[0] in touching
                and t != "staging_upgrade.rollback_staging"], downgrade_tis  # which finds nothing to roll back
    assert scenario.env("staging").driver.running_pid() == staging_pid
    assert "downgrades are refused" in plan_log, plan_log[-2000:]


def test_nobody_answering_the_drain_decision_aborts_under_the_real_scheduler(world):
    """A training run outlives the drain timeout; nobody answers the drain decision within its
    timeout: the scheduler takes the default (abort). Nothing is stopped, the run on staging goes on,
    and the team's DAG, paused on one worker, is unpaused (from the record in Airflow) on either."""
    scenarios, airflow, _ = world
    scenario = scenarios["drain"]
    start_and_seed(scenario)
    staging = scenario.env("staging")
    pid, before = staging.driver.running_pid(), fingerprints(scenario)
    training = start_training_run(scenario)
    dag_id = "airlock_upgrade__dist_drain_timeout"
    unpause_when_parsed(airflow, TEAM_DAG)

    run_id = trigger(airflow, dag_id)
    finished = wait_for_state(airflow, dag_id, run_id, timeout=900)
    tis = states(task_instances(airflow, dag_id, run_id))
    decision = airflow.call(
        "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/staging_upgrade.drain_decision/-1/hitlDetails")

    assert finished["state"] == "failed", tis
    assert decision["chosen_options"] == ["Abort"] and not decision.get("responded_by_user"), decision
    assert tis["staging_upgrade.stop"] == "skipped", tis
    assert staging.driver.running_pid() == pid and served(scenario, "staging") == OLD
    assert run_status(scenario, training) == "RUNNING"
    assert fingerprints(scenario)["production"] == before["production"]
    assert tis["staging_upgrade.unpause_dags_staging"] == "success", tis
    assert airflow.call("GET", f"/dags/{TEAM_DAG}")["is_paused"] is False
    assert last_record(scenario)["outcome"] == "aborted"
