"""The Upgrades page: history, timelines, the KPIs the vendors' guides ask for, and what is in flight,
rendered as one self-contained HTML page (inline SVG, no external assets: sites are often offline).

Pure: it reads upgrade-log records and what the Airflow plugin (plugins/airlock_upgrades.py) found in
Airflow's database and the targets' stores; it touches nothing itself, so it is tested and benched
without a server.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from urllib.parse import quote

from airlock.progress import clock
from airlock.upgrade_log import note_mark
from airlock.versions import PlanError, parse_version

ROLLBACK_RATE_GOAL = 0.05
"""The ZenML guide's bar: fewer than one upgrade in twenty rolled back."""
PRODUCTION_TOUCHED = ("upgraded", "rolled_back", "kept_after_failed_watch", "finish_failed", "rollback_failed")
"""Outcomes of runs that changed production: what the rollback rate is a share of."""
GATES = ("uat.approval", "drain_decision", "conclude.rollback_decision", "confirm")
DRAINS = ("drain", "wait_longer")
WINDOWS = ("staging_upgrade.window", "window.production")
BAD_OUTCOMES = ("failed", "rolled_back", "rollback_failed", "staging_rollback_failed", "staging_failed",
                "finish_failed", "kept_after_failed_watch", "aborted", "rejected", "cancelled")
PHASE_COLOURS = {"preflight": "#8da0cb", "backup_and_prepare": "#66c2a5", "compatibility": "#a6d854",
                 "staging_upgrade": "#ffd92f", "uat": "#e5c494", "window": "#b3b3b3",
                 "production_upgrade": "#fc8d62", "conclude": "#e78ac3"}


@dataclass(frozen=True)
class TargetView:
    """One target as the page shows it: its config's few facts and its upgrade log."""

    name: str
    platform: str
    records: list[dict]
    downtime_goal_seconds: float = 300
    markers: dict[str, dict] = field(default_factory=dict)
    """In-progress markers found in its environments' stores, by environment."""
    problem: str | None = None
    """Why its log or markers could not be read (the page still shows the other targets)."""

    @property
    def dag_id(self) -> str:
        return f"airlock_upgrade__{self.name}"


@dataclass(frozen=True)
class InFlight:
    """A task instance of an Airlock DAG that is waiting on a person, on running runs or on a window."""

    dag_id: str
    run_id: str
    task_id: str
    state: str
    since: str | None

    @property
    def kind(self) -> str | None:
        if self.task_id.endswith(GATES):
            return "gate"
        if self.task_id.rsplit(".", 1)[-1] in DRAINS:
            return "drain"
        if self.task_id in WINDOWS:
            return "window"
        return None


# -- KPIs --------------------------------------------------------------------------------------------
def upgrades_of(records: list[dict]) -> list[dict]:
    return [record for record in records if record.get("kind") != "rollback"]


def downtimes(records: list[dict]) -> list[float]:
    return [seconds for record in upgrades_of(records)
            if (seconds := record.get("production_downtime_seconds")) is not None]


def rollbacks(records: list[dict]) -> int:
    """Upgrades rolled back by their own run, and production rollbacks on-call ran afterwards."""
    return sum(1 for record in records if record.get("outcome") in ("rolled_back", "rollback_failed")
               and (record.get("kind") != "rollback" or record.get("environment") == "production"))


def production_upgrades(records: list[dict]) -> int:
    return sum(1 for record in upgrades_of(records) if record.get("outcome") in PRODUCTION_TOUCHED)


def staging_to_production_seconds(record: dict) -> float | None:
    """From the end of staging's upgrade to the end of production's: the gate, the window and the
    production upgrade itself."""
    spans = record.get("phase_spans") or {}
    if "staging_upgrade" not in spans or "production_upgrade" not in spans:
        return None
    return (stamp(spans["production_upgrade"][1]) - stamp(spans["staging_upgrade"][1])).total_seconds()


