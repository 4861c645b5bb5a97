"""The upgrade DAG on a distributed Airflow started by the tests (tests/distributed.py): CeleryExecutor
with two workers on their own hostnames and homes, a separate scheduler, dag-processor and triggerer.
One topology serves the whole module (it is the expensive part); each test has its own target.

- A process target declares the queue of the machine its servers live on; every one of its tasks
  must run there.
- A Helm target with its backups in S3 runs on both workers (nothing a later task reads is local),
  while the triggerer is killed during the drain wait and the rollout wait, and the scheduler during
  the approval wait.
- The approval gate's and the drain decision's response timeouts are enforced by the real scheduler.
- The post-upgrade watch runs in the real triggerer: a server that then answers 503 gets on-call
  asked; one that crashes and stays down is rolled back alone, keeping what was written.
- The scheduler's own cron run of a patch target finds nothing newer and ends at once.

The runs that crash no Airflow component (the process target, the gate timeout, the drain-decision
timeout, the two watches) go at once, since most of their time is waiting; the run with crashes goes alone.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import threading
import time
from dataclasses import replace
from datetime import datetime
from itertools import pairwise

import pytest
from airlock import upgrade_log
from airlock.airflow_api import AirflowApi
from airlock.backups import read_manifest
from airlock.helm import SdkHelm
from airlock.http import ServerError, request_text
from airlock.operators import RollbackDecisionOperator
from airlock.production_slot import ensure_pool
from airlock.stores.s3 import S3BackupStore
from airlock.upgrades_page import duration
from browser import browser_page, distinct_colours, log_in
from conftest import platform_venvs
from distributed import (
    REPO,
    SERVERS_QUEUE,
    WORKERS,
    DistributedAirflow,
    Follow,
    answer,
    follow_runs,
    task_instances,
    unpause_when_parsed,
    wait_for_state,
)
from harness import (
    CONN_ID,
    DRAIN,
    ENVS,
    KUBE_CONN_ID,
    NEW,
    OLD,
    TEAM_DAG_FILE,
    fingerprints,
    finish_run,
    install_and_seed,
    last_record,
    log_a_run,
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
    """The module's targets: each on its own ports; process targets on worker-a's queue; each but
    watch_answers makes sure of its production pool (airlock_mlflow) through the Airflow API
    connection."""
    on_worker_a = {"queue": SERVERS_QUEUE, "drain": {**DRAIN, "airflow_api_conn_id": API_CONN_ID}}
    return {
        "process": make_scenario("dist_process", root, 5274, 5275, settings=on_worker_a),
        "helm": make_scenario("dist_helm", root, 5276, 5277, driver="helm", settings={
            "backup": {"location": f"s3://{BUCKET}/airlock", "aws_conn_id": AWS_CONN_ID},
            "drain": on_worker_a["drain"]},
            helm_settings={env: {"image_tag": "v{version}"} for env in ENVS}),  # the chart tags images v3.17.2
        "gate": make_scenario("dist_gate_timeout", root, 5241, 5242, settings={
            **on_worker_a, "approval": {"timeout_minutes": 1}}),
        "drain": make_scenario("dist_drain_timeout", root, 5278, 5279, settings={
            **on_worker_a, "drain": {"timeout_minutes": 0.1, "poll_interval_seconds": 1, "decision_timeout_minutes": 1,
                                     "airflow_api_conn_id": API_CONN_ID}},
            environment_settings={"staging": {"pause_dags": [TEAM_DAG]}}),
        **{name: make_scenario(f"dist_{name}", root, port, port + 1, settings={
            **on_worker_a, "watch": {"interval_seconds": 1, "consecutive_failures": 2, "unhealthy_seconds": 3},
            **pool}) for name, port, pool in (
            ("watch_answers", 5288, {"production_pool": "none"}),  # its long production runs beside the others'
            ("watch_down", 5290, {}))},
        **{name: patch_target(make_scenario(f"dist_{name}", root, port, port + 1, settings={
            **on_worker_a, "auto_approve": "patch", "releases": {"file": str(root / "fleet-releases.txt")},
            "watch": {"minutes": 0.5, "interval_seconds": 1, "consecutive_failures": 2, "unhealthy_seconds": 3}}))
           for name, port in (("fleet_a", 5292), ("fleet_b", 5294), ("fleet_c", 5296))},
        "schedule": make_scenario("dist_schedule", root, 5286, 5287, settings={
            **on_worker_a, "schedule": {"cron": "* * * * *", "timezone": "UTC"}, "auto_upgrade": "patch",
            "releases": {"file": str(root / "mlflow-releases.txt")}}),
    }


FLEET = {"mlflow_fleet": {"targets": ["dist_fleet_a", "dist_fleet_b", "dist_fleet_c"], "wave_size": 2,
                          "pause_minutes": 0.1}}
PATCH_FROM, PATCH_TO = "2.16.1", "2.16.2"


def patch_target(scenario):
    """A target on MLflow 2.16.1, whose next release is the 2.16.2 patch (a quick upgrade)."""
    return replace(scenario, platform=replace(scenario.platform, old=PATCH_FROM, new=PATCH_TO))


@pytest.fixture(scope="module")
def world(tmp_path_factory, mlflow_venvs, kube_api, moto_endpoint):
    import boto3
    from kubernetes import client, config

    root = tmp_path_factory.mktemp("distributed")
    scenarios = scenarios_for(root)
    (root / "mlflow-releases.txt").write_text(f"{OLD}\n{NEW}\n")  # no newer patch of 2.16 than the one running
    (root / "fleet-releases.txt").write_text(f"{PATCH_FROM}\n{PATCH_TO}\n")
    platform_venvs("mlflow", (PATCH_FROM,))
    targets_file = root / "targets.yaml"
    write_targets(targets_file, list(scenarios.values()), FLEET)
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
        kubelet = ProcessKubelet(kube_api, {helm.namespace(env): helm.env(env) for env in ENVS})
        airflow.start()
        try:
            kubelet.start()
            try:
                yield scenarios, airflow, kubelet
            finally:
                kubelet.stop()
        finally:
            airflow.stop()
            stop_all(*scenarios.values())


def trigger(airflow: DistributedAirflow, dag_id: str, **conf) -> str:
    unpause_when_parsed(airflow, dag_id)
    return airflow.call("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": {
        "target_version": NEW, "watch_seconds": 3, **conf}})["dag_run_id"]


def states(tis: list[dict]) -> dict[str, str]:
    return {ti["task_id"]: ti["state"] for ti in tis}


@pytest.fixture(scope="module")
def calm_runs(world):
    """The process, gate and drain scenarios prepared, their runs triggered together and followed
    together to their ends; per scenario what was there before and what the run left."""
    scenarios, airflow, _ = world
    before = {"process": prepare_process(scenarios["process"]), "gate": prepare_gate(scenarios["gate"], airflow),
              "drain": prepare_drain(scenarios["drain"], airflow),
              **{name: prepare_process(scenarios[name]) for name in ("watch_answers", "watch_down")}}
    stand_ins: list[http.server.HTTPServer] = []
    follows = {
        "process": Follow("airlock_upgrade__dist_process", "", answers={"uat.approval": "Approve"}),
        "watch_answers": Follow("airlock_upgrade__dist_watch_answers", "", answers={
            "uat.approval": "Approve", "conclude.rollback_decision": RollbackDecisionOperator.KEEP}, on={
            ("production_upgrade.watch", "deferred"): lambda: stand_ins.append(
                answer_503_instead(scenarios["watch_answers"].env("production")))}),
        "watch_down": Follow("airlock_upgrade__dist_watch_down", "", answers={"uat.approval": "Approve"}, on={
            ("production_upgrade.watch", "deferred"): lambda: before["watch_down"].update(
                written=write_then_crash(scenarios["watch_down"].env("production")))}),
        "gate": Follow("airlock_upgrade__dist_gate_timeout", "", on={("uat.approval", "awaiting_input"): lambda: (
            before["gate"]["bob_was_told"].append(answer_as_bob(airflow, follows["gate"].dag_id,
                                                                follows["gate"].run_id)))}),
        "drain": Follow("airlock_upgrade__dist_drain_timeout", "")}
    for name, follow in follows.items():
        follow.run_id = trigger(airflow, follow.dag_id, **({"watch_seconds": 120} if name.startswith("watch") else {}))
    try:
        finished = follow_runs(airflow, follows, timeout=2400)
    finally:
        for server in stand_ins:
            server.shutdown()
            server.server_close()
    return {name: {**before[name], "dag_id": follow.dag_id, "run_id": follow.run_id, "finished": finished[name],
                   "tis": task_instances(airflow, follow.dag_id, follow.run_id), "seen": follow.seen}
            for name, follow in follows.items()}


def prepare_process(scenario) -> dict:
    start_and_seed(scenario)
    return {"fingerprints": fingerprints(scenario)}


def test_a_process_targets_upgrade_runs_every_task_on_the_worker_of_its_queue(world, calm_runs):
    scenario, result = world[0]["process"], calm_runs["process"]
    tis = result["tis"]

    assert result["finished"]["state"] == "success", states(tis)
    assert served(scenario, "staging") == served(scenario, "production") == NEW
    assert fingerprints(scenario) == result["fingerprints"]
    # the new server's start was awaited in the triggerer, not in a worker slot
    assert {("staging_upgrade.start", "deferred"), ("production_upgrade.start", "deferred")} <= result["seen"]
    ran = {ti["task_id"]: ti["hostname"] for ti in tis if ti["state"] == "success" and ti["hostname"]}
    assert len(ran) > 20
    assert set(ran.values()) == {"worker-a"}, ran  # worker-b takes `default`, never the servers' queue
    assert {ti["queue"] for ti in tis if ti["task_id"] in ran} == {SERVERS_QUEUE}


def test_the_upgrades_page_shows_that_upgrade_to_a_logged_in_user_in_a_real_browser(world, calm_runs):
    """Headless chromium logs in through Airflow's login page and opens the plugin's page of the target
    the distributed Airflow just upgraded: its row, its timeline and the KPIs; nobody gets it anonymously."""
    scenario, airflow = world[0]["process"], world[1]
    result = calm_runs["process"]
    assert result["finished"]["state"] == "success"
    path = f"/airlock/upgrades/targets/{scenario.name}"
    with pytest.raises(ServerError, match="401"):
        request_text(airflow.api_url + path)
    password = json.loads((airflow.root / "passwords.json").read_text())["admin"]
    record = last_record(scenario)
    with browser_page() as page:
        log_in(page, airflow.api_url, "admin", password, path)
        row = page.locator("tr", has=page.locator(f'a:text-is("{result["run_id"]}")'))
        cells = row.locator("td").all_inner_texts()
        assert cells[1:6] == ["upgrade", f"{OLD} → {NEW}", "upgraded", "admin",
                              duration(record["production_downtime_seconds"])], cells
        phases = row.locator("svg.timeline rect.phase")
        assert phases.count() == len(record["phase_spans"]) >= 7  # preflight … conclude, each a bar
        assert row.locator("svg.timeline rect.downtime").count() == 1
        kpis = page.locator(f"#target-{scenario.name} .kpis").inner_text()
        assert f"median {duration(record['production_downtime_seconds'])}" in kpis
        assert "0% (0 of 1)" in kpis  # rollback rate: one production upgrade, not rolled back
        shot = airflow.root / "upgrades-page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert distinct_colours(shot) > 20, f"the screenshot {shot} is blank"
        row.locator("a").first.click()  # to the DAG run in Airflow's own UI
        page.wait_for_url(f"**/dags/{result['dag_id']}/runs/**")
        page.goto(f"{airflow.api_url}/plugin/airlock-upgrades")  # the navigation's entry: the page in a frame
        framed = page.frame_locator("iframe").locator(f"#target-{scenario.name}")
        assert result["run_id"] in framed.inner_text(timeout=30_000)


def test_production_upgrades_of_one_platform_take_turns_through_its_pool(world, calm_runs):
    """Two MLflow targets were approved at about the same time. Preflight created the pool
    airlock_mlflow (one slot, counting deferred tasks); each run held its slot (deferred) from before
    its production phase to after its last task, so their production phases did not overlap. A third
    target, which opted out (production_pool: none), took no slot."""
    _, airflow, _ = world
    pool = airflow.call("GET", "/pools/airlock_mlflow")
    assert (pool["slots"], pool["include_deferred"]) == (1, True)
    phases = {}
    assert "production_slot.hold" not in states(calm_runs["watch_answers"]["tis"])
    for name in ("process", "watch_down"):
        tis = {ti["task_id"]: ti for ti in calm_runs[name]["tis"]}
        hold = tis["production_slot.hold"]
        assert (hold["state"], hold["pool"]) == ("success", "airlock_mlflow"), hold
        assert ("production_slot.hold", "deferred") in calm_runs[name]["seen"]  # held in the triggerer
        production = [ti for task_id, ti in tis.items()
                      if task_id.startswith(("production_upgrade.", "conclude.")) and ti["start_date"]]
        phases[name] = (min(when(ti["start_date"]) for ti in production),
                        max(when(ti["end_date"]) for ti in production))
        assert when(hold["start_date"]) <= phases[name][0] and when(hold["end_date"]) >= phases[name][1], name
    for (first, (_, ended)), (second, (started, _)) in pairwise(sorted(phases.items(), key=lambda item: item[1])):
        assert ended <= started, f"the production phases of {first} and {second} overlapped: {phases}"


def test_a_pool_that_would_not_count_a_held_slot_is_refused_and_a_missing_one_created(world):
    _, airflow, _ = world
    api = AirflowApi(airflow.api_url, "admin", PLANTED["airflow_api"])
    airflow.call("POST", "/pools", {"name": "airlock_test_plain", "slots": 3, "include_deferred": False})
    with pytest.raises(ValueError, match="airlock_test_plain does not count deferred tasks"):
        ensure_pool(api, "airlock_test_plain", "mlflow")
    assert airflow.call("GET", "/pools/airlock_test_plain")["slots"] == 3  # an existing pool is never changed
    assert ensure_pool(api, "airlock_test_new", "zenml") == {"pool": "airlock_test_new", "slots": 1, "created": True}
    assert ensure_pool(api, "airlock_test_new", "zenml") == {"pool": "airlock_test_new", "slots": 1, "created": False}
    assert airflow.call("GET", "/pools/airlock_test_new")["include_deferred"] is True


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


class Unhealthy(http.server.BaseHTTPRequestHandler):
    """What answers on a broken server's port: every request gets a 503."""

    def do_GET(self):
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args):
        pass


