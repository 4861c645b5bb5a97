"""Maintenance-window arithmetic: across midnight, across daylight-saving changes, windows too short
for the expected duration, several windows that touch; and the expected duration from the log."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from airlock import steps, upgrade_log
from airlock.config import load_target
from airlock.windows import DAYS, Window, WindowError, expected_duration, next_slot, parse_clock

BERLIN = ZoneInfo("Europe/Berlin")


def window(days: str, start: str, end: str, timezone: str = "Europe/Berlin") -> Window:
    return Window(frozenset(DAYS.index(d) for d in days.split(",")), parse_clock(start), parse_clock(end), timezone)


def berlin(*args) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


def test_inside_a_window_that_crosses_midnight_the_upgrade_starts_now_if_it_fits():
    friday_night = window("fri", "22:00", "04:00")
    now = berlin(2026, 11, 28, 1, 0)  # Saturday 01:00: the window opened Friday 22:00
    slot = next_slot([friday_night], now, timedelta(hours=2))
    assert (slot.starts, slot.opens, slot.closes) == (now, berlin(2026, 11, 27, 22, 0), berlin(2026, 11, 28, 4, 0))


def test_too_little_left_of_tonights_window_waits_for_next_weeks():
    friday_night = window("fri", "22:00", "04:00")
    slot = next_slot([friday_night], berlin(2026, 11, 28, 1, 0), timedelta(hours=4))
    assert slot.starts == berlin(2026, 12, 4, 22, 0)


def test_spring_forward_night_is_an_hour_short_so_a_long_upgrade_waits_a_week():
    sunday_early = window("sun", "01:00", "05:00")  # 2026-03-29: 02:00 becomes 03:00 in Berlin
    saturday = berlin(2026, 3, 28, 12, 0)
    assert next_slot([sunday_early], saturday, timedelta(hours=2)).starts == datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
    slot = next_slot([sunday_early], saturday, timedelta(hours=3, minutes=30))
    assert slot.starts == berlin(2026, 4, 5, 1, 0)
    assert slot.closes - slot.opens == timedelta(hours=4)


def test_fall_back_night_is_an_hour_long_so_only_it_fits():
    sunday_early = window("sun", "01:00", "05:00")  # 2026-10-25: 03:00 becomes 02:00 again
    slot = next_slot([sunday_early], berlin(2026, 10, 19, 12, 0), timedelta(hours=4, minutes=30))
    assert slot.starts == datetime(2026, 10, 24, 23, 0, tzinfo=UTC)
    assert slot.closes - slot.opens == timedelta(hours=5)


def test_windows_shorter_than_the_expected_duration_are_refused_with_the_numbers():
    with pytest.raises(WindowError, match=r"expected 180 min \(the longest is 120 min: tue,thu 20:00-22:00 UTC\)"):
        next_slot([window("tue,thu", "20:00", "22:00", "UTC")], datetime(2026, 11, 26, tzinfo=UTC),
                  timedelta(hours=3))


def test_touching_windows_are_one():
    weekend = [window("sat", "00:00", "24:00"), window("sun", "00:00", "24:00")]
    slot = next_slot(weekend, berlin(2026, 11, 25, 9, 0), timedelta(hours=40))
    assert (slot.starts, slot.closes) == (berlin(2026, 11, 28, 0, 0), berlin(2026, 11, 30, 0, 0))


def test_the_window_of_the_nearest_fitting_definition_wins():
    windows = [window("wed", "20:00", "21:00", "America/New_York"), window("thu", "06:00", "09:00", "Asia/Tokyo")]
    # Thursday 06:00 in Tokyo is Wednesday 21:00 UTC; Wednesday 20:00 in New York, Thursday 01:00 UTC
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert next_slot(windows, now, timedelta(hours=2)).starts == datetime(2026, 11, 25, 21, 0, tzinfo=UTC)
    late = datetime(2026, 11, 25, 23, 30, tzinfo=UTC)  # 30 min left of Tokyo's
    assert next_slot(windows, late, timedelta(minutes=50)).starts == datetime(2026, 11, 26, 1, 0, tzinfo=UTC)
    assert next_slot(windows, late, timedelta(hours=2)).starts == datetime(2026, 12, 2, 21, 0, tzinfo=UTC)


@pytest.mark.parametrize("text", ["25:00", "7pm", "12:5", "", "12:60"])
def test_a_time_of_day_must_be_hh_mm(text):
    with pytest.raises(ValueError, match="is not a time of day HH:MM"):
        parse_clock(text)


def test_24_00_is_the_end_of_the_day():
    assert parse_clock("24:00") == time(0, 0)


def test_expected_duration_is_the_median_of_past_runs_else_the_default():
    assert expected_duration([], 45) == (timedelta(minutes=45), "the configured default (45 min)")
    expected, basis = expected_duration([600, 60, 120, 0], 45)
    assert expected == timedelta(seconds=120)
    assert basis == "the median of 3 past run(s) (2.0 min)"


def test_the_slot_step_reads_past_production_phases_from_the_upgrade_log(tmp_path):
    targets = tmp_path / "targets.yaml"
    targets.write_text(TARGETS.format(root=tmp_path))
    target = load_target("windowed", targets)
    for index, seconds in enumerate((5400, 7200, 9000)):  # median 2 h: too long for Saturday's 90 min
        upgrade_log.append(tmp_path, {"run_id": f"r{index}", "target": "windowed", "date": "2026-11-01",
                                      "outcome": "upgraded", "phase_seconds": {"production_upgrade": seconds}})
    upgrade_log.append(tmp_path, {"run_id": "other", "target": "another", "date": "2026-11-01",
                                  "outcome": "upgraded", "phase_seconds": {"production_upgrade": 60}})
    slot = steps.maintenance_slot(target, "production", tmp_path, datetime(2026, 11, 27, 12, 0, tzinfo=UTC), "", "x")
    assert slot["starts"] == "2026-11-29T01:00:00+00:00"  # Sunday's 3 h window, not Saturday's 90 min
    assert (slot["expected_minutes"], slot["expected_from"]) == (120.0, "the median of 3 past run(s) (120.0 min)")

    forced = steps.maintenance_slot(target, "production", tmp_path, datetime(2026, 11, 27, 12, 0, tzinfo=UTC),
                                    "CVE-2026-1234 hotfix", "alice")
    assert forced["starts"] == "2026-11-27T12:00:00+00:00"
    assert forced["override"] == {"by": "alice", "reason": "CVE-2026-1234 hotfix"}


TARGETS = """
targets:
  windowed:
    platform: mlflow
    approvers: [admin]
    backup: {{location: {root}/backups}}
    environments:
      staging:
        url: http://127.0.0.1:5901
        driver: {{kind: process, state_dir: {root}/staging}}
        database: {{kind: sqlite, path: {root}/staging.db}}
      production:
        url: http://127.0.0.1:5902
        driver: {{kind: process, state_dir: {root}/production}}
        database: {{kind: sqlite, path: {root}/production.db}}
        maintenance:
          expected_minutes: 30
          windows:
            - {{days: [sat], start: "02:00", end: "03:30", timezone: UTC}}
            - {{days: [sun], start: "01:00", end: "04:00", timezone: UTC}}
"""
