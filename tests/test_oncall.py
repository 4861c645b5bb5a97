"""What on-call reads: the WHAT NOW that ends a failed task's log, and the log's record of a rollback."""

from __future__ import annotations

import json

from airlock.backups import Manifest
from airlock.oncall import choose_final_backup, what_now
from airlock.upgrade_log import rollback_record


def test_before_any_server_is_touched_clearing_is_safe_and_the_rollback_dag_is_named():
    text = what_now("team_a", None, "preflight.plan", None, "manual__1")
    assert "- Nothing of team_a is half-upgraded by this run: clearing preflight.plan is safe" in text
    assert 'trigger airlock_rollback__team_a with {"environment": "production"} (and backup_id' in text


def test_mid_upgrade_it_names_the_rollback_task_and_the_final_backup():
    marker = {"from_version": "2.16.2", "to_version": "3.17.2", "final_backup_id": "production--final--r--a1"}
    text = what_now("team_a", "production", "production_upgrade.start", marker, "manual__1")
    assert "- production is mid-upgrade (marker of this run, 2.16.2 → 3.17.2). Clearing production_upgrade.start " \
           "is safe" in text
    assert "clear conclude.rollback_production" in text
    params = json.loads(text.rsplit(" with ", 1)[1])
    assert params == {"environment": "production", "backup_id": "production--final--r--a1"}


def test_after_the_database_was_restored_it_says_a_clear_will_not_restore_again():
    marker = {"from_version": "2.16.2", "to_version": "3.17.2", "final_backup_id": "production--final--r--a1",
              "rollback_database": {"restored": {"backup_id": "production--final--r--a1", "tables": 30},
                                    "post_upgrade_backup": None}}
    text = what_now("team_a", "production", "conclude.rollback_production", marker, "manual__1")
    assert "already restored the database (from production--final--r--a1)" in text
    assert "does NOT restore the database again" in text
    assert "restore production--final--r--a1 by hand before clearing" in text
    plain = what_now("team_a", "production", "conclude.rollback_production",
                     {k: v for k, v in marker.items() if k != "rollback_database"}, "manual__1")
    assert "already restored" not in plain


PLAN = {"environment": "production", "backup_id": "production--final--r--a1", "version_now": "3.17.2",
        "restores_version": "2.16.2"}


def test_a_rollback_record_says_what_happened():
    approved = {"chosen_options": ["Approve"], "responded_by_user": {"id": "alice", "name": "alice"}}
    done = rollback_record("t", "r2", "2026-11-27", PLAN, approved, {
        "rolled_back": True, "version": "2.16.2", "post_upgrade_backup": {"backup_id": "production--post--r2--a1"}},
        {"marker": "m"})
    assert (done["outcome"], done["from"], done["to"], done["approver"], done["kind"]) == (
        "rolled_back", "3.17.2", "2.16.2", "alice", "rollback")
    assert done["detail"] == ("production restored from production--final--r--a1 and runs 2.16.2; the database as "
                              "it was before is kept in production--post--r2--a1")
    rejected = rollback_record("t", "r3", "2026-11-27", PLAN, {"chosen_options": ["Reject"]}, None, None)
    assert (rejected["outcome"], rejected["rolled_back"]) == ("cancelled", False)
    assert rejected["detail"] == "not confirmed (no answer before the timeout): nothing was touched"
    half = rollback_record("t", "r4", "2026-11-27", PLAN, approved, None, {"marker": "/b/UPGRADE_IN_PROGRESS.json"})
    assert half["outcome"] == "rollback_failed" and "HALF-ROLLED-BACK" in half["detail"]


def final_set(run_id: str, created_at: str) -> Manifest:
    return Manifest(backup_id=f"production--final--{run_id}--a1", target="t", environment="production",
                    purpose="final", run_id=run_id, platform="mlflow", platform_version="2.16.2",
                    database_kind="mysql", database="mlflow", facts={}, files={}, tables={}, created_at=created_at)


def test_the_default_set_is_the_final_one_of_the_last_upgrade_that_went_through():
    """A later run that was rolled back left the old version serving: its final set would restore
    nothing and lose what was written since, so the default is the set of the run that upgraded."""
    upgraded, rolled_back = final_set("r1", "2026-11-20T10:00:00+00:00"), final_set("r2", "2026-11-25T10:00:00+00:00")
    records = [{"target": "t", "run_id": "r1", "outcome": "upgraded"},
               {"target": "t", "run_id": "r2", "outcome": "rolled_back"},
               {"target": "other", "run_id": "r2", "outcome": "upgraded"}]
    assert choose_final_backup([rolled_back, upgraded], records, "t") == upgraded
    kept = [records[0], {"target": "t", "run_id": "r2", "outcome": "kept_after_failed_watch"}]
    assert choose_final_backup([rolled_back, upgraded], kept, "t") == rolled_back  # the new version stayed
    assert choose_final_backup([upgraded, rolled_back], [], "t") == rolled_back  # no log: the newest set
    assert choose_final_backup([], records, "t") is None
