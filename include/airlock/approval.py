"""The text a human reads at the UAT gate: what was done to staging, what production will go through."""

from __future__ import annotations


def downtime_estimate(rehearsal: dict | None, staging_start: dict | None) -> dict | None:
    """Production downtime = final backup + its verification + migration (as rehearsed on a copy
    of production) + start (as measured on staging)."""
    if not rehearsal or "migration_seconds" not in rehearsal:
        return None
    parts = {"backup": rehearsal["backup_seconds"], "verification": rehearsal["verify_seconds"],
             "migration (rehearsed on a copy of production)": rehearsal["migration_seconds"],
             "start (as on staging)": (staging_start or {}).get("seconds_to_healthy", 0.0)}
    return {"seconds": round(sum(parts.values()), 1), "parts": parts}


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
        lines += [f"- {'⚠ ' if entry['status'] in ('incompatible', 'unreadable', 'unpinned') else ''}"
                  f"`{entry['file']}`: {entry['status']} ({entry['detail']})" for entry in clients["files"]]
    if artifacts and "checked" in artifacts:
        failed = artifacts["failed"]
        lines.append(f"- {artifacts['checked'] - len(failed)} of the {artifacts['checked']} most recent artifacts "
                     f"load with the {artifacts['client_version']} client"
                     + "".join(f"\n  - ⚠ {item['name']}: {item['error']}" for item in failed))
    return lines if len(lines) > 2 else []


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
    lines += client_lines(clients, artifacts)
    if downtime:
        parts = ", ".join(f"{name} {seconds:.1f} s" if seconds >= 0.1 else f"{name} <0.1 s"
                          for name, seconds in downtime["parts"].items())
        lines += ["", f"### Estimated production downtime: about {downtime['seconds']:.0f} s", f"({parts})"]
    running = inventory.get("production") or []
    lines += [
        "",
        "### Production will go through",
        "1. wait for running runs to finish" + (f" (now: {len(running)})" if running else " (none now)"),
        "2. stop the server (downtime starts), take and verify a fresh backup",
        f"3. migrate the database to {plan['to']}, start {plan['to']}, health, smoke test, fingerprint",
        "4. watch; on any failure: restore the backup, start the old version, prove the data equal",
        "",
        "**Approve** to upgrade production. **Reject** leaves production untouched.",
    ]
    return "\n".join(lines)
