"""The upgrade log: one JSON line per run, and a Markdown table rendered from all of them.

In the spirit of the vendors' "maintain an upgrade log": date, target, from → to, how long each
phase took, how long production did not answer, outcome, whether it was rolled back, who approved.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Protocol

JSONL = "upgrade-log.jsonl"
MARKDOWN = "upgrade-log.md"
PHASES = ("preflight", "backup_and_prepare", "compatibility", "staging_upgrade", "uat", "window",
          "production_upgrade", "conclude")
WINDOW_TASKS = {"staging": "staging_upgrade.window", "production": "window.production"}


def seconds_between(start_iso: str | None, end_iso: str | None) -> float | None:
    if not start_iso or not end_iso:
        return None
    return round((datetime.fromisoformat(end_iso) - datetime.fromisoformat(start_iso)).total_seconds(), 1)


def phase_spans(results: dict[str, dict | None]) -> dict[str, list[str]]:
    """[start, end] of each phase, from its first task's start to its last task's end, in the DAG's
    order: the Upgrades page draws a run's timeline from them."""
    times: dict[str, list[str]] = {}
    for task_id, result in results.items():
        if isinstance(result, dict) and result.get("_started_at"):
            phase = task_id.split(".", 1)[0]
            times.setdefault(phase, []).extend([result["_started_at"], result["_finished_at"]])
    ordered = sorted(times.items(), key=lambda item: PHASES.index(item[0]) if item[0] in PHASES else len(PHASES))
    return {phase: [min(stamps, key=datetime.fromisoformat), max(stamps, key=datetime.fromisoformat)]
            for phase, stamps in ordered}


def phase_seconds(results: dict[str, dict | None]) -> dict[str, float]:
    """Wall-clock span of each phase, from the first task's start to the last task's end."""
    return {phase: seconds_between(*span) or 0.0 for phase, span in phase_spans(results).items()}


def versions_after(outcome: str, results: dict[str, dict | None]) -> dict[str, str | None]:
    """What each environment runs once the run is over, as far as the run knows (None: half-upgraded;
    nothing when the run never learnt the versions)."""
    plan = results.get("preflight.plan") or {}
    old, new = plan.get("from"), plan.get("to")
    if not old:
        return {}
    production = {"upgraded": new, "finish_failed": new, "kept_after_failed_watch": new,
                  "rollback_failed": None}.get(outcome, old)
    staging_plan = plan.get("staging") or {}
    staging = (new if results.get("staging_upgrade.finish_staging") or staging_plan.get("current") == new
               else None if outcome == "staging_rollback_failed" else staging_plan.get("current", old))
    return {"staging": staging, "production": production}


