"""The upgrade DAG end to end on real Sematic 0.39.1 → 0.41.0 servers on SQLite."""

from __future__ import annotations

import pytest
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
    scenario = make_scenario("sematic_happy", root, 5210, 5211, "sematic")
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
