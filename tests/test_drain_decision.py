"""The drain asks on-call when runs outlive its timeout: wait longer, proceed anyway, or abort.

Real MLflow servers on MariaDB, a training run left RUNNING on staging, the decision answered
through Airflow's REST endpoint. The teams' DAG `team_training` is paused for staging's upgrade
window through a real Airflow API server, and unpaused after it, whatever the outcome.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from airlock.http import request_json
from conftest import unavailable
from harness import (
    CONN_ID,
    NEW,
    OLD,
    TEAM_DAG_FILE,
    fingerprints,
    last_record,
    make_scenario,
    run_status,
    run_upgrade,
    served,
    start_and_seed,
    start_training_run,
    stop_all,
    task_state,
    task_states,
    write_targets,
    xcom,
)
from leaks import PLANTED
from services import connection_uri_for_airflow, free_port

pytestmark = pytest.mark.integration
TEAM_DAG = "team_training"
PAUSED_BY_ITS_TEAM = "team_backfill"
API_CONN = "airlock_test_airflow_api"
CONF = {"target_version": NEW, "watch_seconds": 3, "drain_timeout_minutes": 0.1}
RUNS_FAIL_NOTE = "In-progress runs fail when the server is upgraded (the platform team's own note)."



@pytest.fixture(scope="module")
def airflow_api(airflow_db, tmp_path_factory):
    """`airflow api-server` on the test session's metadata DB, with a team DAG to pause."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.utils.session import create_session

    folder = tmp_path_factory.mktemp("team_dags")
    (folder / "team_training.py").write_text(TEAM_DAG_FILE)
    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
    sync_bag_to_db(BundleDagBag(dag_folder=str(folder), bundle_path=str(folder), bundle_name="dags-folder"),
                   "dags-folder", None)
    set_team_dag_paused(False)  # new DAGs start paused; the team's is running (team_backfill stays paused)
    port = free_port()
    log = open(folder / "api-server.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen([str(Path(sys.executable).parent / "airflow"), "api-server", "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/api/v2/monitor/health", 90)
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)
        unavailable(f"airflow api-server did not answer on {url} within 90 s; see {folder / 'api-server.log'}")
    yield url
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)
    log.close()


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(url)


def set_team_dag_paused(paused: bool) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        session.get(DagModel, TEAM_DAG).is_paused = paused


def team_dag_paused(dag_id: str = TEAM_DAG) -> bool:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return bool(session.get(DagModel, dag_id).is_paused)


@pytest.fixture(scope="module")
def world(tmp_path_factory, mlflow_venvs, airflow_api):
    root = tmp_path_factory.mktemp("drain")
    settings = {"environment_settings": {"staging": {"pause_dags": [TEAM_DAG, PAUSED_BY_ITS_TEAM]}},
                "settings": {"drain": {"timeout_minutes": 0.1, "poll_interval_seconds": 1,
                                       "airflow_api_conn_id": API_CONN}}}
    scenarios = {name: make_scenario(name, root, port, port + 1, **settings)
                 for name, port in (("drain_abort", 5130), ("drain_wait", 5132), ("drain_proceed", 5134))}
    scenarios["drain_notes"] = make_scenario("drain_notes", root, 5136, 5137, environment_settings={}, settings={
        **settings["settings"], "release_notes": [{"version": NEW, "note": RUNS_FAIL_NOTE, "runs_fail": True}]})
    targets_file = root / "targets.yaml"
    write_targets(targets_file, list(scenarios.values()))
    api_port = int(airflow_api.rsplit(":", 1)[1])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRLOCK_TARGETS_FILE", str(targets_file))
        patch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", connection_uri_for_airflow())
        patch.setenv(f"AIRFLOW_CONN_{API_CONN.upper()}", json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": api_port, "login": "admin",
             "password": PLANTED["airflow_api"]}))
        yield scenarios, targets_file
        stop_all(*scenarios.values())


def watch_pause(dag_id: str, task_id: str) -> list[bool]:
    """Whether the team DAG was paused while `task_id` was running (sampled)."""
    seen: list[bool] = []

    def sample():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not seen:
            if task_state(dag_id, task_id) in ("running", "deferred", "awaiting_input"):
                seen.append(team_dag_paused())
            time.sleep(0.3)

    threading.Thread(target=sample, daemon=True).start()
    return seen


def test_abort_leaves_the_server_and_its_run_alone_and_unpauses_the_team_dag(world):
    scenarios, targets_file = world
    s = scenarios["drain_abort"]
    start_and_seed(s)
    training = start_training_run(s)
    before, pids = fingerprints(s), {env: s.env(env).driver.running_pid() for env in ("staging", "production")}
    paused_while_asking = watch_pause("airlock_upgrade__drain_abort", "staging_upgrade.drain_decision")

    run, gates = run_upgrade("airlock_upgrade__drain_abort", targets_file, CONF, answer=None,
                             answers={"staging_upgrade.drain_decision": "Abort"})

    states = task_states(run)
    assert gates.responses["staging_upgrade.drain_decision"]["status"] == 200
    assert "nightly-retrain" in gates.bodies["staging_upgrade.drain_decision"]  # on-call sees the run
    assert states["staging_upgrade.abort"] == "failed", states
    assert states["staging_upgrade.stop"] == "skipped", states
    assert str(run.state) == "failed"
    assert {env: s.env(env).driver.running_pid() for env in pids} == pids  # nothing was stopped
    assert run_status(s, training) == "RUNNING"
    assert served(s, "staging") == served(s, "production") == OLD
    assert fingerprints(s) == before
    record = last_record(s)
    assert record["outcome"] == "aborted" and "production untouched" in record["detail"]
    assert paused_while_asking == [True]
    assert team_dag_paused() is False  # unpaused although the upgrade failed