def stamp(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def versions_now(records: list[dict]) -> dict[str, str | None]:
    """What each environment runs, the records applied in date order: an upgrade's versions after
    its run, an on-call rollback's restored version (None: half-upgraded)."""
    now: dict[str, str | None] = {}
    for record in sorted(records, key=lambda r: r.get("date") or ""):
        if record.get("kind") == "rollback":
            if record.get("outcome") == "rolled_back":
                now[record["environment"]] = record.get("to")
        elif "versions_after" in record:
            now.update(record["versions_after"])
        elif record.get("from"):  # recorded before the log said what each environment runs
            now["production"] = record.get("to") if record.get("outcome") == "upgraded" else record["from"]
    return now


def newest_release(records: list[dict]) -> str | None:
    dated = [r for r in upgrades_of(records) if r.get("newest_release")]
    return max(dated, key=lambda r: r.get("date") or "")["newest_release"] if dated else None


def behind(version: str | None, newest: str | None) -> str:
    """How far a version is from the newest release, in the units an operator plans by."""
    if version is None:
        return "unknown (half-upgraded)"
    if newest is None:
        return "newest release unknown"
    try:
        have, want = parse_version(version), parse_version(newest)
    except PlanError:
        return f"{version} (newest {newest})"
    if have >= want:
        return "up to date"
    for unit, index in (("major", 0), ("minor", 1), ("patch", 2)):
        gap = want.release[index] - have.release[index] if len(want.release) > index and len(have.release) > index \
            else 0
        if gap > 0:
            return f"{gap} {unit} release{'s' if gap > 1 else ''} behind ({newest})"
    return f"behind ({newest})"


@dataclass(frozen=True)
class Kpis:
    upgrades: int
    production_upgrades: int
    rollbacks: int
    downtime_median: float | None
    downtime_worst: float | None
    over_goal: int
    staging_to_production_median: float | None

    @property
    def rollback_rate(self) -> float | None:
        return self.rollbacks / self.production_upgrades if self.production_upgrades else None


def kpis(records: list[dict], goal_seconds: float) -> Kpis:
    down = downtimes(records)
    lead = [s for r in upgrades_of(records) if (s := staging_to_production_seconds(r)) is not None]
    return Kpis(upgrades=len(upgrades_of(records)), production_upgrades=production_upgrades(records),
                rollbacks=rollbacks(records), downtime_median=statistics.median(down) if down else None,
                downtime_worst=max(down) if down else None,
                over_goal=sum(1 for seconds in down if seconds > goal_seconds),
                staging_to_production_median=statistics.median(lead) if lead else None)


# -- rendering ---------------------------------------------------------------------------------------
def duration(seconds: float | None) -> str:
    """A downtime keeps its tenth of a second; anything longer reads as progress lines do (clock)."""
    if seconds is None:
        return "—"
    return f"{seconds:.1f} s" if seconds < 60 else clock(seconds)


def short_date(iso: str | None) -> str:
    """2026-11-20 10:00 (UTC offset dropped when it is UTC): the history is read down a column."""
    if not iso:
        return "?"
    return iso.replace("T", " ")[:16] + ("" if iso.endswith(("+00:00", "Z")) or len(iso) <= 19 else f" {iso[19:]}")


def run_link(root: str, record: dict) -> str:
    dag_id = (f"airlock_rollback__{record['target']}" if record.get("kind") == "rollback"
              else f"airlock_upgrade__{record['target']}")
    href = f"{root}dags/{quote(dag_id, safe='')}/runs/{quote(record['run_id'], safe='')}"
    return f'<a href="{escape(href)}" target="_top">{escape(record["run_id"])}</a>'


def timeline_svg(record: dict, width: int = 420) -> str:
    """A bar per phase on the run's own time axis, production's downtime marked in red."""
    spans = record.get("phase_spans") or {}
    if not spans:
        return '<span class="muted">no timeline (recorded before phases were timed)</span>'
    start = min(stamp(span[0]) for span in spans.values())
    end = max(stamp(span[1]) for span in spans.values())
    total = max((end - start).total_seconds(), 1e-3)
    label, row = 130, 11

    def x(iso: str) -> float:
        return label + (width - label) * (stamp(iso) - start).total_seconds() / total

    parts = [f'<svg class="timeline" width="{width}" height="{row * len(spans) + 2}" role="img" '
             f'aria-label="timeline of {escape(record["run_id"])}">']
    for number, (phase, (begin, finish)) in enumerate(spans.items()):
        y = number * row + 1
        left, right = x(begin), x(finish)
        seconds = (stamp(finish) - stamp(begin)).total_seconds()
        parts.append(f'<text x="0" y="{y + 8}" font-size="9">{escape(phase)}</text>'
                     f'<rect class="phase" x="{left:.1f}" y="{y}" width="{max(right - left, 1):.1f}" '
                     f'height="{row - 2}" fill="{PHASE_COLOURS.get(phase, "#999")}">'
                     f'<title>{escape(phase)}: {duration(seconds)}</title></rect>')
    down = record.get("downtime_span")
    if down:
        left, right = x(down[0]), x(down[1])
        parts.append(f'<rect class="downtime" x="{left:.1f}" y="0" width="{max(right - left, 1.5):.1f}" '
                     f'height="{row * len(spans) + 2}" fill="#d62728" fill-opacity="0.35">'
                     f'<title>production down {duration(record.get("production_downtime_seconds"))}'
                     f'{escape(note_mark(record))}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def kpi_cells(k: Kpis, goal_seconds: float) -> str:
    rate = k.rollback_rate
    rate_text = "—" if rate is None else f"{rate:.0%} ({k.rollbacks} of {k.production_upgrades})"
    rate_class = "" if rate is None else ("bad" if rate > ROLLBACK_RATE_GOAL else "good")
    worst_class = "" if k.downtime_worst is None else ("bad" if k.downtime_worst > goal_seconds else "good")
    return (f'<div class="kpi"><b>Downtime per upgrade</b><br>median {duration(k.downtime_median)}, '
            f'<span class="{worst_class}">worst {duration(k.downtime_worst)}</span> '
            f'(goal {duration(goal_seconds)}; {k.over_goal} over)</div>'
            f'<div class="kpi"><b>Rollback rate</b><br><span class="{rate_class}">{rate_text}</span> (goal ≤ '
            f'{ROLLBACK_RATE_GOAL:.0%})</div>'
            f'<div class="kpi"><b>Staging → production</b><br>median {duration(k.staging_to_production_median)}</div>')


def downtime_cell(record: dict) -> str:
    """The downtime; when the record says why it took longer, marked, and the reason on hover."""
    down = duration(record.get("production_downtime_seconds"))
    if not record.get("downtime_note"):
        return f"<td>{down}</td>"
    return f'<td class="slow" title="{escape(record["downtime_note"])}">{down} ⓘ</td>'


def history_rows(root: str, records: list[dict]) -> str:
    rows = []
    for r in sorted(records, key=lambda r: r.get("date") or "", reverse=True):
        outcome = r.get("outcome", "?")
        what = "rollback of " + str(r.get("environment")) if r.get("kind") == "rollback" else "upgrade"
        rows.append(
            f'<tr><td>{escape(short_date(r.get("date")))}</td>'
            f'<td>{escape(what)}</td><td>{escape(str(r.get("from") or "?"))} → {escape(str(r.get("to") or "?"))}</td>'
            f'<td class="{"bad" if outcome in BAD_OUTCOMES else "good"}" title="{escape(str(r.get("detail") or ""))}">'
            f'{escape(outcome)}</td><td>{escape(str(r.get("approver") or "—"))}</td>'
            f'{downtime_cell(r)}'
            f'<td>{"yes" if r.get("rolled_back") else "no"}</td><td>{run_link(root, r)}</td>'
            f'<td>{timeline_svg(r)}</td></tr>')
    return "".join(rows)


def target_section(root: str, view: TargetView) -> str:
    newest = newest_release(view.records)
    versions = versions_now(view.records)
    head = (f'<section class="target" id="target-{escape(view.name)}"><h2>{escape(view.name)} '
            f'<small>{escape(view.platform)}</small></h2>')
    if view.problem:
        head += f'<p class="bad">Could not read everything: {escape(view.problem)}</p>'
    envs = "".join(f"<li>{escape(env)}: {escape(str(versions.get(env) or '?'))} — "
                   f"{escape(behind(versions.get(env), newest))}</li>"
                   for env in ("staging", "production") if env in versions)
    table = ('<table><thead><tr><th>Date</th><th>What</th><th>From → to</th><th>Outcome</th><th>Approver</th>'
             '<th>Prod downtime</th><th>Rolled back</th><th>DAG run</th><th>Timeline</th></tr></thead><tbody>'
             + history_rows(root, view.records) + "</tbody></table>") if view.records else \
        '<p class="muted">No upgrade recorded yet.</p>'
    return (head + f'<ul class="versions">{envs}</ul>'
            f'<div class="kpis">{kpi_cells(kpis(view.records, view.downtime_goal_seconds), view.downtime_goal_seconds)}'
            f"</div>{table}</section>")


def marker_advice(target: str, environment: str, marker: dict, running_runs: set[str]) -> str:
    run = marker.get("run_id", "?")
    what = (f"{environment} of {target} is mid-upgrade ({marker.get('from_version')} → {marker.get('to_version')}) "
            f"by run {run}")
    if run in running_runs:
        return f"{what}, which is still going: nothing to do but follow it."
    rollback_task = "staging_upgrade.rollback_staging" if environment == "staging" else "conclude.rollback_production"
    return (f"{what}, which is over: clear its failed task to go on from where it stopped, or clear "
            f"{rollback_task} to go back; after that, airlock_rollback__{target} restores a backup.")


def in_flight_section(root: str, views: list[TargetView], in_flight: list[InFlight], running_runs: set[str]) -> str:
    labels = {"gate": "waiting at a gate", "drain": "waiting for running pipelines (drain)",
              "window": "waiting for its maintenance window"}
    items = []
    for flight in sorted(in_flight, key=lambda f: f.since or ""):
        if flight.kind is None:
            continue
        href = f"{root}dags/{quote(flight.dag_id, safe='')}/runs/{quote(flight.run_id, safe='')}"
        items.append(f'<li class="{flight.kind}"><a href="{escape(href)}" target="_top">{escape(flight.dag_id)} / '
                     f'{escape(flight.run_id)}</a>: {escape(flight.task_id)} {labels[flight.kind]} since '
                     f'{escape(flight.since or "?")}</li>')
    for view in views:
        for environment, marker in sorted(view.markers.items()):
            items.append(f'<li class="marker">{escape(marker_advice(view.name, environment, marker, running_runs))}'
                         "</li>")
    body = "".join(items) or '<li class="muted">Nothing is waiting and no environment is mid-upgrade.</li>'
    return f'<section id="in-flight"><h2>In flight now</h2><ul>{body}</ul></section>'


STYLE = """body{font-family:system-ui,sans-serif;margin:1em 2em;color:#222}h1{margin-bottom:0}
table{border-collapse:collapse;width:100%;font-size:13px}td,th{border-bottom:1px solid #ddd;padding:3px 6px;
text-align:left;vertical-align:top}td.bad{font-weight:600}td.slow{cursor:help}
.good{color:#1b7f3b}.bad{color:#b00020}.muted{color:#777}.kpis{display:flex;gap:1.5em;margin:.5em 0 1em}
.kpi{background:#f5f5f5;padding:.5em .8em;border-radius:4px}section{margin-bottom:2em}
#in-flight li.marker{color:#b00020}small{color:#777;font-weight:normal}"""


def render_page(views: list[TargetView], in_flight: list[InFlight], running_runs: set[str], root: str,
                generated_at: str) -> str:
    """The whole page: in flight, across targets, then each target (only those the user may read)."""
    every = [record for view in views for record in view.records]
    goal = statistics.median([v.downtime_goal_seconds for v in views]) if views else 300
    overall = (f'<section id="overall"><h2>Across {len(views)} target{"s" if len(views) != 1 else ""}</h2>'
               f'<div class="kpis">{kpi_cells(kpis(every, goal), goal)}</div></section>')
    index = " · ".join(f'<a href="#target-{escape(v.name)}">{escape(v.name)}</a>' for v in views)
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>Airlock upgrades</title>"
            f"<style>{STYLE}</style></head><body><h1>Upgrades</h1>"
            f'<p class="muted">Airlock · generated {escape(generated_at)} · {index}</p>'
            + in_flight_section(root, views, in_flight, running_runs) + overall
            + "".join(target_section(root, view) for view in views) + "</body></html>")

