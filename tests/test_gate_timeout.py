"""The approval gate under a real scheduler and triggerer (`airflow standalone`): `dag.test()` never
enforces a gate's timeout, the scheduler does. Nobody answers: the gate takes its default (Reject)
when the target's approval timeout passes, production is never touched, and the log says nobody
answered. The drain's deferrable wait runs in the real triggerer on the way there."""

from __future__ import annotations

import contextlib
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


def test_nobody_answering_the_gate_rejects_under_the_real_scheduler(world):
    from airlock.demo.run import AirflowApi, start_airflow, stop_airflow, wait_for_dag

    _, envs, root = world
    production = envs["production"]
    before, pid = production.adapter.fingerprint().digest, production.driver.running_pid()
    airflow = start_airflow(root / "airflow-home", AIRFLOW_PORT)
    try:
        api = AirflowApi(root / "airflow-home", AIRFLOW_PORT)
        wait_for_dag(api, DAG_ID)
        run_id = api.call("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {
            "target_version": NEW, "watch_seconds": 3}})["dag_run_id"]
        deadline, state = time.monotonic() + 900, None
        while time.monotonic() < deadline:
            with contextlib.suppress(ServerError):  # the API server may be busy for a moment
                state = api.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                break
            time.sleep(5)
        tis = {ti["task_id"]: ti["state"] for ti in api.call(
            "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]}
        gate = api.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/uat.approval/-1/hitlDetails")
    finally:
        stop_airflow(airflow)

    assert state == "failed", tis
    assert tis["staging_upgrade.finish_staging"] == "success", tis
    assert gate["chosen_options"] == ["Reject"] and not gate.get("responded_by_user"), gate
    assert all(tis[t] == "skipped" for t in tis if t.startswith("production_upgrade.")), tis
    assert production.adapter.server_version() == OLD and production.driver.running_pid() == pid
    assert production.adapter.fingerprint().digest == before
    assert envs["staging"].adapter.server_version() == NEW
    record = upgrade_log.read(root / "backups")[-1]
    assert record["outcome"] == "rejected"
    assert "nobody (no answer before the timeout)" in record["detail"]
