"""The DAG files as Airflow's own parser sees them."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml
from airlock.demo.fleet import demo_fleet, write_targets_file
from conftest import REPO

PHASES = ["preflight", "backup_and_prepare", "compatibility", "staging_upgrade", "uat", "production_slot",
          "production_upgrade", "conclude"]
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
    assert sorted(bag.dags) == ["airlock_rollback__mlflow_demo", "airlock_upgrade__mlflow_demo"]


def test_phases_are_task_groups_in_order(upgrade_dag):
    groups = list(upgrade_dag.task_group.children)
    assert groups == PHASES
    order = [upgrade_dag.get_task(t) for t in ("preflight.plan", "backup_and_prepare.backup_production",
                                               "compatibility.proceed", "staging_upgrade.drain", "uat.approval",
                                               "production_slot.held", "production_upgrade.drain", "conclude.decide")]
    for earlier, later in itertools.pairwise(order):
        assert earlier.task_id in later.get_flat_relative_ids(upstream=True), (earlier.task_id, later.task_id)


def test_production_starts_only_once_a_slot_of_the_platforms_pool_is_held(upgrade_dag):
    hold, held = upgrade_dag.get_task("production_slot.hold"), upgrade_dag.get_task("production_slot.held")
    assert (hold.pool, hold.pool_slots, held.pool) == ("airlock_mlflow", 1, "default_pool")
    assert hold.downstream_task_ids == set()  # a leaf: the run's outcome is not the hold's
    assert "uat.approval" in hold.upstream_task_ids and "uat.approval" in held.upstream_task_ids
    production = [t for t in upgrade_dag.task_ids if t.startswith("production_upgrade.")]
    assert production and all("production_slot.held" in upgrade_dag.get_task(t).get_flat_relative_ids(upstream=True)
                              for t in production)
    assert "preflight.production_pool" in held.get_flat_relative_ids(upstream=True)


def test_environment_steps_run_in_the_safe_order(upgrade_dag):
    for env in ("staging_upgrade", "production_upgrade"):
        steps = ["drain", "drain_decision", "proceed", "drained", "backup_before_stop", "stop", "backup", "migrate",
                 "migrated_data", "start", "health", "smoke", "fingerprint"]
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
    assert params.get_param("watch_seconds").value == 30 * 60  # watch.minutes' default
    assert upgrade_dag.get_task("production_upgrade.watch").task_type == "WatchOperator"  # in the triggerer
    assert all(params.get_param(name).description for name in params)
    # given once the tasks exist: no task holds a deep copy of them, and a task's run still sees
    # every one of them, with the trigger's values over the defaults (as the task runner merges them)
    assert all(not task.params for task in upgrade_dag.tasks if task.task_type != "ApprovalOperator")
    from airflow.sdk.definitions.param import process_params

    seen = process_params(upgrade_dag, upgrade_dag.get_task("preflight.plan"), {"target_version": "3.17.2"},
                          suppress_exception=False)
    assert seen == {**{name: params.get_param(name).value for name in params}, "target_version": "3.17.2"}
    approval = upgrade_dag.get_task("uat.approval")
    assert approval.assigned_users == [{"id": "admin", "name": "admin"}]
    assert upgrade_dag.get_task("staging_upgrade.rollback_staging").trigger_rule == "one_failed"
    assert upgrade_dag.get_task("conclude.report").trigger_rule == "all_done"
    # The report fails the run unless production was upgraded: beside it the only leaf is the
    # production slot's hold, which ends in success or skipped whatever happens (never failed), or a
    # rejected or rolled-back upgrade would end as a green run.
    assert sorted(task.task_id for task in upgrade_dag.leaves) == ["conclude.report", "production_slot.hold"]


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


def test_nothing_to_do_skips_every_backup_and_check(upgrade_dag):
    """With nothing newer the run ends after the plan: no backup, no rehearsal, no gate."""
    gate = upgrade_dag.get_task("preflight.anything_to_do")
    assert gate.upstream_task_ids == {"preflight.plan"}
    for task in upgrade_dag.tasks:
        if task.task_id.startswith(("backup_and_prepare.", "compatibility.", "staging_upgrade.", "uat.")):
            assert "preflight.anything_to_do" in task.get_flat_relative_ids(upstream=True), task.task_id


def test_every_task_ends_a_failure_with_what_to_do_now(upgrade_dag):
    assert all(task.on_failure_callback for task in upgrade_dag.tasks)


def test_a_scheduled_target_with_a_window_gets_its_cron_and_a_window_phase(monkeypatch, tmp_path):
    targets = yaml.safe_load((REPO / "include" / "targets.yaml").read_text())
    demo = targets["targets"]["mlflow_demo"]
    demo.update(schedule={"cron": "30 2 * * 2", "timezone": "Europe/Berlin"}, auto_upgrade="patch")
    demo["environments"]["production"]["maintenance"] = {
        "windows": [{"days": ["sat"], "start": "22:00", "end": "04:00", "timezone": "Europe/Berlin"}]}
    operated = tmp_path / "targets.yaml"
    operated.write_text(yaml.safe_dump(targets))
    bag = dag_bag(monkeypatch, operated)
    assert bag.import_errors == {}
    dag = bag.dags["airlock_upgrade__mlflow_demo"]
    assert (dag.timetable._expression, str(dag.timetable._timezone)) == ("30 2 * * 2", "Europe/Berlin")
    assert list(dag.task_group.children) == [*PHASES[:5], "window", *PHASES[5:]]
    window = dag.get_task("window.production")
    assert window.upstream_task_ids == {"uat.approval"}
    assert "window.production" in dag.get_task("production_slot.held").upstream_task_ids
    assert "staging_upgrade.window" not in dag.task_ids  # staging has no windows


def test_the_rollback_dag_confirms_then_runs_the_upgrades_own_rollback(monkeypatch, upgrade_dag):
    rollback = dag_bag(monkeypatch).dags["airlock_rollback__mlflow_demo"]
    order = ["plan", "confirm", "arm", "rollback", "report"]
    for earlier, later in itertools.pairwise(order):
        assert earlier in rollback.get_task(later).upstream_task_ids, later
    confirm = rollback.get_task("confirm")
    assert confirm.defaults == ["Reject"]  # nobody answering restores nothing
    assert confirm.assigned_users == [{"id": "admin", "name": "admin"}]
    same = rollback.get_task("rollback"), upgrade_dag.get_task("conclude.rollback_production")
    assert {(t.retries, t.retry_exponential_backoff, t.call.__code__) for t in same} == {
        (4, 2.0, same[1].call.__code__)}
    assert [task.task_id for task in rollback.leaves] == ["report"]
    params = rollback.params
    assert params.get_param("environment").schema["enum"] == ["staging", "production"]
    assert params.get_param("backup_id").value == ""


def test_a_fleet_upgrades_its_targets_in_waves_waiting_in_the_triggerer(monkeypatch, tmp_path):
    targets = yaml.safe_load((REPO / "include" / "targets.yaml").read_text())
    demo = targets["targets"]["mlflow_demo"]
    for name, port in (("team_b", 5601), ("team_c", 5603)):
        other = yaml.safe_load(yaml.safe_dump(demo).replace("mlflow_demo", name))
        other["environments"]["staging"]["url"] = f"http://127.0.0.1:{port}"
        other["environments"]["production"]["url"] = f"http://127.0.0.1:{port + 1}"
        targets["targets"][name] = other
    targets["fleets"] = {"all_mlflow": {"targets": ["mlflow_demo", "team_b", "team_c"], "wave_size": 2,
                                        "pause_minutes": 10}}
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump(targets))
    bag = dag_bag(monkeypatch, path)
    assert bag.import_errors == {}
    fleet = bag.dags["airlock_fleet__all_mlflow"]
    assert list(fleet.task_group.children) == ["wave_1", "wave_2", "report"]
    first = [fleet.get_task(f"wave_1.{name}") for name in ("mlflow_demo", "team_b")]
    assert [(t.trigger_dag_id, t.wait_for_completion, t.deferrable) for t in first] == [
        ("airlock_upgrade__mlflow_demo", True, True), ("airlock_upgrade__team_b", True, True)]
    # the second wave starts after a pause that waits for every target of the first: one failure stops it
    assert fleet.get_task("wave_2.pause").upstream_task_ids == {"wave_1.mlflow_demo", "wave_1.team_b"}
    assert fleet.get_task("wave_2.team_c").upstream_task_ids == {"wave_2.pause"}
    assert fleet.get_task("report").trigger_rule == "all_done"
    assert [task.task_id for task in fleet.leaves] == ["report"]


def test_an_artifact_store_is_checked_after_the_fingerprint_and_before_the_watch(monkeypatch, tmp_path):
    targets = yaml.safe_load((REPO / "include" / "targets.yaml").read_text())
    production = targets["targets"]["mlflow_demo"]["environments"]["production"]
    production["artifacts"] = {"location": str(tmp_path / "mlartifacts")}
    (tmp_path / "targets.yaml").write_text(yaml.safe_dump(targets))
    bag = dag_bag(monkeypatch, tmp_path / "targets.yaml")
    assert bag.import_errors == {}
    dag = bag.dags["airlock_upgrade__mlflow_demo"]
    check = dag.get_task("production_upgrade.artifact_store")
    assert check.upstream_task_ids == {"production_upgrade.fingerprint"}
    assert "production_upgrade.artifact_store" in dag.get_task("production_upgrade.watch").get_flat_relative_ids(
        upstream=True)
    assert check.retries > 0  # a comparison: safe to retry
    assert "staging_upgrade.artifact_store" not in dag.task_ids  # staging has none configured


def test_a_worker_parsing_the_file_for_one_task_builds_only_that_tasks_dag(monkeypatch):
    """A task runner parses the DAG file with the parsing context set to its DAG: building every
    target's DAGs there would cost each task the whole fleet's parse."""
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "airlock_rollback__mlflow_demo")
    bag = dag_bag(monkeypatch)
    assert bag.import_errors == {}
    assert sorted(bag.dags) == ["airlock_rollback__mlflow_demo"]


@pytest.mark.parametrize("migration", ["job", "hook"])
def test_the_migrated_data_is_checked_before_the_start_or_right_after_a_hooks_rollout(monkeypatch, tmp_path,
                                                                                     migration):
    """A migration Job ends before `start`: the check runs on a database nothing has served yet. A
    chart's hook migrates inside `helm upgrade`: the check can only follow the rollout."""
    targets = yaml.safe_load((REPO / "include" / "targets.yaml").read_text())
    production = targets["targets"]["mlflow_demo"]["environments"]["production"]
    production["driver"] = {"kind": "helm", "state_dir": str(tmp_path / "p"), "helm": {
        "release": "mlflow", "namespace": "ml", "chart": "/charts/mlflow", "deployment": "mlflow",
        "service": "mlflow", "migration_job": "mlflow-migrate", "migration": migration}}
    (tmp_path / "targets.yaml").write_text(yaml.safe_dump(targets))
    bag = dag_bag(monkeypatch, tmp_path / "targets.yaml")
    assert bag.import_errors == {}
    dag = bag.dags["airlock_upgrade__mlflow_demo"]
    check = dag.get_task("production_upgrade.migrated_data")
    expected = {"job": {"production_upgrade.migration_job"}, "hook": {"production_upgrade.rollout"}}[migration]
    assert check.upstream_task_ids == expected
    assert check.retries > 0
    if migration == "job":
        assert dag.get_task("production_upgrade.start").upstream_task_ids == {"production_upgrade.migrated_data"}
    assert dag.get_task("staging_upgrade.start").upstream_task_ids == {"staging_upgrade.migrated_data"}


