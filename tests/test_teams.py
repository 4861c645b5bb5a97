"""When the teams are told production's upgrade starts: never before their notice is over, and in
the first maintenance window the upgrade fits in from then."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from airlock.config import load_targets
from airlock.config_operations import MaintenanceConfig, NotifyConfig, Team, TeamsConfig
from airlock.environment import adapter_for
from airlock.teams import KEEP_ANNOUNCEMENTS, announce, notice_slot, planned_start
from airlock.upgrade_log import Folder
from airlock.windows import DAYS, Window, parse_clock

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)  # a Friday


def target_with(notice_hours: float, windows: tuple[Window, ...] = (), teams: tuple[Team, ...] = ()):
    target = load_targets()["mlflow_demo"]
    production = replace(target.environment("production"),
                         maintenance=MaintenanceConfig(windows, 60) if windows else None)
    return replace(target, teams=TeamsConfig(notice_hours=notice_hours, members=teams),
                   environments={**target.environments, "production": production})


def test_without_windows_production_starts_when_the_notice_is_over():
    start = planned_start(target_with(168), NOW, timedelta(minutes=30))
    assert (start["earliest"], start["starts"]) == ("2026-12-04T10:00:00+00:00", "2026-12-04T10:00:00+00:00")
    assert start["where"] == "as soon as the notice is over"
    assert notice_slot({**start, "notice_hours": 168}) == {
        "environment": "production", "starts": "2026-12-04T10:00:00+00:00",
        "waiting_for": "the 168 h notice the teams were given on 2026-11-27T10:00:00+00:00"}


def test_with_windows_it_is_the_first_window_after_the_notice_that_the_upgrade_fits_in():
    saturday_night = Window(frozenset({DAYS.index("sat")}), parse_clock("22:00"), parse_clock("04:00"), "UTC")
    # a day's notice from Friday 10:00: tomorrow's window (Saturday 22:00), not tonight's
    start = planned_start(target_with(24, (saturday_night,)), NOW, timedelta(minutes=30))
    assert start["earliest"] == "2026-11-28T10:00:00+00:00"
    assert start["starts"] == "2026-11-28T22:00:00+00:00"
    assert start["where"] == "in the maintenance window 2026-11-28T22:00+00:00 → 2026-11-29T04:00+00:00"
    # a week's notice lands inside no window; the next Saturday's is the one
    later = planned_start(target_with(168, (saturday_night,)), NOW, timedelta(minutes=30))
    assert later["starts"] == "2026-12-05T22:00:00+00:00"


def test_a_retried_announcement_tells_only_the_teams_not_told_and_keeps_the_first_times(tmp_path):
    """The task that announces may be retried or cleared after telling some teams (a worker lost, a
    store that did not answer): no team is told twice, and the notice still counts from the first
    announcement (a later one would push production back, an earlier `earliest` never comes)."""
    teams = tuple(Team(name, NotifyConfig(webhook_conn_id=f"{name}_hook")) for name in ("churn", "legacy", "vision"))
    target, place = target_with(24, teams=teams), Folder(tmp_path)
    adapter = adapter_for("mlflow", "http://127.0.0.1:1", None, "production")
    plan = {"from": "2.16.1", "to": "2.16.2"}
    told: list[tuple[str, str]] = []

    def tell_until_legacy(team, subject, _text, _context):
        if team.name == "legacy":
            raise ConnectionError("the worker was lost here")
        told.append((team.name, subject))

    with pytest.raises(ConnectionError):
        announce(target, plan, NOW, timedelta(minutes=30), adapter, {}, place, "manual__1", tell=tell_until_legacy)
    assert [name for name, _ in told] == ["churn"]
    later = NOW + timedelta(hours=3)
    retried = announce(target, plan, later, timedelta(minutes=30), adapter, {}, place, "manual__1",
                       tell=lambda team, subject, _text, _context: told.append((team.name, subject)))
    assert [name for name, _ in told] == ["churn", "legacy", "vision"]
    assert retried["told"] == ["churn", "legacy", "vision"]
    assert (retried["announced_at"], retried["earliest"]) == (NOW.isoformat(), "2026-11-28T10:00:00+00:00")
    assert {subject for _, subject in told} == {
        "[Airlock] mlflow_demo: mlflow will be upgraded 2.16.1 → 2.16.2 at 2026-11-28T10:00:00+00:00"}
    # another run announces afresh; only the newest runs are remembered
    for number in range(2, KEEP_ANNOUNCEMENTS + 3):
        announce(target, plan, later, timedelta(minutes=30), adapter, {}, place, f"manual__{number}",
                 tell=lambda *_: None)
    again = announce(target, plan, later, timedelta(minutes=30), adapter, {}, place, "manual__1",
                     tell=lambda team, *_: told.append((team.name, "again")))
    assert again["announced_at"] == later.isoformat() and len(told) == 6
