"""The targets file's operational settings: when upgrades run by themselves (schedule, release
source), when an environment may be taken down (maintenance windows), and who is told (notify)."""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass, replace

from airlock.config_reader import CONN_ID, MINUTES_MAX, Reader
from airlock.windows import DAYS, Window, parse_clock


def read_timezone(r: Reader, key: str = "timezone") -> str:
    """An IANA time zone name (Europe/Berlin, UTC): wall-clock times follow its daylight saving."""
    name = r.text(key)
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        r.fail(key, f"{name!r} is not a time zone name (e.g. Europe/Berlin, America/New_York, UTC)")
    return name


@dataclass(frozen=True)
class MaintenanceConfig:
    """When an environment may be taken down: its windows (several allowed), and how long its upgrade
    is expected to take until the upgrade log has past runs of it to take the median of."""

    windows: tuple[Window, ...]
    expected_minutes: float = 60

    @classmethod
    def read(cls, r: Reader) -> MaintenanceConfig:
        entries = r._get("windows", True, [])
        if not isinstance(entries, list) or not entries:
            r.fail("windows", "must be a list of windows, e.g. [{days: [sat, sun], start: '22:00', end: '04:00', "
                              "timezone: Europe/Berlin}]")
        windows = tuple(read_window(Reader(entry, f"{r.where}.windows[{index}]", r.source, r.target))
                        for index, entry in enumerate(entries))
        config = cls(windows, r.number("expected_minutes", cls.expected_minutes, minimum=1, maximum=MINUTES_MAX))
        r.done()
        return config


def read_window(r: Reader) -> Window:
    days = r.names("days")
    if not days:
        r.fail("days", f"is required: the days the window opens on ({', '.join(DAYS)})")
    unknown = [day for day in days if day.lower() not in DAYS]
    if unknown:
        r.fail("days", f"{unknown[0]!r} is not a day ({', '.join(DAYS)})")
    clocks = {}
    for key in ("start", "end"):
        try:
            clocks[key] = parse_clock(r.text(key))
        except ValueError as error:
            r.fail(key, str(error))
    window = Window(frozenset(DAYS.index(day.lower()) for day in days), clocks["start"], clocks["end"],
                    read_timezone(r))
    r.done()
    return window


NOTIFY_EVENTS = ("approval", "decision", "failed", "rolled_back", "finished")
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}")


@dataclass(frozen=True)
class NotifyConfig:
    """Who hears of what: by e-mail (an SMTP connection) and/or a Slack-compatible webhook (an HTTP
    connection whose host is the hook's whole URL: its path is the secret). Events: approval (the UAT
    gate waits), decision (on-call's drain or rollback decision, or a rollback to confirm), failed,
    rolled_back, finished."""

    email_conn_id: str | None = None
    to: tuple[str, ...] = ()
    from_email: str | None = None
    webhook_conn_id: str | None = None
    events: frozenset[str] = frozenset(NOTIFY_EVENTS)

    def wants(self, event: str) -> bool:
        return event in self.events and bool(self.email_conn_id or self.webhook_conn_id)

    @classmethod
    def read(cls, r: Reader) -> NotifyConfig:
        email, webhook = r.child("email", required=False), r.child("webhook", required=False)
        to = tuple(email.names("to")) if email.data else ()
        for index, address in enumerate(to):
            if not EMAIL.fullmatch(address):
                email.fail(f"to[{index}]", f"{address!r} is not an e-mail address")
        if email.data and not to:
            email.fail("to", "is required: who gets the e-mails")
        events = r.names("events") or list(NOTIFY_EVENTS)
        for index, event in enumerate(events):
            if event not in NOTIFY_EVENTS:
                r.fail(f"events[{index}]", f"{event!r} is not an event ({', '.join(NOTIFY_EVENTS)})")
        config = cls(email_conn_id=email.text("conn_id", pattern=CONN_ID, expand=True) if email.data else None,
                     to=to, from_email=email.optional_text("from"),
                     webhook_conn_id=webhook.text("conn_id", pattern=CONN_ID, expand=True) if webhook.data else None,
                     events=frozenset(events))
        email.done()
        webhook.done()
        r.done()
        return config