def answer_503_instead(production) -> http.server.HTTPServer:
    """The new server crashes and something that answers 503 takes its port (a proxy before a dead pod)."""
    os.killpg(production.driver.running_pid(), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        try:
            server = http.server.HTTPServer((production.config.host, production.config.port), Unhealthy)
            break
        except OSError:  # the killed server's workers let go of the port
            assert time.monotonic() < deadline, "the crashed server's port never came free"
            time.sleep(0.05)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def write_then_crash(production) -> str:
    """A user logs a run on the new version, then the server crashes and stays down."""
    written = log_a_run(production.config.url)
    os.killpg(production.driver.running_pid(), signal.SIGKILL)
    return written


def test_a_watch_failing_while_the_server_answers_asks_on_call_under_the_real_triggerer(world, calm_runs):
    """The watch runs in the real triggerer; the server then answers 503 for good: a verdict, and since
    it answers, on-call is asked (Keep, here): nothing is restored, the marker stays for a later rollback."""
    scenarios, airflow, _ = world
    scenario, result = scenarios["watch_answers"], calm_runs["watch_answers"]
    tis = {ti["task_id"]: ti for ti in result["tis"]}
    decision = airflow.call("GET", f"/dags/{result['dag_id']}/dagRuns/{result['run_id']}/taskInstances/"
                                   "conclude.rollback_decision/-1/hitlDetails")

    assert result["finished"]["state"] == "failed", states(result["tis"])
    assert tis["production_upgrade.watch"]["state"] == "failed"
    assert decision["chosen_options"] == [RollbackDecisionOperator.KEEP] and decision["responded_by_user"], decision
    assert tis["conclude.keep_new_version"]["state"] == "success"
    assert tis["conclude.rollback_production"]["state"] == "skipped"
    production = scenario.env("production")
    assert production.store.in_progress()["run_id"] == result["run_id"]  # a rollback is one clear away
    assert last_record(scenario)["outcome"] == "kept_after_failed_watch"


def test_a_watch_whose_server_stays_down_rolls_back_alone_keeping_what_was_written(world, calm_runs):
    """The server crashes during the watch in the real triggerer and stays down: nobody is asked, the
    old version and the old data come back, and the run logged on the new version is in the kept set."""
    scenarios, _, _ = world
    scenario, result = scenarios["watch_down"], calm_runs["watch_down"]
    tis = states(result["tis"])

    assert result["finished"]["state"] == "failed", tis  # a rollback is never a green run
    assert result.get("written"), "the server was never written to and crashed"
    assert (tis["production_upgrade.watch"], tis["conclude.rollback_production"]) == ("failed", "success"), tis
    assert ("conclude.rollback_production", "deferred") in result["seen"]  # the old version's start, awaited
    # in the triggerer; the database was restored once (the rerun after the wait went on from the marker)
    assert tis["conclude.rollback_decision"] == "success", tis  # went straight on: nothing to ask
    assert served(scenario, "production") == OLD
    assert fingerprints(scenario)["production"] == result["fingerprints"]["production"]
    record = last_record(scenario)
    assert record["outcome"] == "rolled_back", record
    production = scenario.env("production")
    kept = next(b for b in production.store.backups() if "--post-upgrade--" in b)
    assert kept in record["detail"]
    assert read_manifest(production.store, kept).tables["runs"]["rows"] > \
        read_manifest(production.store, final_backup_of(production)).tables["runs"]["rows"]


def final_backup_of(production) -> str:
    return next(b for b in production.store.backups() if "--final--" in b)


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


def test_the_scheduler_starts_a_patch_run_that_finds_nothing_newer_and_ends_at_once(world):
    """Every minute, in UTC: the first scheduled run resolves the newest 2.16 patch from the release
    file, finds production on it, takes no backup and opens no gate, and says so in the log."""
    scenarios, airflow, _ = world
    scenario = scenarios["schedule"]
    for env in ENVS:
        scenario.env(env, login=False).driver.start(OLD)
    dag_id = "airlock_upgrade__dist_schedule"
    unpause_when_parsed(airflow, dag_id)
    try:  # paused only once the run is over: the scheduler does not go on with the runs of a paused DAG
        run = first_run(airflow, dag_id, timeout=240)
        finished = wait_for_state(airflow, dag_id, run["dag_run_id"], timeout=600)
    finally:
        airflow.call("PATCH", f"/dags/{dag_id}", {"is_paused": True})
    tis = states(task_instances(airflow, dag_id, run["dag_run_id"]))

    assert (run["run_type"], finished["state"]) == ("scheduled", "success"), tis
    assert tis["preflight.anything_to_do"] == "success"
    assert {state for task, state in tis.items() if task.startswith(("backup_and_prepare.", "uat."))} == {"skipped"}
    assert not list((scenario.root / "backups").rglob("manifest.json"))  # no backup taken
    record = next(r for r in upgrade_log.read(scenario.root / "backups") if r["run_id"] == run["dag_run_id"])
    assert (record["outcome"], record["trigger"]) == ("nothing_to_do", "schedule"), record
    assert served(scenario, "production") == OLD


def first_run(airflow: DistributedAirflow, dag_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = airflow.call("GET", f"/dags/{dag_id}/dagRuns")["dag_runs"]
        if runs:
            return min(runs, key=lambda run: run["run_after"])
        time.sleep(3)
    raise AssertionError(f"the scheduler started no run of {dag_id} within {timeout:.0f} s")


def test_a_fleet_stops_after_the_wave_with_a_rollback_and_names_the_target_not_started(world):
    """Three patch targets in waves of two: in the first wave, dist_fleet_b's server crashes during its
    watch and is rolled back; dist_fleet_a is upgraded; the second wave (dist_fleet_c) never starts."""
    scenarios, airflow, _ = world
    fleet = [scenarios[name] for name in ("fleet_a", "fleet_b", "fleet_c")]
    for scenario in fleet:
        start_and_seed(scenario)
        unpause_when_parsed(airflow, f"airlock_upgrade__{scenario.name}")
    unpause_when_parsed(airflow, "airlock_fleet__mlflow_fleet")
    run_id = airflow.call("POST", "/dags/airlock_fleet__mlflow_fleet/dagRuns", {"logical_date": None,
                                                                               "conf": {}})["dag_run_id"]
    crashed: list[str] = []
    victim = fleet[1].env("production")

    def crash_during_its_watch():
        def crash():
            child = f"fleet_mlflow_fleet__{run_id}"
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                try:
                    tis = states(task_instances(airflow, "airlock_upgrade__dist_fleet_b", child))
                except ServerError:  # not created yet
                    tis = {}
                if tis.get("production_upgrade.watch") == "deferred":
                    os.killpg(victim.driver.running_pid(), signal.SIGKILL)
                    crashed.append(child)
                    return
                time.sleep(1)
        threading.Thread(target=crash, daemon=True).start()

    finished = wait_for_state(airflow, "airlock_fleet__mlflow_fleet", run_id, timeout=1500,
                              on={("wave_1.dist_fleet_b", "deferred"): crash_during_its_watch})
    tis = states(task_instances(airflow, "airlock_fleet__mlflow_fleet", run_id))

    assert crashed, "dist_fleet_b's server was never crashed during its watch"
    assert finished["state"] == "failed", tis
    assert (tis["wave_1.dist_fleet_a"], tis["wave_1.dist_fleet_b"]) == ("success", "failed"), tis
    assert (tis["wave_2.pause"], tis["wave_2.dist_fleet_c"]) == ("upstream_failed", "upstream_failed"), tis
    assert tis["report"] == "failed", tis
    assert [served(s, "production") for s in fleet] == [PATCH_TO, PATCH_FROM, PATCH_FROM]
    assert last_record(fleet[0])["outcome"] == "upgraded"
    assert last_record(fleet[1])["outcome"] == "rolled_back"
    assert not (fleet[2].root / "backups" / "upgrade-log.jsonl").exists()  # never started
    assert airflow.call("GET", "/dags/airlock_upgrade__dist_fleet_c/dagRuns")["dag_runs"] == []


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


def prepare_gate(scenario, airflow: DistributedAirflow) -> dict:
    """Servers up, and the bad params refused before any run of the DAG exists."""
    start_and_seed(scenario)
    production = scenario.env("production")
    unpause_when_parsed(airflow, "airlock_upgrade__dist_gate_timeout")
    return {"production": production.adapter.fingerprint().digest, "pid": production.driver.running_pid(),
            "refused": refused_params(airflow, "airlock_upgrade__dist_gate_timeout"), "bob_was_told": []}


def test_nobody_answering_the_gate_rejects_under_the_real_scheduler(world, calm_runs):
    """`dag.test()` never enforces a gate's timeout; the scheduler does. Nobody answers: the gate takes
    its default (Reject) when the approval timeout passes, production is never touched, and the log
    says nobody answered. On the way: bad params are refused by the API server before any run exists,
    a non-approver is refused at the gate (403), and a downgrade by the first task that reads versions."""
    scenarios, airflow, _ = world
    scenario, result = scenarios["gate"], calm_runs["gate"]
    production, dag_id, run_id = scenario.env("production"), result["dag_id"], result["run_id"]
    tis = states(result["tis"])
    gate = airflow.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/uat.approval/-1/hitlDetails")
    staging_pid = scenario.env("staging").driver.running_pid()
    downgrade = trigger(airflow, dag_id, target_version="1.0.0")  # well-formed; refused by preflight.plan
    downgrade_state = wait_for_state(airflow, dag_id, downgrade, timeout=600)["state"]
    downgrade_tis = states(task_instances(airflow, dag_id, downgrade))
    plan_log = json.dumps(airflow.call(
        "GET", f"/dags/{dag_id}/dagRuns/{downgrade}/taskInstances/preflight.plan/logs/1?full_content=true"))

    assert result["refused"] == []
    assert len(result["bob_was_told"]) == 1 and "HTTP 403" in result["bob_was_told"][0], result["bob_was_told"]
    assert result["finished"]["state"] == "failed", tis
    assert tis["staging_upgrade.finish_staging"] == "success", tis
    assert gate["chosen_options"] == ["Reject"] and not gate.get("responded_by_user"), gate
    assert all(tis[t] == "skipped" for t in tis if t.startswith("production_upgrade.")), tis
    assert production.adapter.server_version() == OLD and production.driver.running_pid() == result["pid"]
    assert production.adapter.fingerprint().digest == result["production"]
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


def prepare_drain(scenario, airflow: DistributedAirflow) -> dict:
    """Servers up and a training run going on staging that outlives the drain timeout."""
    start_and_seed(scenario)
    staging = scenario.env("staging")
    prepared = {"pid": staging.driver.running_pid(), "fingerprints": fingerprints(scenario),
                "training": start_training_run(scenario)}
    unpause_when_parsed(airflow, TEAM_DAG)
    return prepared


def test_nobody_answering_the_drain_decision_aborts_under_the_real_scheduler(world, calm_runs):
    """A training run outlives the drain timeout; nobody answers the drain decision within its
    timeout: the scheduler takes the default (abort). Nothing is stopped, the run on staging goes on,
    and the team's DAG, paused on one worker, is unpaused (from the record in Airflow) on either."""
    scenarios, airflow, _ = world
    scenario, result = scenarios["drain"], calm_runs["drain"]
    staging, tis = scenario.env("staging"), states(result["tis"])
    decision = airflow.call("GET", f"/dags/{result['dag_id']}/dagRuns/{result['run_id']}/taskInstances/"
                                   "staging_upgrade.drain_decision/-1/hitlDetails")

    assert result["finished"]["state"] == "failed", tis
    assert decision["chosen_options"] == ["Abort"] and not decision.get("responded_by_user"), decision
    assert tis["staging_upgrade.stop"] == "skipped", tis
    assert staging.driver.running_pid() == result["pid"] and served(scenario, "staging") == OLD
    assert run_status(scenario, result["training"]) == "RUNNING"
    assert fingerprints(scenario)["production"] == result["fingerprints"]["production"]
    assert tis["staging_upgrade.unpause_dags_staging"] == "success", tis
    assert airflow.call("GET", f"/dags/{TEAM_DAG}")["is_paused"] is False
    assert last_record(scenario)["outcome"] == "aborted"
