"""Outcomes and the upgrade log, from the task results a run leaves behind."""

from airlock import upgrade_log
from airlock.upgrade_log import build_record, decide_outcome

PLAN = {"from": "2.16.2", "to": "3.17.2", "production": {"change": "major", "description": "2.16.2 → 3.17.2"}}


def timed(start, end, **extra):
    return {"_started_at": f"2026-11-23T10:{start}+00:00", "_finished_at": f"2026-11-23T10:{end}+00:00", **extra}


def test_each_way_a_run_can_end_has_its_own_outcome():
    base = {"preflight.plan": PLAN}
    assert decide_outcome({})[0] == "failed"
    assert decide_outcome({**base, "conclude.finish": {"finished": True}})[0] == "upgraded"
    rejected = decide_outcome({**base, "uat.approval": {"chosen_options": ["Reject"],
                                                         "responded_by_user": {"id": "al", "name": "Al"}}})
    assert rejected == ("rejected", "rejected at the UAT gate by Al: production untouched")
    assert decide_outcome({**base, "staging_upgrade.rollback_staging": {"rolled_back": True}})[0] == "staging_failed"
    assert decide_outcome({**base, "conclude.rollback_production": {"rolled_back": True, "version": "2.16.2"}})[0] \
        == "rolled_back"
    half = {"production": "/b/t/production/UPGRADE_IN_PROGRESS.json"}
    outcome, detail = decide_outcome({**base, "_half_upgraded": half})
    assert outcome == "rollback_failed" and "HALF-UPGRADED" in detail and half["production"] in detail
    outcome, detail = decide_outcome({**base, "_half_upgraded": {"staging": "/b/t/staging/UPGRADE_IN_PROGRESS.json"}})
    assert outcome == "staging_rollback_failed" and "production untouched" in detail
    assert decide_outcome({**base, "compatibility.proceed": False})[0] == "planned"
    noop = {"preflight.plan": {**PLAN, "production": {"change": "none", "description": "already at 3.17.2"}}}
    assert decide_outcome(noop)[0] == "nothing_to_do"


def test_record_measures_phases_and_production_downtime():
    results = {
        "preflight.plan": {**PLAN, **timed("00:00", "00:02")},
        "staging_upgrade.stop": timed("01:00", "01:05"),
        "staging_upgrade.fingerprint": timed("01:30", "01:40"),
        "production_upgrade.stop": timed("05:00", "05:04", last_answered_at="2026-11-23T10:05:01+00:00"),
        "production_upgrade.health": timed("05:30", "05:31", healthy_at="2026-11-23T10:05:31+00:00"),
        "conclude.finish": {"finished": True, **timed("06:00", "06:01")},
        "uat.approval": {"chosen_options": ["Approve"], "responded_by_user": {"id": "alice", "name": "Alice"},
                         **timed("02:00", "04:30")},  # the gate records how long it waited
    }
    record = build_record("team_a", "run-1", "2026-11-23T10:00:00+00:00", results)
    assert record["outcome"] == "upgraded" and record["approver"] == "Alice"
    assert record["production_downtime_seconds"] == 30.0
    assert record["phase_seconds"] == {"preflight": 2.0, "staging_upgrade": 40.0, "uat": 150.0,
                                       "production_upgrade": 31.0, "conclude": 1.0}
    assert record["phase_spans"]["production_upgrade"] == ["2026-11-23T10:05:00+00:00", "2026-11-23T10:05:31+00:00"]
    assert record["downtime_span"] == ["2026-11-23T10:05:01+00:00", "2026-11-23T10:05:31+00:00"]
    assert record["versions_after"] == {"staging": "2.16.2", "production": "3.17.2"}  # staging never finished
    assert record["downtime_note"] is None  # the final backup's result says nothing against it


def test_a_final_backup_dumped_with_the_server_down_explains_the_downtime():
    refused = "mlflow@db changed since backup production-pre_stop-r1 was taken (at least in tables runs)"
    results = {"preflight.plan": PLAN, "production_upgrade.backup": {"adopted_from": None, "not_adopted": refused},
               "production_upgrade.stop": {"last_answered_at": "2026-11-23T10:05:01+00:00"},
               "production_upgrade.health": {"healthy_at": "2026-11-23T10:06:31+00:00"}}
    record = build_record("team_a", "run-1", "2026-11-23T10:00:00+00:00", results)
    assert record["downtime_note"] == f"the final backup was dumped and verified with the server down: {refused}"
    assert f"| 90 s (the final backup was dumped and verified with the server down: {refused}) |" in \
        upgrade_log.render_markdown([record])


def test_versions_after_say_what_each_environment_runs_once_the_run_is_over():
    plan = {**PLAN, "staging": {"current": "2.16.2"}}
    staged = {"preflight.plan": plan, "staging_upgrade.finish_staging": {"finished": True}}
    assert upgrade_log.versions_after("rejected", staged) == {"staging": "3.17.2", "production": "2.16.2"}
    assert upgrade_log.versions_after("upgraded", staged) == {"staging": "3.17.2", "production": "3.17.2"}
    assert upgrade_log.versions_after("rollback_failed", staged)["production"] is None
    half = upgrade_log.versions_after("staging_rollback_failed", {"preflight.plan": plan})
    assert half == {"staging": None, "production": "2.16.2"}
    assert upgrade_log.versions_after("failed", {}) == {}  # preflight failed: no version is known


def test_log_keeps_one_line_per_run_and_renders_markdown(tmp_path):
    first = {"date": "2026-11-23T10:00:00+00:00", "target": "t", "run_id": "r1", "from": "1.0.0", "to": "1.0.1",
             "outcome": "failed", "phase_seconds": {"preflight": 1.0}, "production_downtime_seconds": None}
    upgrade_log.append(tmp_path, first)
    upgrade_log.append(tmp_path, {**first, "outcome": "upgraded", "approver": "al",
                                  "production_downtime_seconds": 12.5})  # a retried report
    upgrade_log.append(tmp_path, {**first, "run_id": "r2", "outcome": "rejected"})
    assert [r["outcome"] for r in upgrade_log.read(tmp_path)] == ["upgraded", "rejected"]
    markdown = (tmp_path / upgrade_log.MARKDOWN).read_text()
    assert "| 2026-11-23T10:00:00+00:00 | t | 1.0.0 → 1.0.1 | upgraded | no | al | 12.5 s | preflight 1 |" in markdown


def test_a_failed_finish_is_not_reported_as_a_failed_rollback():
    """The upgrade passed its watch and only dropping the marker failed (an S3 blip): nothing needs
    rolling back, and the log must not send on-call to a rollback."""
    half = {"production": "s3://b/t/production/UPGRADE_IN_PROGRESS.json"}
    outcome, detail = decide_outcome({"preflight.plan": PLAN, "production_upgrade.watch": {"checks": 30},
                                      "_half_upgraded": half})
    assert outcome == "finish_failed"
    assert "clear conclude.finish (nothing needs rolling back)" in detail and "FAILED" not in detail


def test_keeping_the_new_version_after_a_failed_watch_says_how_to_roll_back_later():
    kept = {"kept": "3.17.2", "decided_by": "Al", "marker": "/b/t/production/UPGRADE_IN_PROGRESS.json"}
    outcome, detail = decide_outcome({"preflight.plan": PLAN, "conclude.keep_new_version": kept,
                                      "_half_upgraded": {"production": kept["marker"]}})
    assert outcome == "kept_after_failed_watch"
    assert "KEEPS 3.17.2 as Al decided" in detail and "clear conclude.rollback_decision" in detail
