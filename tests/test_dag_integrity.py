"""The DAG files as Airflow's own parser sees them."""

from __future__ import annotations

import itertools

import pytest
from conftest import REPO

PHASES = ["preflight", "backup_and_prepare", "compatibility", "staging_upgrade", "uat", "production_upgrade",
          "conclude"]
IDEMPOTENT = {"preflight.plan", "backup_and_prepare.health_staging", "backup_and_prepare.backup_production",
              "backup_and_prepare.inventory", "compatibility.prepare_versions", "staging_upgrade.backup",
              "staging_upgrade.fingerprint", "production_upgrade.health", "production_upgrade.smoke"}
CHANGES_A_SERVER = {"staging_upgrade.stop", "staging_upgrade.migrate", "production_upgrade.migrate",
                    "production_upgrade.start"}
RIDES_OUT_BLIPS = {"conclude.decide", "conclude.finish", "conclude.rollback_production",
                   "staging_upgrade.rollback_staging"}


def dag_bag(monkeypatch, targets_file=None):
    from airflow.dag_processing.dagbag import DagBag

    if targets_file:
        monkeypatch.setenv("AIRLOCK_TARGETS_FILE", str(targets_file))
    else:
        monkeypatch.delenv("AIRLOCK_TARGETS_FILE", raising=False)
    return DagBag(dag_folder=str(REPO / "dags"))


@pytest.fixture
def upgrade_dag(monkeypatch):
    bag = dag_bag(monkeypatch)
    assert bag.import_errors == {}
    return bag.dags["airlock_upgrade__mlflow_demo"]


def test_dag_files_import_without_errors(monkeypatch):
    bag = dag_bag(monkeypatch)
    assert bag.import_errors == {}
    assert sorted(bag.dags) == ["airlock_upgrade__mlflow_demo"]


def test_phases_are_task_groups_in_order(upgrade_dag):
    groups = list(upgrade_dag.task_group.children)
    assert groups == PHASES
    order = [upgrade_dag.get_task(t) for t in ("preflight.plan", "backup_and_prepare.backup_production",
                                               "compatibility.proceed", "staging_upgrade.drain", "uat.approval",
                                               "production_upgrade.drain", "conclude.decide")]
    for earlier, later in itertools.pairwise(order):
        assert earlier.task_id in later.get_flat_relative_ids(upstream=True), (earlier.task_id, later.task_id)


def test_environment_steps_run_in_the_safe_order(upgrade_dag):
    for env in ("staging_upgrade", "production_upgrade"):
        steps = ["drain", "drain_decision", "proceed", "drained", "stop", "backup", "migrate", "start", "health",
                 "smoke", "fingerprint"]
        for earlier, later in itertools.pairwise(steps):
            assert f"{env}.{earlier}" in upgrade_dag.get_task(f"{env}.{later}").upstream_task_ids
        # stop runs after a drain, a "proceed" answer or a longer wait, never after an abort: the
        # join before it has exactly the two ways forward upstream (nothing that always succeeds)
        drained = upgrade_dag.get_task(f"{env}.drained")
        assert drained.upstream_task_ids == {f"{env}.proceed", f"{env}.wait_longer"}
        assert drained.trigger_rule == "none_failed_min_one_success"
        assert upgrade_dag.get_task(f"{env}.stop").trigger_rule == "all_success"
        assert f"{env}.abort" not in upgrade_dag.get_task(f"{env}.stop").get_flat_relative_ids(upstream=True)
    assert "staging_upgrade.fingerprint" in upgrade_dag.get_task("staging_upgrade.artifacts").upstream_task_ids


def test_drain_decision_defaults_to_abort(upgrade_dag):
    """Nobody answering on-call's question must never stop a server with runs on it."""
    for env in ("staging_upgrade", "production_upgrade"):
        decision = upgrade_dag.get_task(f"{env}.drain_decision")
        assert decision.defaults == ["Abort"]
        assert decision.response_timeout.total_seconds() == 60 * 60
        assert decision.options_mapping == {"Wait longer": f"{env}.wait_longer", "Proceed anyway": f"{env}.proceed",
                                            "Abort": f"{env}.abort"}


def test_retries_only_where_a_retry_is_safe(upgrade_dag):
    assert all(upgrade_dag.get_task(t).retries > 0 for t in IDEMPOTENT)
    assert all(upgrade_dag.get_task(t).retries == 0 for t in CHANGES_A_SERVER)
    # deciding and rolling back are idempotent: one transient error there is retried, backing off
    for task_id in RIDES_OUT_BLIPS:
        task = upgrade_dag.get_task(task_id)
        assert (task.retries, task.retry_exponential_backoff) == (4, 2.0), task_id


def test_a_failed_watch_asks_before_rolling_back_a_server_that_answers(upgrade_dag):
    decide = upgrade_dag.get_task("conclude.decide")
    assert decide.downstream_task_ids == {"conclude.finish", "conclude.assess_rollback", "conclude.report"}
    gate = upgrade_dag.get_task("conclude.rollback_decision")
    assert gate.upstream_task_ids == {"conclude.assess_rollback"}
    assert gate.defaults == ["Keep the new version and investigate"]  # no answer: nothing is lost
    assert gate.options_mapping == {"Roll back (lose the writes listed)": "conclude.rollback_production",
                                    "Keep the new version and investigate": "conclude.keep_new_version"}
    assert gate.response_timeout.total_seconds() == 60 * 60


def test_dag_settings_for_operators(upgrade_dag):
    assert upgrade_dag.max_active_runs == 1
    assert {"airlock", "platform:mlflow", "target:mlflow_demo"} <= set(upgrade_dag.tags)
    params = upgrade_dag.params
    assert params.get_param("mode").schema["enum"] == ["upgrade", "plan-only"]
    assert params.get_param("target_version").value == "latest-patch"
    assert all(params.get_param(name).description for name in params)
    approval = upgrade_dag.get_task("uat.approval")
    assert approval.assigned_users == [{"id": "admin", "name": "admin"}]
    assert upgrade_dag.get_task("staging_upgrade.rollback_staging").trigger_rule == "one_failed"
    assert upgrade_dag.get_task("conclude.report").trigger_rule == "all_done"
    # The report fails the run unless production was upgraded: it must be the only leaf, or a
    # rejected or rolled-back upgrade would end as a green run.
    assert [task.task_id for task in upgrade_dag.leaves] == ["conclude.report"]


def test_broken_targets_file_is_an_import_error_naming_file_target_and_field(monkeypatch, tmp_path):
    good = (REPO / "include" / "targets.yaml").read_text()
    broken = tmp_path / "targets.yaml"
    broken.write_text(good.replace("kind: sqlite", "kind: sqlite3", 1))
    bag = dag_bag(monkeypatch, broken)
    assert bag.dags == {}
    (path, error), = bag.import_errors.items()
    assert path.endswith("dags/airlock_upgrade.py")
    assert str(broken) in error
    assert "target 'mlflow_demo': environments.staging.database.kind: must be one of mysql, postgresql, sqlite" in error