def decide_outcome(results: dict[str, dict | None]) -> tuple[str, str]:
    """(outcome, one sentence for on-call) from what the tasks returned."""
    plan = results.get("preflight.plan")
    gate = results.get("uat.approval") or {}
    prod_rollback = results.get("conclude.rollback_production") or {}
    staging_rollback = results.get("staging_upgrade.rollback_staging") or {}
    finished = results.get("conclude.finish") or {}
    if not plan:
        return "failed", "preflight failed: nothing was touched"
    if plan["production"]["change"] == "none":
        return "nothing_to_do", plan["production"]["description"]
    if results.get("compatibility.proceed") is False:
        return "planned", f"plan-only run: {plan['production']['description']}; nothing was touched"
    if prod_rollback.get("rolled_back"):
        kept = prod_rollback.get("post_upgrade_backup") or {}
        kept_note = (f"; what production wrote since the upgrade is kept in {kept['backup_id']} ({kept['location']})"
                     if kept else "")
        return "rolled_back", (f"production rolled back to {prod_rollback['version']}; "
                               f"database restored and fingerprint equal to before{kept_note}")
    if finished.get("finished"):
        return "upgraded", f"production upgraded {plan['from']} → {plan['to']}"
    kept_version = results.get("conclude.keep_new_version") or {}
    if kept_version.get("kept"):
        return "kept_after_failed_watch", (
            f"production failed its watch and KEEPS {kept_version['kept']} as {kept_version['decided_by']} decided; "
            f"investigate. The marker {kept_version['marker']} stays: to roll back later, clear "
            "conclude.rollback_decision and answer Roll back (what was written is backed up first); once production "
            "is sound, clear conclude.finish")
    if results.get("production_upgrade.watch") and "production" in (results.get("_half_upgraded") or {}):
        return "finish_failed", (f"production runs {plan['to']} and passed its watch; only conclude.finish failed, so "
                                 f"the marker {results['_half_upgraded']['production']} is still there: clear "
                                 "conclude.finish (nothing needs rolling back)")
    aborted = [env for env in ("staging", "production")
               if (results.get(f"{env}_upgrade.drain_decision") or {}).get("chosen_options") == ["Abort"]]
    if aborted:
        where, decision = aborted[0], results[f"{aborted[0]}_upgrade.drain_decision"]
        state = "production untouched" if where == "staging" else f"staging already runs {plan['to']}"
        return "aborted", (f"aborted at the {where} drain by {approver_of(decision) or 'nobody (no answer)'}, runs "
                           f"still going: nothing stopped on {where}; {state}")
    if gate.get("chosen_options") == ["Reject"]:
        return "rejected", f"rejected at the UAT gate by {approver_of(gate)}: production untouched"
    if staging_rollback.get("rolled_back"):
        return "staging_failed", "staging failed and was rolled back; production untouched"
    if "staging" in (results.get("_half_upgraded") or {}):
        return "staging_rollback_failed", (f"staging is HALF-UPGRADED and its rollback failed (marker "
                                           f"{results['_half_upgraded']['staging']}); production untouched. "
                                           "See staging_upgrade.rollback_staging's log, then clear it")
    if "production" in (results.get("_half_upgraded") or {}):
        return "rollback_failed", (f"production is HALF-UPGRADED and its rollback FAILED (marker "
                                   f"{results['_half_upgraded']['production']}): see conclude.rollback_production's "
                                   "log, then clear it")
    return "failed", "the upgrade stopped before production was changed; see the failed task's log"


def approver_of(gate: dict) -> str | None:
    """Who answered a gate; a gate that timed out took its default, answered by nobody."""
    if gate.get("auto_approved"):
        return f"auto-approved ({gate['auto_approved']})"
    if gate.get("chosen_options") and not gate.get("responded_by_user"):
        return "nobody (no answer before the timeout)"
    user = gate.get("responded_by_user") or {}
    return user.get("name") or user.get("id")


def build_record(target: str, run_id: str, started_at: str, results: dict[str, dict | None]) -> dict:
    plan = results.get("preflight.plan") or {}
    outcome, detail = decide_outcome(results)
    freeze = results.get("production_upgrade.stop") or {}
    back_up = (results.get("conclude.rollback_production") or {}).get("healthy_at") or \
        (results.get("production_upgrade.health") or {}).get("healthy_at")
    return {
        "date": started_at, "target": target, "run_id": run_id,
        "from": plan.get("from"), "to": plan.get("to"), "outcome": outcome, "detail": detail,
        "rolled_back": outcome == "rolled_back",
        "approver": approver_of(results.get("uat.approval") or {}),
        "phase_seconds": phase_seconds(results), "phase_spans": phase_spans(results),
        "production_downtime_seconds": seconds_between(freeze.get("last_answered_at"), back_up),
        "downtime_span": [freeze["last_answered_at"], back_up] if freeze.get("last_answered_at") and back_up else None,
        "newest_release": plan.get("newest_release"), "versions_after": versions_after(outcome, results),
        "trigger": (results.get("preflight.validate") or {}).get("trigger", "manual"),
        "windows": {env: results[task] for env, task in WINDOW_TASKS.items() if results.get(task)},
        "downtime_note": downtime_note(results),
    }


def downtime_note(results: dict[str, dict | None]) -> str | None:
    """Why production's downtime took longer than the migration and the start, when the run knows."""
    refused = (results.get("production_upgrade.backup") or {}).get("not_adopted")
    return f"the final backup was dumped and verified with the server down: {refused}" if refused else None


