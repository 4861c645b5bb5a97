"""Guards that stop an upgrade before anything is touched, on real files, processes and ports."""

from __future__ import annotations

import http.server
import threading

import pytest
from airlock.backups import backup_id_for
from airlock.config import load_targets
from airlock.drivers.process import DriverError
from airlock.environment import open_environment
from airlock.steps import UpgradeError, final_backup, freeze, validate
from airlock.versions import PlanError
from airlock.waits import run_waits


@pytest.fixture
def demo(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRLOCK_DATA_DIR", str(tmp_path))
    target = load_targets()["mlflow_demo"]
    return target, [open_environment(target, name) for name in ("staging", "production")]


def test_validate_refuses_while_another_run_left_an_environment_half_upgraded(demo):
    target, envs = demo
    envs[1].store.mark_in_progress({"run_id": "manual__earlier", "from_version": "2.16.2", "to_version": "3.17.2"})
    with pytest.raises(UpgradeError) as error:
        validate(target, envs, {"target_version": "3.17.2"}, "manual__now")
    message = str(error.value)
    assert "production of mlflow_demo has an unfinished upgrade from run manual__earlier" in message
    assert str(envs[1].store.marker_path()) in message
    # the run that owns the marker may go on (a retry or a cleared task)
    assert validate(target, envs, {"target_version": "3.17.2"}, "manual__earlier")["requested"] == "3.17.2"


@pytest.mark.parametrize("bad", ["", "3.17", "latest"])
def test_validate_rejects_bad_target_versions(demo, bad):
    target, envs = demo
    with pytest.raises(PlanError, match="target_version"):
        validate(target, envs, {"target_version": bad}, "manual__now")


def test_a_server_is_never_stopped_without_a_verified_backup(demo):
    _, envs = demo
    plan = {"staging": {"change": "major", "current": "2.16.2", "target": "3.17.2"}}
    with pytest.raises(UpgradeError, match=f"its backup {backup_id_for('staging', 'prepare', 'r1')} is not verified"):
        run_waits(freeze(envs[0], "r1", plan))
    assert envs[0].store.in_progress() is None


def test_driver_refuses_a_port_it_does_not_own(demo):
    _, envs = demo
    env = envs[0]
    server = http.server.HTTPServer((env.config.host, env.config.port), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(DriverError, match=r"something that Airlock did not start answers on 127\.0\.0\.1:5011"):
            env.driver.start("2.16.2")
        with pytest.raises(DriverError, match="refusing to go on as if it were stopped"):
            env.driver.stop()
    finally:
        server.shutdown()
        server.server_close()
    assert env.driver.stop() == {"stopped": False, "reason": "not running"}


def test_final_backup_is_never_retaken_once_the_migration_has_started(demo):
    _, envs = demo
    env = envs[0]
    env.store.mark_in_progress({"run_id": "r1", "from_version": "2.16.2", "prepare_backup_id": "staging--prepare--r1",
                                "migration_started": True})
    with pytest.raises(UpgradeError, match="refusing to back up staging again: its migration has started"):
        final_backup(env, "r1")
    assert env.store.backups() == []  # nothing was dumped from the migrated database


def test_validate_refuses_two_connections_that_reach_one_database(tmp_path, monkeypatch):
    """Two conn_ids (one spelling the host localhost, one 127.0.0.1) name the same database: the file
    loads (connections are not read at parse time) but the run stops before anything is touched."""
    from test_config import GOOD, SECOND, write

    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_PROD_DB", "mysql://u:p@localhost/")
    monkeypatch.setenv("AIRFLOW_CONN_B_DB", "mysql://u:p@127.0.0.1:3306/")
    path = write(tmp_path, GOOD + SECOND.replace("database: mlflow_b", "database: mlflow"))
    targets = load_targets(path)
    target = targets["team_b"]
    with pytest.raises(UpgradeError) as error:
        validate(target, [], {"target_version": "3.17.2"}, "r1", list(targets.values()))
    assert ("team_b.production and team_a.production both reach mlflow on loopback:3306" in str(error.value)
            and "Nothing was touched" in str(error.value))
    monkeypatch.setenv("AIRFLOW_CONN_B_DB", "mysql://u:p@127.0.0.1:3307/")
    assert validate(target, [], {"target_version": "3.17.2"}, "r1", list(targets.values()))["target"] == "team_b"
