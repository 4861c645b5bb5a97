"""The Upgrades page's figures and drawing, from upgrade-log records (no server needed)."""

import re

from airlock.upgrades_page import (
    InFlight,
    TargetView,
    behind,
    duration,
    kpis,
    marker_advice,
    render_page,
    timeline_svg,
    versions_now,
)


def upgrade(run: str, date: str, outcome: str = "upgraded", down: float | None = 30.0, **extra) -> dict:
    return {"date": date, "target": "team_a", "run_id": run, "from": "3.16.0", "to": "3.17.0", "outcome": outcome,
            "rolled_back": outcome == "rolled_back", "approver": "alice", "production_downtime_seconds": down,
            **extra}


SPANS = {"preflight": ["2026-11-01T10:00:00+00:00", "2026-11-01T10:00:10+00:00"],
         "staging_upgrade": ["2026-11-01T10:00:10+00:00", "2026-11-01T10:02:10+00:00"],
         "uat": ["2026-11-01T10:02:10+00:00", "2026-11-01T11:02:10+00:00"],
         "production_upgrade": ["2026-11-01T11:02:10+00:00", "2026-11-01T11:04:10+00:00"]}


def test_kpis_hold_downtime_against_the_goal_and_count_every_rollback_of_production():
    records = [upgrade("r1", "2026-11-01", down=20.0, phase_spans=SPANS),
               upgrade("r2", "2026-11-08", down=400.0),
               upgrade("r3", "2026-11-15", outcome="rolled_back", down=50.0),
               upgrade("r4", "2026-11-22", outcome="rejected", down=None),
               {"date": "2026-11-23", "target": "team_a", "run_id": "rb1", "kind": "rollback",
                "environment": "production", "outcome": "rolled_back"},
               {"date": "2026-11-24", "target": "team_a", "run_id": "rb2", "kind": "rollback",
                "environment": "staging", "outcome": "rolled_back"}]
    k = kpis(records, goal_seconds=300)
    assert (k.upgrades, k.production_upgrades) == (4, 3)  # the rejected run never touched production
    assert k.downtime_median == 50.0 and k.downtime_worst == 400.0 and k.over_goal == 1
    assert k.rollbacks == 2 and abs(k.rollback_rate - 2 / 3) < 1e-9  # staging's rollback is not production's
    assert k.staging_to_production_median == 3720.0  # end of staging's upgrade to end of production's


def test_durations_keep_a_downtimes_tenth_and_read_longer_ones_like_progress_lines():
    assert [duration(s) for s in (None, 21.04, 59.9, 125, 7500)] == ["—", "21.0 s", "59.9 s", "2 min 05 s",
                                                                     "2 h 05 min"]


def test_behind_says_how_far_in_the_units_an_operator_plans_by():
    assert behind("3.17.2", "3.17.2") == "up to date"
    assert behind("3.17.0", "3.17.2") == "2 patch releases behind (3.17.2)"
    assert behind("3.15.4", "3.17.2") == "2 minor releases behind (3.17.2)"
    assert behind("2.16.2", "3.17.2") == "1 major release behind (3.17.2)"
    assert behind(None, "3.17.2") == "unknown (half-upgraded)"
    assert behind("3.17.0", None) == "newest release unknown"


def test_versions_now_follow_the_last_upgrade_and_an_on_call_rollback_after_it():
    records = [upgrade("r1", "2026-11-01", versions_after={"staging": "3.17.0", "production": "3.17.0"}),
               upgrade("r2", "2026-11-08", outcome="rejected", versions_after={"staging": "3.18.0",
                                                                                "production": "3.17.0"})]
    assert versions_now(records) == {"staging": "3.18.0", "production": "3.17.0"}
    rolled = [*records, {"date": "2026-11-09", "target": "team_a", "run_id": "rb", "kind": "rollback",
                         "environment": "staging", "outcome": "rolled_back", "to": "3.17.0"}]
    assert versions_now(rolled) == {"staging": "3.17.0", "production": "3.17.0"}
    preflight_failed = {"date": "2026-11-10", "target": "team_a", "run_id": "r3", "outcome": "failed",
                        "versions_after": {}}  # the run never learnt the versions: nothing changes
    assert versions_now([*rolled, preflight_failed]) == {"staging": "3.17.0", "production": "3.17.0"}