def rollback_record(target: str, run_id: str, started_at: str, plan: dict | None, decision: dict | None,
                    rolled_back: dict | None, armed: dict | None) -> dict:
    """The upgrade log's record of an on-call rollback (airlock_rollback__<target>)."""
    plan, decision, rolled_back = plan or {}, decision or {}, rolled_back or {}
    env, backup_id = plan.get("environment"), plan.get("backup_id")
    if not plan:
        outcome, detail = "failed", "the rollback's plan failed (see its log): nothing was touched"
    elif decision.get("chosen_options") != ["Approve"]:
        who = (decision.get("responded_by_user") or {}).get("name")
        outcome, detail = "cancelled", (f"rejected by {who}" if who else "not confirmed (no answer before the "
                                        "timeout)") + ": nothing was touched"
    elif rolled_back.get("rolled_back"):
        kept = (rolled_back.get("post_upgrade_backup") or {}).get("backup_id")
        outcome, detail = "rolled_back", (f"{env} restored from {backup_id} and runs {rolled_back['version']}"
                                          + (f"; the database as it was before is kept in {kept}" if kept else ""))
    elif armed:
        outcome, detail = "rollback_failed", (f"{env} is HALF-ROLLED-BACK (marker {armed['marker']}): see the "
                                              "rollback task's log, then clear it")
    else:
        outcome, detail = "failed", "the rollback stopped before anything was touched; see the failed task's log"
    return {"date": started_at, "target": target, "run_id": run_id, "kind": "rollback", "environment": env,
            "from": plan.get("version_now"), "to": plan.get("restores_version"), "backup_id": backup_id,
            "outcome": outcome, "detail": detail, "rolled_back": outcome == "rolled_back",
            "approver": approver_of(decision) if decision else None, "phase_seconds": {},
            "production_downtime_seconds": None}


def past_upgrade_seconds(records: list[dict], target: str, environment: str) -> list[float]:
    """How long each past upgrade of this target's environment took (its phase; the wait for its
    maintenance window is not in it): what the next one is expected to take."""
    return [seconds for record in records if record.get("target") == target
            and (seconds := (record.get("phase_seconds") or {}).get(f"{environment}_upgrade"))]


class LogPlace(Protocol):
    """Where a target's upgrade log lives: a local folder, or its backup store (S3), so that every
    worker and the Upgrades page read the same log."""

    def read_target_text(self, name: str) -> str | None: ...

    def write_target_text(self, name: str, text: str) -> str:
        """Write, and return where it went."""


class Folder:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def read_target_text(self, name: str) -> str | None:
        path = self.directory / name
        return path.read_text() if path.is_file() else None

    def write_target_text(self, name: str, text: str) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        staged = self.directory / (name + ".tmp")
        staged.write_text(text)
        os.replace(staged, self.directory / name)
        return str(self.directory / name)


def append(place: LogPlace | str | Path, record: dict) -> tuple[str, str]:
    """Add a record (once per run: a retried report replaces its own line) and re-render the table;
    (where the table is, the table)."""
    place = Folder(place) if isinstance(place, str | Path) else place
    records = [r for r in read(place) if r.get("run_id") != record["run_id"]] + [record]
    place.write_target_text(JSONL, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    table = render_markdown(records)
    return place.write_target_text(MARKDOWN, table), table


def read(place: LogPlace | str | Path) -> list[dict]:
    place = Folder(place) if isinstance(place, str | Path) else place
    text = place.read_target_text(JSONL) or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def note_mark(record: dict) -> str:
    """After a downtime: why it took longer, when the record says."""
    return f" ({record['downtime_note']})" if record.get("downtime_note") else ""


def render_markdown(records: list[dict]) -> str:
    header = ("| Date | Target | From → To | Outcome | Rolled back | Approver | Prod downtime | Phases (s) |\n"
              "|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in records:
        phases = ", ".join(f"{name} {secs:g}" for name, secs in r.get("phase_seconds", {}).items())
        downtime = r.get("production_downtime_seconds")
        lines.append(
            f"| {r['date']} | {r['target']} | {r.get('from') or '?'} → {r.get('to') or '?'} | {r['outcome']} | "
            f"{'yes' if r.get('rolled_back') else 'no'} | {r.get('approver') or '—'} | "
            f"{'—' if downtime is None else f'{downtime:g} s'}{note_mark(r)} | {phases} |")
    return "# Upgrade log\n\n" + header + "\n".join(lines) + "\n"
