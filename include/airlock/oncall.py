"""On-call's rollback, after an upgrade has finished: which backup set, what restoring it means, and
the upgrade's own rollback armed with it. Also the "what now" that ends a failed task's log.

The rollback itself is `steps.rollback`, the one the upgrade DAG runs: it backs up the database as
it is first, restores the set, brings the recorded version back and checks the fingerprint.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from airlock.artifacts.base import ArtifactError, compare_artifacts
from airlock.backups import Manifest, is_verified, read_manifest, verify_backup
from airlock.environment import Environment
from airlock.steps import FINAL, UpgradeError, marker_of_run, users_data, written_since
from airlock.stores.base import FINGERPRINT

NOT_CARRIED_OVER = ("revision", "image_tag")
"""What of the serving deployment's snapshot a rollback after the upgrade must not go back to: the
Helm revision now is the new version's; the old version is rolled out as a new revision instead."""


UPGRADED = ("upgraded", "kept_after_failed_watch")
"""Outcomes in the upgrade log after which the environment runs the new version."""


def latest_final_backup(env: Environment, records: list[dict]) -> str:
    """The backup a rollback restores by default: the final one (taken with the server stopped, just
    before the migration) of the last upgrade of this environment that went through (`records`, the
    upgrade log); a later run that was rolled back left the old version serving, and its final set
    would restore nothing but lose what was written since. Without such a run, the newest final set."""
    finals = [read_manifest(env.store, backup_id) for backup_id in env.store.backups()
              if backup_id.startswith(f"{env.name}--{FINAL}--")]
    chosen = choose_final_backup([manifest for manifest in finals if is_verified(env.store, manifest.backup_id)],
                                 records, env.target.name)
    if chosen is None:
        raise UpgradeError(f"{env.name}: no verified final backup of an upgrade in {env.store.location('')}: "
                           "name the set to restore in the param backup_id. Nothing was touched.")
    return chosen.backup_id


def choose_final_backup(finals: list[Manifest], records: list[dict], target: str) -> Manifest | None:
    """The newest final set taken by a run the log says upgraded; else the newest final set."""
    upgraded = {record["run_id"] for record in records
                if record.get("target") == target and record.get("outcome") in UPGRADED}
    newest_first = sorted(finals, key=lambda manifest: manifest.created_at, reverse=True)
    return next((manifest for manifest in newest_first if manifest.run_id in upgraded),
                newest_first[0] if newest_first else None)


def rollback_plan(env: Environment, backup_id: str, records: list[dict]) -> dict:
    """What restoring `backup_id` (default: see latest_final_backup, from the upgrade log's `records`)
    over the environment means, for the confirmation gate: versions, the set's age, size and rows per
    table, and what was written since it was taken."""
    marker = env.store.in_progress()
    if marker:
        raise UpgradeError(f"{env.name} carries the marker of run {marker['run_id']} ({marker.get('from_version')} → "
                           f"{marker.get('to_version')}): that run's own rollback task restores it (clear it). "
                           "Nothing was touched.")
    chosen = backup_id.strip() or latest_final_backup(env, records)
    manifest = read_manifest(env.store, chosen)
    if manifest.environment != env.name:
        raise UpgradeError(f"backup {chosen} is of {manifest.environment}, not {env.name}. Nothing was touched.")
    verify_backup(env.database, env.store, chosen)  # once: a verified set is not restored into scratch again
    fingerprint = env.store.read_json(chosen, FINGERPRINT)
    return {"environment": env.name, "backup_id": chosen, "location": env.store.location(chosen),
            "purpose": manifest.purpose, "taken_by_run": manifest.run_id, "taken_at": manifest.created_at,
            "age_hours": round(age_seconds(manifest) / 3600, 1),
            "bytes": sum(int(entry["bytes"]) for entry in manifest.files.values()),
            "rows": {table: int(stats["rows"]) for table, stats in sorted(manifest.tables.items())},
            "version_now": served_version(env), "restores_version": manifest.platform_version,
            "fingerprint": fingerprint.get("fingerprint") if fingerprint else None,
            "artifacts": artifacts_to_put_back(env, chosen), **lost_since(env, manifest)}