TEAM_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Team:
    """A team that uses the platform: how to reach it, and its requirement/lock files (the client
    version it must move to is read from them)."""

    name: str
    notify: NotifyConfig
    client_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class TeamsConfig:
    """Who is told before and after production's upgrade (the guides: "notify all teams at least 1
    week before", "prompt all users to upgrade their local client"): an announcement at least
    `notice_hours` before production's upgrade starts, and, once it is upgraded, the client version
    each team must move to."""

    notice_hours: float = 0
    members: tuple[Team, ...] = ()

    @classmethod
    def read(cls, r: Reader, from_email: str | None = None) -> TeamsConfig:
        """`from_email`: the sender of a team's e-mails that names none (the target's notify.email.from)."""
        notice = r.number("notice_hours", 0, minimum=0, maximum=MINUTES_MAX / 60)
        listed = r.child("members", required=False)
        members = []
        for name in listed.data:
            if not isinstance(name, str) or not TEAM_NAME.fullmatch(name):
                listed.fail(str(name), "is not a team name (letters, digits, '_', '.', '-')")
            team = listed.child(name)
            notify = NotifyConfig.read(team.child("notify"))
            if not (notify.email_conn_id or notify.webhook_conn_id):
                team.fail("notify", "names no channel: give email: {conn_id, to} or webhook: {conn_id}")
            notify = replace(notify, from_email=notify.from_email or from_email)
            members.append(Team(name, notify, tuple(team.paths("client_files"))))
            team.done()
        listed.done()
        r.done()
        return cls(notice, tuple(members))


@dataclass(frozen=True)
class ScheduleConfig:
    """Recurring patch upgrades: a cron schedule in a time zone. A scheduled run upgrades to the newest
    patch of the minor release production runs (`auto_upgrade: patch`, the only kind there is)."""

    cron: str
    timezone: str
    auto_upgrade: str = "patch"

    @classmethod
    def read(cls, r: Reader, auto_upgrade: str | None) -> ScheduleConfig:
        cron = r.text("cron")
        if auto_upgrade is None:
            r.fail("", "needs auto_upgrade: patch beside it (a scheduled run applies the newest patch release)")
        if problem := cron_problem(cron):
            r.fail("cron", f"{cron!r} is not a valid cron expression ({problem})")
        config = cls(cron, read_timezone(r), auto_upgrade)
        r.done()
        return config


def cron_problem(cron: str) -> str | None:
    """What Airflow's cron parser (croniter, installed with Airflow) finds wrong with `cron`."""
    try:
        from croniter import croniter
    except ImportError:  # outside Airflow: the scheduler checks it when it parses the DAG
        return None
    try:
        croniter(cron)
    except (ValueError, KeyError) as error:
        return str(error)
    return None


@dataclass(frozen=True)
class ReleaseSource:
    """Where the platform's published versions are read: the package index (pip), or, for air-gapped
    sites, a file or URL listing them (one per line, or a JSON list)."""

    file: str | None = None
    url: str | None = None

    def describe(self) -> str:
        return f"file {self.file}" if self.file else f"URL {self.url}" if self.url else "the package index"

    @classmethod
    def read(cls, r: Reader) -> ReleaseSource:
        given = [key for key in ("file", "url") if r.data.get(key) is not None]
        if len(given) > 1:
            r.fail("", "names either a file or a url, not both")
        config = cls(file=r.path("file") if "file" in given else None, url=r.url("url") if "url" in given else None)
        r.used.update(("file", "url"))
        r.done()
        return config


FLEET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class FleetConfig:
    """Several targets upgraded in waves: `wave_size` at a time, `pause_minutes` between waves; a wave
    with a failure or a rollback stops the waves after it."""

    name: str
    targets: tuple[str, ...]
    wave_size: int = 1
    pause_minutes: float = 0

    @property
    def dag_id(self) -> str:
        return f"airlock_fleet__{self.name}"

    @property
    def waves(self) -> list[tuple[str, ...]]:
        return [self.targets[i:i + self.wave_size] for i in range(0, len(self.targets), self.wave_size)]

    @classmethod
    def read(cls, name: str, r: Reader, known: set[str]) -> FleetConfig:
        if not FLEET_NAME.fullmatch(name):
            r.fail("", f"fleet names must match {FLEET_NAME.pattern}")
        targets = r.names("targets")
        if not targets:
            r.fail("targets", "is required: the targets this fleet upgrades, in order")
        for index, target in enumerate(targets):
            if target not in known:
                r.fail(f"targets[{index}]",
                       f"{target!r} is not a target of this file (have: {', '.join(sorted(known))})")
            if target in targets[:index]:
                r.fail(f"targets[{index}]", f"{target!r} is listed twice")
        config = cls(name, tuple(targets),
                     int(r.number("wave_size", 1, minimum=1, maximum=1000, integer=True)),
                     r.number("pause_minutes", 0, minimum=0, maximum=MINUTES_MAX))
        r.done()
        return config
