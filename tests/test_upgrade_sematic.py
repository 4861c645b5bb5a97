"""The upgrade DAG end to end on real Sematic 0.39.1 → 0.41.0 servers on SQLite."""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from airlock.triggers import drain_check
from harness import (
    PLATFORMS,
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

pytestmark = pytest.mark.integration
OLD, NEW = PLATFORMS["sematic"].old, PLATFORMS["sematic"].new


@pytest.fixture(scope="module")
def world(tmp_path_factory, airflow_db, sematic_venvs):
    root = tmp_path_factory.mktemp("sematic")
    scenario = make_scenario("sematic_happy", root, 5210, 5211, "sematic", auth="token")
    targets_file = root / "targets.yaml"
    write_targets(targets_file, [scenario])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRLOCK_TARGETS_FILE", str(targets_file))
        yield scenario, targets_file
        stop_all(scenario)


def test_sematic_upgrade_on_sqlite_keeps_runs_and_artifacts(world):
    s, targets_file = world
    start_and_seed(s)
    before = fingerprints(s)
    assert s.env("production").adapter.fingerprint().counts == {"runs": 6, "artifacts": 6, "notes": 0}

    run, gates = run_upgrade("airlock_upgrade__sematic_happy", targets_file,
                             {"target_version": NEW, "watch_seconds": 3})

    states = task_states(run)
    assert str(run.state) == "success", states
    assert gates.response["status"] == 200
    assert served(s, "staging") == served(s, "production") == NEW
    assert fingerprints(s) == before  # the smoke test's note was written, read back and deleted
    assert xcom(run, "production_upgrade.smoke")["created_and_deleted"] is True
    artifacts = xcom(run, "staging_upgrade.artifacts")
    assert (artifacts["client_version"], artifacts["checked"], artifacts["failed"]) == (NEW, 5, [])
    clients = xcom(run, "compatibility.client_compatibility")
    assert clients["old_clients"] == f"sematic {OLD} clients keep working"  # older, and inside the window
    record = last_record(s)
    assert (record["outcome"], record["from"], record["to"]) == ("upgraded", OLD, NEW)


def test_drain_sees_a_sematic_pipeline_until_it_resolves(world, tmp_path):
    s, _ = world
    env = s.env("staging")
    if not env.adapter.is_healthy():  # run on its own, without the upgrade test before it
        start_and_seed(s)
    python = env.driver.venv_path(env.adapter.server_version()) / "bin" / "python"
    release = tmp_path / "release"
    pipeline = subprocess.Popen([str(python), str(Path(__file__).with_name("sematic_slow_pipeline.py")),
                                 str(release)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, **env.adapter.client_env(str(tmp_path)),
                                     **env.adapter.credential_env()})
    login = {"auth_conn_id": env.config.auth_conn_id, "environment": "staging"}
    try:
        deadline, check = time.monotonic() + 60, {"done": True}
        while check["done"] and time.monotonic() < deadline:
            time.sleep(0.5)
            check = drain_check("sematic", env.config.url, stale_after_minutes=60, **login)
        assert check["done"] is False, "the running pipeline never showed up"
        assert len(check["runs"]) == 1 and "'nightly retrain'" in check["runs"][0]["description"]
    finally:
        release.touch()
        output = pipeline.communicate(timeout=60)[0].decode()
    assert pipeline.returncode == 0, output[-2000:]
    assert drain_check("sematic", env.config.url, stale_after_minutes=60, **login)["done"] is True


def test_sematic_migrations_of_two_environments_at_once_keep_to_their_own_folders(tmp_path, monkeypatch,
                                                                                    sematic_venvs):
    """Importing Sematic creates $HOME/.sematic; two migrations at once on a worker whose home has
    none yet raced to create it and one failed (seen on a new machine). Each runs in its environment's
    own folder, as its server does, and the worker's home holds none."""
    scenario = make_scenario("sematic_migrations", tmp_path, 5212, 5213, "sematic")
    write_targets(tmp_path / "targets.yaml", [scenario])
    monkeypatch.setenv("AIRLOCK_TARGETS_FILE", str(tmp_path / "targets.yaml"))
    home = tmp_path / "worker-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    envs = [scenario.env(name, login=False) for name in ("staging", "production")]
    for env in envs:
        Path(env.database.path).parent.mkdir(parents=True, exist_ok=True)

    with ThreadPoolExecutor(2) as pool:
        migrated = list(pool.map(lambda env: env.driver.migrate(OLD), envs))

    assert all(result["seconds"] > 0 for result in migrated)
    assert all(env.database.table_stats() for env in envs)  # each has its schema
    assert [(Path(env.config.driver.artifact_root) / ".sematic").is_dir() for env in envs] == [True, True]
    assert not (home / ".sematic").exists()
