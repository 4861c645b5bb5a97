"""The upgrade DAG end to end on real ZenML 0.90.0 → 0.98.0 servers on MariaDB.

The servers' data is written by the 0.90 client the way a team does it: a stack of its own, real
pipeline runs with artifacts and a model, a schedule. The gates are answered through Airflow's
REST endpoint.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from airlock.triggers import drain_check
from harness import (
    CONN_ID,
    PLATFORMS,
    crash_server_while,
    fingerprints,
    last_record,
    make_scenario,
    run_upgrade,
    served,
    start_and_seed,
    stop_all,
    task_states,
    write_targets,
    xcom,
)
from services import connection_uri_for_airflow

pytestmark = pytest.mark.integration
OLD, NEW = PLATFORMS["zenml"].old, PLATFORMS["zenml"].new


@pytest.fixture(scope="module")
def world(tmp_path_factory, airflow_db, zenml_venvs):
    root = tmp_path_factory.mktemp("zenml")
    scenarios = {name: make_scenario(name, root, port, port + 1, "zenml", auth="token")
                 for name, port in (("zenml_happy", 5200), ("zenml_crash", 5202))}
    targets_file = root / "targets.yaml"
    write_targets(targets_file, list(scenarios.values()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRLOCK_TARGETS_FILE", str(targets_file))
        patch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", connection_uri_for_airflow())
        yield scenarios, targets_file
        stop_all(*scenarios.values())


def test_zenml_upgrade_keeps_stacks_runs_artifacts_and_models(world):
    scenarios, targets_file = world
    s = scenarios["zenml_happy"]
    start_and_seed(s)
    before = fingerprints(s)
    counts = s.env("production").adapter.fingerprint().counts
    assert counts == {"stacks": 1, "components": 1, "pipelines": 1, "runs": 2, "artifact_versions": 6,
                      "models": 1, "model_versions": 2}

    run, gates = run_upgrade("airlock_upgrade__zenml_happy", targets_file, {"target_version": NEW, "watch_seconds": 3})

    states = task_states(run)
    assert str(run.state) == "success", states
    assert gates.response["status"] == 200, gates.response
    assert served(s, "staging") == served(s, "production") == NEW
    assert fingerprints(s) == before
    # The verified backup was taken before the new version first started (it migrates at start).
    backup, started = xcom(run, "production_upgrade.backup"), xcom(run, "production_upgrade.start")
    assert backup["verified"] and backup["_finished_at"] <= started["_started_at"]
    # The 0.98 client loaded the newest artifacts from upgraded staging.
    artifacts = xcom(run, "staging_upgrade.artifacts")
    assert (artifacts["client_version"], artifacts["checked"], artifacts["failed"]) == (NEW, 5, [])
    assert "zenml clients: exactly the server's version" in gates.body
    assert f"5 of the 5 most recent artifacts load with the {NEW} client" in gates.body
    # ZenML's own follow-up: the schedule built with 0.90 is listed for rebuilding.
    follow_ups = xcom(run, "conclude.follow_ups")
    assert [item["name"] for item in follow_ups["to_rebuild"]] == ["nightly-training"]
    assert f"zenml=={NEW}" in follow_ups["action"]
    assert last_record(s)["outcome"] == "upgraded"


def test_zenml_crash_after_upgrade_brings_back_the_090_server_and_its_data(world):
    scenarios, targets_file = world
    s = scenarios["zenml_crash"]
    start_and_seed(s)
    before = fingerprints(s)
    production = s.env("production")
    tables = s.databases["production"].table_stats()
    crashed = crash_server_while("airlock_upgrade__zenml_crash", "production_upgrade.watch",
                                 production.driver.running_pid)

    run, _ = run_upgrade("airlock_upgrade__zenml_crash", targets_file, {"target_version": NEW, "watch_seconds": 60})

    states = task_states(run)
    assert crashed, "the production server was never crashed"
    assert states["production_upgrade.migrate"] == "success", states
    assert states["conclude.rollback_production"] == "success", states
    assert str(run.state) == "failed"
    assert served(s, "production") == OLD
    # The 0.98 schema is gone: every table as before. The running 0.90 server rewrites two tables itself
    # (server_settings: last_user_activity on every request; api_key: last_login on every login), so
    # only their row counts are compared.
    after = s.databases["production"].table_stats()
    assert after.keys() == tables.keys()
    self_written = production.adapter.self_written_tables
    assert set(self_written) == {"server_settings", "api_key"}
    assert {t: v for t, v in after.items() if t not in self_written} == \
        {t: v for t, v in tables.items() if t not in self_written}
    assert all(after[t]["rows"] == tables[t]["rows"] for t in self_written)
    assert fingerprints(s)["production"] == before["production"]
    assert s.env("production").adapter.fingerprint().counts["runs"] == 2
    assert served(s, "staging") == NEW
    assert last_record(s)["outcome"] == "rolled_back"


def test_drain_sees_a_running_zenml_pipeline_until_it_is_gone(world, tmp_path):
    scenarios, _ = world
    env = scenarios["zenml_happy"].env("staging")
    if not env.adapter.is_healthy():  # run on its own, without the upgrade test before it
        start_and_seed(scenarios["zenml_happy"])
    python = env.driver.venv_path(env.adapter.server_version()) / "bin" / "python"

    def run_state(*args: str) -> str:
        script = Path(__file__).with_name("zenml_run_state.py")
        result = subprocess.run([str(python), str(script), *args], capture_output=True, text=True, cwd=tmp_path,
                                env={**os.environ, **env.adapter.client_env(str(tmp_path)),
                                     **env.adapter.credential_env()})
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""

    run_id = run_state("start")
    login = {"auth_conn_id": env.config.auth_conn_id, "environment": "staging"}
    check = drain_check("zenml", env.config.url, stale_after_minutes=60, **login)
    assert check["done"] is False
    assert [run["description"].split(" ")[1] for run in check["runs"]] == [run_id]
    assert "pipeline 'training' (running)" in check["runs"][0]["description"]
    run_state("remove", run_id)
    assert drain_check("zenml", env.config.url, stale_after_minutes=60, **login)["done"] is True