def artifacts_to_put_back(env: Environment, backup_id: str) -> dict | None:
    """What the rollback would do to the artifact store: the artifacts of the set's inventory that
    are deleted or changed now (put back), and how many were added since (left alone)."""
    if env.artifacts is None:
        return None
    try:
        return compare_artifacts(env.artifacts, env.store, backup_id)
    except ArtifactError as error:
        return {"unknown": str(error)[:300]}


def age_seconds(manifest: Manifest) -> float:
    return (datetime.now(UTC) - datetime.fromisoformat(manifest.created_at)).total_seconds()


def served_version(env: Environment) -> str:
    try:
        return env.adapter.server_version()
    except Exception as error:  # a server down is a reason to roll back, not to refuse
        return f"unknown (the server does not answer: {str(error)[:200]})"


def lost_since(env: Environment, manifest: Manifest) -> dict:
    """Tables written since the set was taken (they are backed up before the restore, but will not be
    in the restored database)."""
    try:
        now = env.database.table_stats()
    except Exception as error:
        return {"lost": [], "lost_unknown": f"the database could not be read: {str(error)[:200]}"}
    return {"lost": written_since(users_data(env, manifest.tables), users_data(env, now)), "lost_unknown": None}


def arm_rollback(env: Environment, run_id: str, plan: dict) -> dict:
    """Record the marker the upgrade's rollback works from, as if this run had upgraded the
    environment from the set's version: the rollback then restores the set, with the database as it
    is backed up first. Idempotent: a retry finds its own marker."""
    marker = marker_of_run(env, run_id)
    if marker is None:
        other = env.store.in_progress()
        if other:
            raise UpgradeError(f"{env.name} now carries the marker of run {other['run_id']}: an upgrade started "
                               "after this rollback was confirmed. Nothing was touched.")
        deployment = {key: value for key, value in env.driver.snapshot().items() if key not in NOT_CARRIED_OVER}
        marker = {"run_id": run_id, "environment": env.name, "kind": "on-call rollback",
                  "from_version": plan["restores_version"], "to_version": plan["version_now"],
                  "fingerprint": plan["fingerprint"], "prepare_backup_id": plan["backup_id"],
                  "final_backup_id": plan["backup_id"], "migration_started": True, "attempt": 1,
                  "deployment": deployment}
        env.store.mark_in_progress(marker)
    return {"environment": env.name, "marker": env.store.marker_location(), "restores": plan["backup_id"],
            "fingerprint_recorded": plan["fingerprint"] is not None}


def already_restored(marker: dict) -> list[str]:
    """A rollback that got as far as restoring the database recorded it in the marker: clearing it
    goes on from there and never restores again, which on-call must know before touching it."""
    done = marker.get("rollback_database")
    if not done:
        return []
    restored = done.get("restored") or {}
    source = restored.get("backup_id") or restored.get("from_snapshot") or "nothing (the migration never started)"
    return [f"- The rollback already restored the database (from {source}) and recorded it in the marker: "
            "clearing it goes on with the old release and does NOT restore the database again. If the database "
            f"was changed by hand since, restore {source} by hand before clearing."]


def what_now(target: str, environment: str | None, task_id: str, marker: dict | None, run_id: str) -> str:
    """The lines that end a failed task's log: whether clearing it is safe, and how to roll back."""
    lines = ["", "WHAT NOW"]
    if environment is None or marker is None:
        lines.append(f"- Nothing of {target} is half-upgraded by this run: clearing {task_id} is safe once the "
                     "cause above is fixed.")
    else:
        rollback_task = "staging_upgrade.rollback_staging" if environment == "staging" else \
            "conclude.rollback_production"
        lines += [f"- {environment} is mid-upgrade (marker of this run, {marker.get('from_version')} → "
                  f"{marker.get('to_version')}). Clearing {task_id} is safe: it continues from what the last try "
                  "left.",
                  f"- To go back instead, while this run's marker is there: clear {rollback_task}."]
        lines += already_restored(marker)
    env = environment or "production"
    params = {"environment": env, **({"backup_id": marker["final_backup_id"]}
                                     if (marker or {}).get("final_backup_id") else {})}
    lines.append(f"- Once this run is over, to restore {env} from a backup: trigger airlock_rollback__{target} with "
                 f"{json.dumps(params)}{'' if 'backup_id' in params else ' (and backup_id to choose the set)'}")
    return "\n".join(lines)