def test_wait_longer_waits_for_the_run_then_upgrades(world):
    scenarios, targets_file = world
    s = scenarios["drain_wait"]
    start_and_seed(s)
    training = start_training_run(s)
    finished_at: list[str] = []

    def finish_once_waiting_longer():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and task_state("airlock_upgrade__drain_wait",
                                                         "staging_upgrade.wait_longer") is None:
            time.sleep(0.5)
        time.sleep(3)
        url = s.env("staging").config.url
        request_json("POST", f"{url}/api/2.0/mlflow/runs/update",
                     {"run_id": training, "status": "FINISHED", "end_time": int(time.time() * 1000)})
        finished_at.append(time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()))

    threading.Thread(target=finish_once_waiting_longer, daemon=True).start()
    run, gates = run_upgrade("airlock_upgrade__drain_wait", targets_file, CONF, answer="Reject",
                             answers={"staging_upgrade.drain_decision": "Wait longer"})

    states = task_states(run)
    assert gates.responses["staging_upgrade.drain_decision"]["status"] == 200
    assert states["staging_upgrade.wait_longer"] == "success", states
    assert states["staging_upgrade.proceed"] == states["staging_upgrade.abort"] == "skipped", states
    assert finished_at and xcom(run, "staging_upgrade.stop")["_started_at"] >= finished_at[0]
    assert run_status(s, training) == "FINISHED"  # nobody's run was cut short
    assert served(s, "staging") == NEW
    assert served(s, "production") == OLD  # rejected at the gate
    assert last_record(s)["outcome"] == "rejected"
    assert team_dag_paused() is False


def test_proceed_anyway_names_the_interrupted_run_and_upgrades(world):
    scenarios, targets_file = world
    s = scenarios["drain_proceed"]
    start_and_seed(s)
    training = start_training_run(s)
    paused_during_upgrade = watch_pause("airlock_upgrade__drain_proceed", "staging_upgrade.migrate")

    run, gates = run_upgrade("airlock_upgrade__drain_proceed", targets_file, CONF, answer="Reject",
                             answers={"staging_upgrade.drain_decision": "Proceed anyway"})

    states = task_states(run)
    assert gates.responses["staging_upgrade.drain_decision"]["status"] == 200
    assert states["staging_upgrade.wait_longer"] == states["staging_upgrade.abort"] == "skipped", states
    proceeded = xcom(run, "staging_upgrade.proceed")
    assert len(proceeded["interrupted_runs"]) == 1 and training in proceeded["interrupted_runs"][0]
    assert proceeded["decided_by"] not in ("drained", "")
    assert served(s, "staging") == NEW
    assert paused_during_upgrade == [True]
    paused = xcom(run, "staging_upgrade.pause_dags_staging")
    assert (paused["paused"], paused["already_paused_left_alone"]) == ([TEAM_DAG], [PAUSED_BY_ITS_TEAM])
    assert xcom(run, "staging_upgrade.unpause_dags_staging")["unpaused"] == [TEAM_DAG]
    assert team_dag_paused() is False
    assert team_dag_paused(PAUSED_BY_ITS_TEAM) is True  # its team paused it: Airlock leaves it paused
    assert last_record(s)["outcome"] == "rejected"


def test_a_hop_whose_notes_say_runs_fail_cannot_proceed_past_running_runs(world):
    """The target's breaking note (runs_fail) for the release crossed: the drain decision offers
    only Wait longer and Abort, says why, and the API refuses Proceed anyway."""
    scenarios, targets_file = world
    s = scenarios["drain_notes"]
    start_and_seed(s)
    training = start_training_run(s)
    before = fingerprints(s)

    run, gates = run_upgrade("airlock_upgrade__drain_notes", targets_file, CONF, answer=None,
                             answers={"staging_upgrade.drain_decision": ["Proceed anyway", "Abort"]})

    assert gates.options["staging_upgrade.drain_decision"] == ["Wait longer", "Abort"]
    (refused, refused_status), taken = gates.tried["staging_upgrade.drain_decision"]
    assert (refused, taken) == ("Proceed anyway", ("Abort", 200)) and refused_status >= 400
    body = gates.bodies["staging_upgrade.drain_decision"]
    assert f"**Proceed anyway is not offered** for this hop: {NEW}: in-progress runs fail" in body
    plan = xcom(run, "preflight.plan")["release_notes"]
    assert plan["breaking"][-1]["note"] == RUNS_FAIL_NOTE and plan["drain_required"].startswith(f"{NEW}: ")
    assert task_states(run)["staging_upgrade.proceed"] == "skipped"
    assert run_status(s, training) == "RUNNING"  # nobody's run was cut short
    assert served(s, "staging") == served(s, "production") == OLD and fingerprints(s) == before