def test_the_timeline_draws_a_bar_per_phase_and_marks_the_downtime_inside_production():
    record = upgrade("r1", "2026-11-01", phase_spans=SPANS,
                     downtime_span=["2026-11-01T11:02:40+00:00", "2026-11-01T11:03:10+00:00"])
    svg = timeline_svg(record, width=430)
    bars = re.findall(r'<rect class="phase" x="([\d.]+)" y="\d+" width="([\d.]+)"', svg)
    assert len(bars) == 4
    start, width = map(float, bars[3])  # production_upgrade: the last 120 s of 14,410
    down_x, down_w = map(float, re.search(r'<rect class="downtime" x="([\d.]+)" y="0" width="([\d.]+)"', svg).groups())
    assert start <= down_x and down_x + down_w <= start + width + 0.2
    assert float(bars[2][1]) > 250  # the hour at the gate is most of the axis: a long gate shows


def test_a_downtime_the_final_backups_dump_lengthened_says_so_on_the_page():
    note = ("the final backup was dumped and verified with the server down: db changed since backup b (at least "
            "in tables <runs>)")
    slow, usual = (upgrade(run, "2026-11-01", down=down, phase_spans=SPANS, downtime_note=note_,
                           downtime_span=["2026-11-01T11:02:40+00:00", "2026-11-01T11:03:10+00:00"])
                   for run, down, note_ in (("r1", 95.0, note), ("r2", 30.0, None)))
    html = render_page([TargetView("team_a", "mlflow", [slow, usual])], [], set(), root="../", generated_at="now")
    escaped = note.replace("<", "&lt;").replace(">", "&gt;")
    assert f'<td class="slow" title="{escaped}">1 min 35 s ⓘ</td>' in html and "<runs>" not in html
    assert "<td>30.0 s</td>" in html  # a downtime without a note is shown as before
    assert f"<title>production down 1 min 35 s ({escaped})</title>" in timeline_svg(slow)


def test_the_page_escapes_what_it_shows_and_links_each_run_to_its_dag_run():
    hostile = upgrade("manual__2026<x>", "2026-11-01", approver="<script>alert(1)</script>", phase_spans=SPANS)
    view = TargetView("team_a", "mlflow", [hostile])
    flight = InFlight("airlock_upgrade__team_a", "run/9", "uat.approval", "awaiting_input", "2026-11-02T10:00:00")
    html = render_page([view], [flight], set(), root="../", generated_at="now")
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="../dags/airlock_upgrade__team_a/runs/manual__2026%3Cx%3E" target="_top"' in html
    assert "uat.approval waiting at a gate" in html and "runs/run%2F9" in html


def test_in_flight_tasks_are_told_apart_and_a_marker_says_what_on_call_does():
    kinds = {task: InFlight("d", "r", task, "deferred", None).kind for task in (
        "uat.approval", "production_upgrade.drain_decision", "staging_upgrade.drain", "window.production",
        "staging_upgrade.window", "production_upgrade.migrate")}
    assert kinds == {"uat.approval": "gate", "production_upgrade.drain_decision": "gate",
                     "staging_upgrade.drain": "drain", "window.production": "window",
                     "staging_upgrade.window": "window", "production_upgrade.migrate": None}
    marker = {"run_id": "r7", "from_version": "3.16.0", "to_version": "3.17.0"}
    assert "still going" in marker_advice("team_a", "production", marker, {"r7"})
    over = marker_advice("team_a", "production", marker, set())
    assert "clear conclude.rollback_production" in over and "airlock_rollback__team_a" in over
