"""The approval gate under a real scheduler and triggerer (`airflow standalone`): `dag.test()` never
enforces a gate's timeout, the scheduler does. Nobody answers: the gate takes its default (Reject)
when the target's approval timeout passes, production is never touched, and the log says nobody
answered. The drain's deferrable wait runs in the real triggerer on the way there. On the same
Airflow: a second real user who is not an approver is refused (403), and bad trigger params are
refused by the API server before any run exists, or by the first task before any server is touched."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
import yaml
from airlock import upgrade_log
from airlock.config import load_target
from airlock.demo import SEED_MLFLOW
from airlock.environment import open_environment
from airlock.http import ServerError

pytestmark = pytest.mark.integration
OLD, NEW = "2.16.2", "3.17.2"
DAG_ID = "airlock_upgrade__gate_timeout"
AIRFLOW_PORT = 8095


@pytest.fixture
def world(tmp_path, mlflow_venvs, monkeypatch):
    import subprocess

    envs = {name: {"url": f"http://127.0.0.1:{port}",
                   "driver": {"kind": "process", "state_dir": str(tmp_path / name)},
                   "database": {"kind": "sqlite", "path": str(tmp_path / name / "mlflow.db")}}
            for name, port in (("staging", 5241), ("production", 5242))}
    targets = tmp_path / "targets.yaml"
    targets.write_text(yaml.safe_dump({"targets": {"gate_timeout": {
        "platform": "mlflow", "approvers": ["admin"], "upgrade": {"allow_minor_skips": True},
        "approval": {"timeout_minutes": 1}, "backup": {"location": str(tmp_path / "backups")},
        "drain": {"timeout_minutes": 5, "poll_interval_seconds": 2}, "compatibility": {"recent_artifacts": 0},
        "environments": envs}}}))
    monkeypatch.setenv("AIRLOCK_TARGETS_FILE", str(targets))
    monkeypatch.delenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", raising=False)  # real logins
    target = load_target("gate_timeout", targets)
    started = [open_environment(target, name) for name in ("staging", "production")]
    for env in started:
        env.driver.start(OLD)
        subprocess.run([str(env.driver.venv_path(OLD) / "bin" / "python"), str(SEED_MLFLOW), env.config.url],
                       check=True, capture_output=True)
    yield target, {env.name: env for env in started}, tmp_path
    for env in started:
        env.driver.stop()


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


def refused_params(api) -> list[str]:
    """Every bad conf is refused with 400 by the API server, naming the param; no run is created."""
    problems = []
    for conf, param in BAD_PARAMS:
        try:
            api.call("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
            problems.append(f"{conf!r:.80} was accepted")
        except ServerError as error:
            if "HTTP 400" not in str(error) or param not in str(error):
                problems.append(f"{conf!r:.80}: {error}")
    runs = api.call("GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"]
    return problems + [f"a run exists: {run['dag_run_id']}" for run in runs]


def follow(api, run_id: str, on_gate=None) -> str:
    deadline, state, gate_seen = time.monotonic() + 900, None, False
    while time.monotonic() < deadline:
        with contextlib.suppress(ServerError):  # the API server may be busy for a moment
            state = api.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
            if on_gate and not gate_seen and api.call(
                    "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/uat.approval")["state"] == "awaiting_input":
                gate_seen = True
                on_gate()
        if state in ("success", "failed"):
            return state
        time.sleep(3)
    return state


def answer_as(api, run_id: str) -> str:
    """What the API says to `api`'s user trying to approve."""
    try:
        api.call("PATCH", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/uat.approval/-1/hitlDetails",
                 {"chosen_options": ["Approve"], "params_input": {}})
        return "accepted"
    except ServerError as error:
        return str(error)


def test_nobody_answering_the_gate_rejects_under_the_real_scheduler(world):
    from airlock.demo.run import AirflowApi, start_airflow, stop_airflow, wait_for_dag

    _, envs, root = world
    production = envs["production"]
    before, pid = production.adapter.fingerprint().digest, production.driver.running_pid()
    airflow = start_airflow(root / "airflow-home", AIRFLOW_PORT, users="admin:admin,bob:admin")
    bob_was_told = []
    try:
        api = AirflowApi(root / "airflow-home", AIRFLOW_PORT)
        bob = AirflowApi(root / "airflow-home", AIRFLOW_PORT, user="bob")  # an admin, but not an approver
        wait_for_dag(api, DAG_ID)
        refused = refused_params(api)
        run_id = api.call("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {
            "target_version": NEW, "watch_seconds": 3}})["dag_run_id"]
        state = follow(api, run_id, on_gate=lambda: bob_was_told.append(answer_as(bob, run_id)))
        tis = {ti["task_id"]: ti["state"] for ti in api.call(
            "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]}
        gate = api.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/uat.approval/-1/hitlDetails")
        staging_pid = envs["staging"].driver.running_pid()
        downgrade = api.call("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {
            "target_version": "1.0.0"}})["dag_run_id"]  # well-formed, refused by the first task that reads versions
        downgrade_state = follow(api, downgrade)
        downgrade_tis = {ti["task_id"]: ti["state"] for ti in api.call(
            "GET", f"/dags/{DAG_ID}/dagRuns/{downgrade}/taskInstances?limit=100")["task_instances"]}
        plan_log = json.dumps(api.call(
            "GET", f"/dags/{DAG_ID}/dagRuns/{downgrade}/taskInstances/preflight.plan/logs/1?full_content=true"))
    finally:
        stop_airflow(airflow)

    assert refused == []
    assert len(bob_was_told) == 1 and "HTTP 403" in bob_was_told[0], bob_was_told
    assert downgrade_state == "failed", downgrade_tis
    assert downgrade_tis["preflight.plan"] == "failed", downgrade_tis
    touching = ("backup_and_prepare", "compatibility", "staging_upgrade", "production_upgrade")
    assert not [t for t, s in downgrade_tis.items() if s == "success" and t.split(".")[0] in touching
                and t != "staging_upgrade.rollback_staging"], downgrade_tis  # which finds nothing to roll back
    assert envs["staging"].driver.running_pid() == staging_pid
    assert "downgrades are refused" in plan_log, plan_log[-2000:]
    assert state == "failed", tis
    assert tis["staging_upgrade.finish_staging"] == "success", tis
    assert gate["chosen_options"] == ["Reject"] and not gate.get("responded_by_user"), gate
    assert all(tis[t] == "skipped" for t in tis if t.startswith("production_upgrade.")), tis
    assert production.adapter.server_version() == OLD and production.driver.running_pid() == pid
    assert production.adapter.fingerprint().digest == before
    assert envs["staging"].adapter.server_version() == NEW
    record = next(r for r in upgrade_log.read(root / "backups") if r["run_id"] == run_id)
    assert record["outcome"] == "rejected"
    assert "nobody (no answer before the timeout)" in record["detail"]
