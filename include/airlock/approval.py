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


def approval_body(target: str, plan: dict, staging: dict, backups: dict, inventory: dict,
                  downtime: dict | None = None) -> str:
    """Markdown for the approval form; built from task results, never from secrets."""
    lines = [
        f"## Upgrade {target}: {plan['from']} → {plan['to']}",
        "",
        f"**Plan:** {plan['production']['description']}",
        "",
        "### Staging",
        f"- serves **{staging.get('version', '?')}**, healthy at {staging.get('healthy_at', '?')}",
        f"- smoke test: run `{staging.get('smoke_run_id', '?')}` logged and read back",
        f"- data fingerprint equal to before the upgrade: **{staging.get('fingerprint_equal', False)}**",
        "",
        "### Backups (verified: restored into a scratch database and compared)",
    ]
    lines += [f"- {name}: `{b.get('backup_id')}` ({b.get('tables')} tables, {b.get('rows')} rows) at "
              f"`{b.get('location')}`" for name, b in backups.items()]
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