def test_copies_of_the_dag_file_named_as_shards_build_every_target_once(monkeypatch, tmp_path):
    """A fleet too big for one file's import timeout is spread over airlock_upgrade_<i>of<n>.py."""
    from airflow.dag_processing.dagbag import DagBag

    targets = demo_fleet([f"team_{number}" for number in range(12)], tmp_path, 24000)
    monkeypatch.setenv("AIRLOCK_TARGETS_FILE", str(write_targets_file(tmp_path / "targets.yaml", targets)))
    dags = tmp_path / "dags"
    dags.mkdir()
    for index in (1, 2, 3):
        (dags / f"airlock_upgrade_{index}of3.py").write_text((REPO / "dags" / "airlock_upgrade.py").read_text())
    bag = DagBag(dag_folder=str(dags))
    assert bag.import_errors == {}
    by_file = {Path(dag.fileloc).name: set() for dag in bag.dags.values()}
    for dag in bag.dags.values():
        by_file[Path(dag.fileloc).name].add(dag.dag_id)
    assert len(by_file) == 3 and all(by_file.values()), by_file  # each copy builds a share
    assert sorted(bag.dags) == sorted(f"airlock_{kind}__{name}" for name in targets for kind in ("upgrade", "rollback"))
    assert sum(len(ids) for ids in by_file.values()) == len(bag.dags)  # no DAG built twice

    (dags / "airlock_upgrade_4of3.py").write_text((REPO / "dags" / "airlock_upgrade.py").read_text())
    errors = DagBag(dag_folder=str(dags)).import_errors
    assert any("shard 4 of 3 does not exist" in message for message in errors.values()), errors
