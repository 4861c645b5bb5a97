"""Telling the teams that use the platform (the ZenML guide: "notify all teams at least 1 week
before", "prompt all users to upgrade their local client"; Sematic's: notify before and after the
window): an announcement when production's upgrade is planned, at least the target's notice ahead,
and once production is upgraded, the exact client version each team must move to, from its own
requirement and lock files. A team that cannot be reached is logged; the upgrade goes on."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from airlock.clients import judge_file
from airlock.config import TargetConfig
from airlock.config_operations import Team
from airlock.platforms.base import PlatformAdapter
from airlock.upgrade_log import LogPlace
from airlock.windows import WindowError, next_slot


def client_advice(adapter: PlatformAdapter, team: Team, version: str) -> list[str]:
    """Per file of the team: whether its pinned client works with `version`, else the exact pin to
    move to (the server's own version: the one release every platform's rule accepts)."""
    if not team.client_files:
        return [f"(no files of yours are listed: make sure your {adapter.package} client works with {version})"]
    advice = []
    for path in team.client_files:
        verdict = judge_file(path, adapter.package, version, adapter.client_problem)
        if verdict.status == "compatible":
            advice.append(f"{path}: {verdict.detail} works with {adapter.name} {version}: no need to move")
        elif verdict.status == "unreadable":
            advice.append(f"{path}: could not be read ({verdict.detail}): pin {adapter.package}=={version}")
        elif verdict.status == "not_listed":
            advice.append(f"{path}: does not list {adapter.package}: nothing to move")
        else:
            advice.append(f"{path}: {verdict.detail}: move to {adapter.package}=={version}")
    return advice


def planned_start(target: TargetConfig, now: datetime, expected: timedelta) -> dict:
    """The earliest production's upgrade may start (now + the notice) and when it is planned to: the
    opening of the first maintenance window it fits in from then, or then."""
    earliest = now + timedelta(hours=target.teams.notice_hours)
    maintenance = target.environment("production").maintenance
    starts, where = earliest, "as soon as the notice is over"
    if maintenance is not None:
        try:
            slot = next_slot(maintenance.windows, earliest, expected)
            starts = slot.starts
            where = f"in the maintenance window {slot.opens.isoformat(timespec='minutes')} → " \
                    f"{slot.closes.isoformat(timespec='minutes')}"
        except WindowError as error:
            where = f"in a maintenance window ({error})"
    return {"announced_at": now.isoformat(timespec="seconds"), "earliest": earliest.isoformat(timespec="seconds"),
            "starts": starts.isoformat(timespec="seconds"), "where": where}


def announcement(target: TargetConfig, plan: dict, start: dict, team: Team, adapter: PlatformAdapter) -> tuple:
    subject = (f"[Airlock] {target.name}: {adapter.name} will be upgraded {plan['from']} → {plan['to']} "
               f"at {start['starts']}")
    lines = [f"The production {adapter.name} server of {target.name} will be upgraded from {plan['from']} to "
             f"{plan['to']}, starting at {start['starts']} ({start['where']}). It is down while it is upgraded; "
             "runs still going then are waited for or stopped by on-call.",
             "", f"What {team.name} needs to do:", *(f"- {line}" for line in client_advice(adapter, team, plan["to"]))]
    return subject, "\n".join(lines)


def upgraded(target: TargetConfig, plan: dict, team: Team, adapter: PlatformAdapter) -> tuple:
    subject = f"[Airlock] {target.name}: {adapter.name} now runs {plan['to']}: move your clients"
    lines = [f"The production {adapter.name} server of {target.name} was upgraded from {plan['from']} to "
             f"{plan['to']}.", "", f"What {team.name} needs to do now:",
             *(f"- {line}" for line in client_advice(adapter, team, plan["to"]))]
    return subject, "\n".join(lines)


def tell_team(team: Team, subject: str, text: str, context) -> None:
    """Through the team's own channels (a channel that fails is logged; the upgrade goes on)."""
    from airlock.notify import AirlockNotifier

    AirlockNotifier(team.notify, lambda _: (subject, text)).notify(context)


def tell_each(target: TargetConfig, message, context) -> list[str]:
    """Send each team its message(team) through its own channels; the teams told."""
    for team in target.teams.members:
        tell_team(team, *message(team), context)
    return [team.name for team in target.teams.members]


ANNOUNCEMENTS = "announcements.json"
KEEP_ANNOUNCEMENTS = 20
"""The runs whose announcements are remembered (the newest), beside the target's upgrade log."""


def announce(target: TargetConfig, plan: dict, now: datetime, expected: timedelta, adapter: PlatformAdapter,
             context, place: LogPlace, run_id: str, tell=tell_team) -> dict:
    """Tell every team when production's upgrade is planned; the earliest it may start is kept (the
    window and the notice wait start production no sooner). Each team told is recorded in `place`
    (where the upgrade log lives) before the next: a retried or cleared task tells only the teams
    not told yet, and keeps the first announcement's times, so the notice is never shortened."""
    records = json.loads(place.read_target_text(ANNOUNCEMENTS) or "{}")
    record = records.pop(run_id, None) or {**planned_start(target, now, expected), "told": []}
    for team in target.teams.members:
        if team.name not in record["told"]:
            tell(team, *announcement(target, plan, record, team, adapter), context)
            record["told"].append(team.name)
            records[run_id] = record
            newest = dict(list(records.items())[-KEEP_ANNOUNCEMENTS:])
            place.write_target_text(ANNOUNCEMENTS, json.dumps(newest, indent=1, sort_keys=False))
    return {**record, "notice_hours": target.teams.notice_hours}


def notice_slot(announced: dict) -> dict:
    """For the notice's wait (no maintenance window): production starts once the notice is over."""
    return {"environment": "production", "starts": announced["earliest"],
            "waiting_for": f"the {announced['notice_hours']:g} h notice the teams were given on "
                           f"{announced['announced_at']}"}
