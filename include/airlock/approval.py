"""The text a human reads at the UAT gate: what was done to staging, what production will go through."""

from __future__ import annotations

from airlock.resolution import NOT_CHECKED


def downtime_estimate(rehearsal: dict | None, staging_start: dict | None) -> dict | None:
    """Production downtime = migration (as rehearsed on a copy of production) + start (as measured on
    staging), after a checksum pass that proves the database unchanged since the backup taken while
    it served; at most a fresh backup and its verification more, when something wrote after that."""
    if not rehearsal or "migration_seconds" not in rehearsal:
        return None
    parts = {"migration (rehearsed on a copy of production)": rehearsal["migration_seconds"],
             "start (as on staging)": (staging_start or {}).get("seconds_to_healthy", 0.0)}
    written_after = rehearsal["backup_seconds"] + rehearsal["verify_seconds"]
    return {"seconds": round(sum(parts.values()), 1), "parts": parts,
            "at_most_seconds": round(sum(parts.values()) + written_after, 1)}


def smoke_summary(smoke: dict) -> str:
    """What the platform's smoke test wrote and read back (a run, a tag, a note)."""
    for key, what in (("run_id", "run"), ("tag", "tag"), ("note", "note")):
        if smoke.get(key):
            return f"{what} `{smoke[key]}` written and read back"
    return smoke.get("read_only") or "not run"


def client_lines(clients: dict | None, artifacts: dict | None) -> list[str]:
    """The compatibility phase's findings: pinned clients per team file, artifacts loaded on staging."""
    lines = ["", "### Clients"]
    if clients:
        lines.append(f"- rule: {clients['rule']}; {clients['old_clients']}")
        for entry in clients["files"]:
            lines.append(f"- {'⚠ ' if entry['status'] in ('incompatible', 'unreadable', 'unpinned') else ''}"
                         f"`{entry['file']}`: {entry['status']} ({entry['detail']})")
            lines += [f"  - {'⚠ ' if said['status'] in ('incompatible', 'conflict') else ''}{check}: {said['status']} "
                      f"({said['detail']})" for check in ("python", "dependencies")
                      if (said := entry.get(check)) and said["detail"] != NOT_CHECKED]
        lines += [f"- ⚠ {problem}" for problem in clients.get("out_of_sync", [])]
    if artifacts and "checked" in artifacts:
        failed = artifacts["failed"]
        lines.append(f"- {artifacts['checked'] - len(failed)} of the {artifacts['checked']} most recent artifacts "
                     f"load with the {artifacts['client_version']} client"
                     + "".join(f"\n  - ⚠ {item['name']}: {item['error']}" for item in failed))
    return lines if len(lines) > 2 else []


def release_lines(notes: dict | None) -> list[str]:
    """The hop's release notes (a link per release) and the guides' breaking notes it crosses."""
    if not notes:
        return []
    lines = ["", f"### Release notes ({len(notes['releases'])} release(s) in this hop)"]
    if notes["releases"]:
        lines.append(", ".join(f"[{r['version']}]({r['url']})" for r in notes["releases"]))
    for note in notes["breaking"]:
        flag = "runs_fail" if note["runs_fail"] else "uninstall_first" if note["uninstall_first"] else None
        lines.append(f"- {'⚠ ' if flag else ''}**{note['version']}**: {note['note']}"
                     + (f" ({flag})" if flag else "") + f" — {note['source']}")
    if notes["drain_required"]:
        lines.append(f"- ⚠ **Production's drain cannot be skipped for this hop** ({notes['drain_required']}): "
                     "the drain decision offers only Wait longer or Abort")
    return lines


def approval_body(target: str, plan: dict, staging: dict, backups: dict, inventory: dict,
                  downtime: dict | None = None, clients: dict | None = None, artifacts: dict | None = None) -> str:
    """Markdown for the approval form; built from task results, never from secrets."""
    lines = [
        f"## Upgrade {target}: {plan['from']} → {plan['to']}",
        "",
        f"**Plan:** {plan['production']['description']}",
        "",
        "### Staging",
        f"- serves **{staging.get('version', '?')}**, healthy at {staging.get('healthy_at', '?')}",
        f"- smoke test: {smoke_summary(staging.get('smoke') or {})}",
        f"- data fingerprint equal to before the upgrade: **{staging.get('fingerprint_equal', False)}**",
        "",
        "### Backups (verified: restored into a scratch database and compared)",
    ]
    lines += [f"- {name}: `{b.get('backup_id')}` ({b.get('tables')} tables, {b.get('rows')} rows) at "
              f"`{b.get('location')}`" for name, b in backups.items()]
    lines += release_lines(plan.get("release_notes"))
    lines += client_lines(clients, artifacts)
    if downtime:
        parts = ", ".join(f"{name} {seconds:.1f} s" if seconds >= 0.1 else f"{name} <0.1 s"
                          for name, seconds in downtime["parts"].items())
        lines += ["", f"### Estimated production downtime: about {downtime['seconds']:.0f} s",
                  f"({parts}, and a checksum pass of the database; up to {downtime['at_most_seconds']:.0f} s if "
                  "something writes to production after the backup taken before the stop)"]
    running = inventory.get("production") or []
    lines += [
        "",
        "### Production will go through",
        "1. wait for running runs to finish" + (f" (now: {len(running)})" if running else " (none now)"),
        "2. take and verify a backup while the drained server still serves; stop it (downtime starts) and prove "
        "the database unchanged since (else take and verify a fresh backup)",
        f"3. migrate the database to {plan['to']}, start {plan['to']}, health, smoke test, fingerprint",
        "4. watch; on any failure: restore the backup, start the old version, prove the data equal",
        "",
        "**Approve** to upgrade production. **Reject** leaves production untouched.",
    ]
    return "\n".join(lines)


def auto_approval(auto_approve: str, plan: dict) -> str | None:
    """Why the UAT gate need not ask (a patch upgrade of a target that says auto_approve: patch), or
    None: minor and major upgrades always wait for an approver."""
    if auto_approve == "patch" and plan["production"]["change"] == "patch":
        return f"patch upgrade {plan['from']} → {plan['to']}; the target says auto_approve: patch"
    return None
