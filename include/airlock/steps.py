"""The upgrade's steps, one function each, called by the DAG's tasks.

Each step is safe to retry: it looks at what an earlier try left (backups by deterministic id, the
environment's in-progress marker) and continues from there. Every result is a small JSON dict for
XCom, free of secrets.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from airlock import upgrade_log
from airlock.artifacts.base import ArtifactError, compare_artifacts, lost_artifacts, restore_artifacts
from airlock.backups import (
    BackupError,
    adopt_backup,
    apply_retention,
    backup_id_for,
    is_verified,
    load_backup,
    now_iso,
    plain_size,
    read_manifest,
    restore_backup,
    run_slug,
    take_backup,
    verify_backup,
)
from airlock.clients import FAILING, judge_file, out_of_sync
from airlock.config import TargetConfig
from airlock.config_operations import MaintenanceConfig
from airlock.databases.base import TableStats
from airlock.drivers.process import DriverError
from airlock.environment import Environment, shared_databases
from airlock.http import answers
from airlock.migrated_data import compare_migrated, listed
from airlock.platforms.base import PlatformAdapter
from airlock.progress import ticking
from airlock.rds import RdsSnapshots, snapshot_id_for
from airlock.release_notes import hop_notes
from airlock.releases import published_versions
from airlock.resolution import Resolution, check_team_files
from airlock.signing import SigningError
from airlock.stores.base import FINGERPRINT, VERIFICATION, BackupStore
from airlock.versions import LATEST_PATCH, PlanError, check_requested, parse_version, plan_upgrade, stable_versions
from airlock.waits import Waiting, run_waits, waits_of
from airlock.windows import WindowError, expected_duration, next_slot

PREPARE, PRE_STOP, FINAL, POST_UPGRADE = "prepare", "pre-stop", "final", "post-upgrade"
log = logging.getLogger("airlock.steps")


class UpgradeError(RuntimeError):
    """A step that must not go on; the message tells on-call what happened and what to do."""


def marker_of_run(env: Environment, run_id: str) -> dict | None:
    """The in-progress marker, if this run is the one that touched the environment."""
    return run_marker(env.store, run_id)


def run_marker(store: BackupStore, run_id: str) -> dict | None:
    """The same, from the store alone (no database connection needed: the report must not fail)."""
    marker = store.in_progress()
    return marker if marker and marker.get("run_id") == run_id else None


# -- preflight ----------------------------------------------------------------------------------
def validate(target: TargetConfig, envs: list[Environment], params: dict, run_id: str,
             others: list[TargetConfig] = (), scheduled: bool = False) -> dict:
    """Check the trigger's params, that no environment shares its database with another one, and
    that no other upgrade left an environment half-done. A scheduled run applies the newest patch
    release (auto_upgrade: patch), whatever the params' defaults say."""
    requested = LATEST_PATCH if scheduled else check_requested(params.get("target_version"))
    shared = shared_databases(target, [other for other in others if other.name != target.name])
    if shared:
        raise UpgradeError("refusing to upgrade: two environments reach the same database, so one upgrade would "
                           "stop, migrate or restore what the other uses: " + "; ".join(shared) +
                           ". Nothing was touched. Give each environment its own database in the targets file.")
    logins = {}
    for env in envs:
        check_signing_key(env)
        logins[env.name] = env.adapter.check_access()
        marker = env.store.in_progress()
        if marker and marker.get("run_id") != run_id:
            raise UpgradeError(
                f"{env.name} of {target.name} has an unfinished upgrade from run {marker['run_id']} "
                f"({marker.get('from_version')} → {marker.get('to_version')}; marker {env.store.marker_path()}). "
                "Roll it back by clearing that run's rollback task, or, once you have checked the server "
                "by hand, delete the marker file."
            )
    return {"target": target.name, "requested": requested, "platform": target.platform, "logins": logins,
            "trigger": "schedule" if scheduled else "manual"}


def check_signing_key(env: Environment) -> None:
    """Backups are signed and checked with a key from Airflow: missing, it stops the run here."""
    if env.store.signer is not None:
        try:
            env.store.signer.key()
        except SigningError as error:
            raise UpgradeError(str(error)) from None


def plan(target: TargetConfig, staging: Environment, production: Environment, requested: str) -> dict:
    """Decide from → to for both environments, refusing what the policy forbids."""
    published = published_versions(target.releases, production.adapter)
    versions = {env.name: env.adapter.server_version() for env in (staging, production)}
    plans = {name: plan_upgrade(current, requested, published, platform=target.platform,
                                allow_minor_skips=target.allow_minor_skips,
                                downgrade_note=production.adapter.downgrade_note)
             for name, current in versions.items()}
    goal = plans["production"].target
    if plans["staging"].target != goal or (versions["staging"] not in (versions["production"], goal)):
        raise PlanError(f"staging runs {versions['staging']} and production {versions['production']}: "
                        f"staging must run the same version as production (or already {goal})")
    stable = stable_versions(published)
    return {"from": versions["production"], "to": goal, "release_source": target.releases.describe(),
            "newest_release": str(stable[-1]) if stable else None,
            "release_notes": hop_notes(target.platform, published, versions["production"], goal, target.release_notes),
            **{name: p.to_dict() for name, p in plans.items()}}


# -- backup & preparation -----------------------------------------------------------------------
def health(env: Environment) -> dict:
    env.adapter.health()
    return {"environment": env.name, "url": env.config.url, "version": env.adapter.server_version()}


def backup(env: Environment, purpose: str, run_id: str, version: str, backup_id: str | None = None,
           adopt_from: tuple[str, ...] = ()) -> dict:
    """A verified backup set (taken once per run and purpose; a retry reuses a verified one). Where
    the database still holds exactly what one of the verified sets `adopt_from` holds, that set's
    files are adopted instead of a new dump (backups.adopt_backup)."""
    backup_id = backup_id or backup_id_for(env.name, purpose, run_id)
    if not is_verified(env.store, backup_id):
        meta = {"target": env.target.name, "environment": env.name, "purpose": purpose, "run_id": run_id,
                "platform": env.target.platform, "platform_version": version}
        artifacts = env.artifacts if purpose != POST_UPGRADE else None  # artifacts added since stay in place
        configuration = env.driver.configuration()
        refused = []
        for source in adopt_from:
            adopted = adopt_backup(env.database, env.store, backup_id, source, meta, configuration, artifacts)
            if not isinstance(adopted, str):
                log.info("%s: the database holds exactly what the verified backup %s holds (every table's rows and "
                         "checksum): its files make up %s, with no dump and no restore", env.name, source, backup_id)
                break
            refused.append(adopted)
        else:
            note = {"not_adopted": "; ".join(refused)} if refused else None
            if note:  # with the server down (the final backup), this is downtime: on-call wants to know
                log.log(logging.WARNING if purpose == FINAL else logging.INFO,
                        "%s: %s is dumped and verified instead of made of an earlier backup's files, which takes "
                        "longer: %s", env.name, backup_id, note["not_adopted"])
            take_backup(env.database, env.store, backup_id, meta, configuration, artifacts, note)
    verification = verify_backup(env.database, env.store, backup_id)
    manifest = read_manifest(env.store, backup_id)
    return {"backup_id": backup_id, "location": env.store.location(backup_id), "verified": True,
            "tables": len(manifest.tables), "rows": verification["rows"],
            "bytes": sum(f["bytes"] for f in manifest.files.values()), "adopted_from": manifest.facts.get(
                "adopted_from"), "not_adopted": manifest.facts.get("not_adopted"),
            "backup_seconds": manifest.seconds, "verify_seconds": verification["seconds"]}


def backup_before_stop(env: Environment, run_id: str, plan_: dict) -> dict:
    """A verified backup while the drained server still serves (or this run's phase-1 set, adopted
    when nothing changed since): the final backup, taken with the server stopped, adopts it in turn
    when nothing was written after it, so the dump and its verification stay out of the downtime."""
    env_plan = plan_[env.name]
    if env_plan["change"] == "none":
        return {"skipped": f"{env.name} already runs {env_plan['target']}"}
    return backup(env, PRE_STOP, run_id, env_plan["current"],
                  adopt_from=(verified_prepare_backup(env, run_id, "back up"),))


def inventory(envs: list[Environment]) -> dict:
    """Runs in flight on each environment, so the operator knows who the upgrade will wait for."""
    return {env.name: [run.describe() for run in env.adapter.running_runs(env.stale_after)] for env in envs}


# -- compatibility ------------------------------------------------------------------------------
def prepare_versions(env: Environment, plan_: dict) -> dict:
    """Install the new version and keep the old one ready, so a rollback never waits on pip."""
    started = time.monotonic()
    paths = {version: str(env.driver.ensure_installed(version)) for version in {plan_["from"], plan_["to"]}}
    return {"virtualenvs": paths, "seconds": round(time.monotonic() - started, 3)}


def client_compatibility(target: TargetConfig, adapter: PlatformAdapter, plan_: dict) -> dict:
    """Per requirement/lock file of the target: do the pinned clients work with the new server, does
    the team's Python run the new client, and do its requirements still resolve with it?"""
    server = plan_["to"]
    files = target.compatibility.client_files
    verdicts = [judge_file(path, adapter.package, server, adapter.client_problem) for path in files]
    resolutions = (check_team_files(files, adapter.package, server) if target.compatibility.resolve
                   else [Resolution.skipped(path) for path in files])
    failing = [(v.file, v.detail) for v in verdicts if v.status in FAILING] + out_of_sync(verdicts) + [
        (r.file, detail) for r in resolutions for detail in r.failures()]
    old_clients = adapter.client_problem(parse_version(plan_["from"]), parse_version(server))
    for verdict, resolution in zip(verdicts, resolutions, strict=True):
        level = logging.WARNING if verdict.status in (*FAILING, "unpinned") else logging.INFO
        log.log(level, "%s: %s: %s", verdict.file, verdict.status, verdict.detail)
        for check in ("python", "dependencies"):
            said = getattr(resolution, check)
            log.log(logging.INFO if said["status"] in ("compatible", "resolves") else logging.WARNING,
                    "%s: %s %s: %s", verdict.file, check, said["status"], said["detail"])
    result = {"server_version": server, "rule": f"{adapter.name} clients: {adapter.client_rule}",
              "old_clients": old_clients or f"{adapter.name} {plan_['from']} clients keep working",
              "files": [{**verdict.to_dict(), "python": resolution.python, "dependencies": resolution.dependencies}
                        for verdict, resolution in zip(verdicts, resolutions, strict=True)],
              "out_of_sync": [f"{file}: {detail}" for file, detail in out_of_sync(verdicts)],
              "incompatible": len({file for file, _ in failing}),
              "on_incompatible": target.compatibility.on_incompatible}
    if failing and target.compatibility.on_incompatible == "fail":
        listing = "\n  - ".join(f"{file}: {detail}" for file, detail in failing)
        raise UpgradeError(f"{len(failing)} client file(s) do not work with {adapter.name} {server} "
                           f"({adapter.client_rule}); nothing was touched. Fix the pins, or set "
                           f"compatibility.on_incompatible: warn for {target.name}:\n  - {listing}")
    return result


def verified_prepare_backup(env: Environment, run_id: str, refusing: str) -> str:
    """The id of this run's phase-1 backup of the environment; refuse `refusing` unless it is verified."""
    backup_id = backup_id_for(env.name, PREPARE, run_id)
    if not is_verified(env.store, backup_id):
        raise UpgradeError(f"refusing to {refusing} {env.name}: its backup {backup_id} is not verified")
    return backup_id


def rehearse_migration(env: Environment, run_id: str, plan_: dict) -> dict:
    """Run the new version's migration on a copy of the environment restored from its verified
    backup, timed: a migration that fails here stops the upgrade before any server is touched."""
    env_plan = plan_[env.name]
    if env_plan["change"] == "none":
        return {"skipped": f"{env.name} already runs {env_plan['target']}"}
    backup_id = verified_prepare_backup(env, run_id, "rehearse the migration of")
    manifest = read_manifest(env.store, backup_id)
    verification = env.store.read_json(backup_id, VERIFICATION) or {}
    scratch = env.database.scratch("rehearsal")
    scratch.check_restore_possible(manifest.facts, plain_size(env.store, manifest))  # room for the copy
    try:
        load_backup(scratch, env.store, manifest)
        migrated = env.driver.migrate(env_plan["target"], database=scratch)
    except DriverError as error:
        raise UpgradeError(f"rehearsal on a copy of {env.name}: the {env_plan['target']} migration failed, so "
                           f"the upgrade stops here and no server was touched.\n{error}") from None
    finally:
        scratch.drop()
    return {"environment": env.name, "to_version": env_plan["target"], "copy_of": backup_id,
            "migration_seconds": migrated["seconds"], "backup_seconds": manifest.seconds,
            "verify_seconds": verification.get("seconds", 0.0)}


# -- maintenance window --------------------------------------------------------------------------
def expected_upgrade(target: TargetConfig, environment: str, log_place) -> tuple[timedelta, str]:
    """How long the environment's upgrade is expected to take: the median of its past upgrades in the
    log, else the maintenance settings' expected_minutes (60 without any)."""
    maintenance = target.environment(environment).maintenance
    past = upgrade_log.past_upgrade_seconds(upgrade_log.read(log_place), target.name, environment)
    return expected_duration(past, (maintenance or MaintenanceConfig(())).expected_minutes)


def maintenance_slot(target: TargetConfig, environment: str, log_place, now: datetime, override: str,
                     who: str) -> dict:
    """When the environment's upgrade may start: now inside a window it fits in, else the opening of
    the next such window; now, whatever the windows, with an operator's override (who and why kept)."""
    maintenance = target.environment(environment).maintenance
    found = {"environment": environment, "windows": [w.describe() for w in maintenance.windows]}
    if override.strip():
        log.warning("%s: going outside the maintenance windows, as %s asked: %s", environment, who, override)
        return {**found, "starts": now.isoformat(timespec="seconds"), "override": {"by": who, "reason": override}}
    expected, basis = expected_upgrade(target, environment, log_place)
    try:
        slot = next_slot(maintenance.windows, now, expected)
    except WindowError as error:
        raise UpgradeError(f"{environment}: {error}. Nothing was touched.") from None
    return {**found, **slot.to_dict(), "expected_minutes": round(expected.total_seconds() / 60, 1),
            "expected_from": basis}


# -- drain decision -----------------------------------------------------------------------------
def answered_by(decision: dict | None) -> str:
    user = (decision or {}).get("responded_by_user") or {}
    return user.get("name") or user.get("id") or "nobody (no answer before the timeout)"


def proceed_despite_runs(environment: str, drained: dict, decision: dict | None) -> dict:
    """The environment drained, or on-call chose to proceed: name the runs about to be interrupted."""
    runs = [] if drained.get("drained") else list(drained.get("runs", []))
    for run in runs:
        log.warning("%s: proceeding as %s decided; this run WILL BE INTERRUPTED: %s", environment,
                    answered_by(decision), run)
    return {"environment": environment, "interrupted_runs": runs,
            "decided_by": answered_by(decision) if runs else "drained"}


def abort_upgrade(environment: str, decision_timeout_minutes: float, drained: dict, decision: dict | None) -> dict:
    """On-call chose to abort, or nobody answered: stop here, with nothing stopped."""
    who = answered_by(decision) if decision else f"nobody within {decision_timeout_minutes:g} min (default: abort)"
    listing = "\n  - ".join(drained.get("runs", [])) or "(none listed)"
    raise UpgradeError(f"{environment}: upgrade ABORTED at the drain by {who}; nothing was stopped or changed on "
                       f"{environment}. Runs that were still going:\n  - {listing}\n"
                       "Trigger a new run when they are done.")


# -- the upgrade of one environment -------------------------------------------------------------
def freeze(env: Environment, run_id: str, plan_: dict) -> Waiting:
    """Fingerprint the data, record the marker, stop the server (waiting for it in the triggerer).
    Refuses without a verified backup. A rerun finds the marker and stops again (idempotent)."""
    env_plan = plan_[env.name]
    if env_plan["change"] == "none":
        return {"skipped": f"{env.name} already runs {env_plan['target']}"}
    prepare_id = verified_prepare_backup(env, run_id, "stop")
    marker = marker_of_run(env, run_id)
    if marker is None:
        fingerprint, tables = steady_fingerprint(env)
        marker = {"run_id": run_id, "environment": env.name, "from_version": env_plan["current"],
                  "to_version": env_plan["target"], "fingerprint": fingerprint.to_dict(),
                  "fingerprint_tables": tables, "prepare_backup_id": prepare_id, "migration_started": False,
                  "attempt": next_attempt(env.store, env.name, run_id), "deployment": env.driver.snapshot()}
    marker["last_answered_at"] = now_iso() if env.adapter.is_healthy() else marker.get("last_answered_at")
    env.store.mark_in_progress(marker)
    stopped = yield from waits_of(env.driver.stop(marker.get("deployment")))
    marker.setdefault("stopped_at", now_iso())
    env.store.mark_in_progress(marker)
    return {"fingerprint": marker["fingerprint"], "stop": stopped, "stopped_at": marker["stopped_at"],
            "last_answered_at": marker["last_answered_at"]}


def users_data(env: Environment, stats: TableStats) -> TableStats:
    """Table statistics with the tables the server rewrites by itself reduced to their row counts."""
    return {table: ({"rows": value["rows"]} if table in env.adapter.self_written_tables else value)
            for table, value in stats.items()}


def steady_fingerprint(env: Environment, tries: int = 5) -> tuple:
    """The platform's fingerprint, and the database's table statistics it describes: one statistics
    pass between two equal API reads, so nothing the fingerprint sees was written during the pass.
    (A write it does not see, or one after the pass, shows in the final backup's statistics, and the
    fingerprint is taken again there.) One pass, as the statistics are the part that grows with the data."""
    fingerprint = env.adapter.fingerprint()
    for _ in range(tries):
        tables = users_data(env, env.database.table_stats())
        again = env.adapter.fingerprint()
        if again == fingerprint:
            return fingerprint, tables
        fingerprint = again
    raise UpgradeError(f"{env.name} kept changing while its fingerprint was read ({tries} tries): something still "
                       "writes to it after the drain (a client retrying, a user in the UI). Nothing was stopped. "
                       "Find it, then clear this task.")


def final_backup_id(environment: str, run_id: str, attempt: int) -> str:
    """One final backup per stop of the server: a re-run after a rollback never reuses the set taken
    before that rollback (it would lose everything written since)."""
    return f"{backup_id_for(environment, FINAL, run_id)}--a{attempt}"


def next_attempt(store: BackupStore, environment: str, run_id: str) -> int:
    """1 + the attempts of this run that already took (or began) a final backup of the environment."""
    prefix = backup_id_for(environment, FINAL, run_id) + "--a"
    taken = [int(backup_id.removeprefix(prefix)) for backup_id in store.backup_ids()
             if backup_id.startswith(prefix) and backup_id.removeprefix(prefix).isdigit()]
    return max(taken, default=0) + 1


def final_backup(env: Environment, run_id: str) -> dict:
    """The backup a rollback restores: taken with the server stopped, so no write is lost."""
    marker = marker_of_run(env, run_id)
    if marker is None:
        return {"skipped": f"{env.name} is not being upgraded by this run"}
    final_id = final_backup_id(env.name, run_id, marker.get("attempt", 1))
    if marker.get("migration_started") and not is_verified(env.store, final_id):
        # A dump taken now would hold the migrated schema and a rollback would "restore" it.
        raise UpgradeError(f"refusing to back up {env.name} again: its migration has started and the backup "
                           f"{final_id} taken before it is not verified; roll back from "
                           f"{marker['prepare_backup_id']} by hand")
    adopt_from = (backup_id_for(env.name, PRE_STOP, run_id), marker["prepare_backup_id"])
    for _ in range(REFINGERPRINT_ROUNDS):
        result = backup(env, FINAL, run_id, marker["from_version"], backup_id=final_id, adopt_from=adopt_from)
        changed = changed_tables(marker.get("fingerprint_tables"),
                                 users_data(env, read_manifest(env.store, final_id).tables))
        if not changed or marker.get("migration_started"):
            break
        refingerprint(env, marker, final_id, changed)
    else:
        raise UpgradeError(f"{env.name}: writes kept landing between the fingerprint and the stop "
                           f"({REFINGERPRINT_ROUNDS} rounds); the old version is stopped and nothing was migrated. "
                           "Find what still writes after the drain, then clear this task.")
    marker["final_backup_id"] = result["backup_id"]
    env.store.write_json(final_id, FINGERPRINT, {"fingerprint": marker["fingerprint"], "run_id": run_id,
                                                 "version": marker["from_version"]})
    env.store.mark_in_progress(marker)
    if result["adopted_from"] == adopt_from[0]:
        env.store.delete(adopt_from[0])  # its files live on in the final set: one copy in the store, not two
    return {**result, "fingerprint_describes_backup": True}


REFINGERPRINT_ROUNDS = 3


def changed_tables(expected: TableStats | None, actual: TableStats) -> list[str]:
    """Tables whose statistics differ (none when there is nothing to compare with: an older marker)."""
    if expected is None:
        return []
    return sorted(table for table in set(expected) | set(actual) if expected.get(table) != actual.get(table))


def refingerprint(env: Environment, marker: dict, final_id: str, changed: list[str]) -> None:
    """Writes landed after the fingerprint and before the stop (tables `changed`), so the fingerprint
    does not describe the backup: start the old version again, fingerprint it, stop, back up again.
    (Nothing is migrated yet, so the old version may serve.)"""
    log.warning("%s: written after the fingerprint and before the stop: %s; taking the fingerprint again",
                env.name, ", ".join(changed))
    # A rare path inside the backup step (not resumable there): its two waits run in the task.
    run_waits(env.driver.restore(marker["from_version"], marker.get("deployment") or {}))
    try:
        fingerprint, tables = steady_fingerprint(env)
    except UpgradeError:
        env.store.clear_in_progress(marker["run_id"])  # nothing migrated, the old version serves: free it
        raise UpgradeError(
            f"{env.name} kept changing while its fingerprint was taken again: something still writes after the "
            f"drain (a client retrying, a user in the UI). {env.adapter.name} {marker['from_version']} was started "
            "again and serves; nothing was migrated, and this run let go of the environment. Find what writes, "
            "then trigger the upgrade again (clearing this task would find nothing to do).") from None
    marker.update(fingerprint=fingerprint.to_dict(), fingerprint_tables=tables)
    env.store.mark_in_progress(marker)
    run_waits(env.driver.stop(marker.get("deployment")))
    env.store.delete(final_id)


def rds_snapshots(env: Environment) -> RdsSnapshots:
    rds = env.config.database.rds
    return RdsSnapshots.connect(rds.aws_conn_id, rds.instance_id)


def rds_snapshot(env: Environment, run_id: str) -> dict:
    """A manual RDS snapshot, taken with the server stopped (its id goes into the marker)."""
    marker, rds = marker_of_run(env, run_id), env.config.database.rds
    if marker is None or rds is None:
        return {"skipped": f"{env.name} is not being upgraded by this run, or not on RDS"}
    snapshot_id = snapshot_id_for(rds.instance_id, run_id)
    result = rds_snapshots(env).create_snapshot(snapshot_id, {
        "airlock:target": env.target.name, "airlock:environment": env.name, "airlock:run_id": run_id,
        "airlock:from_version": marker["from_version"]})
    marker["rds_snapshot_id"] = snapshot_id
    env.store.mark_in_progress(marker)
    return result


def migrate(env: Environment, run_id: str, expected_seconds: float | None = None) -> dict:
    """The new version's migration, once the verified final backup (and RDS snapshot) exist; its
    progress lines expect as long as the rehearsal took."""
    marker = marker_of_run(env, run_id)
    if marker is None:
        return {"skipped": f"{env.name} is not being upgraded by this run"}
    final_id = marker.get("final_backup_id")
    if not final_id or not is_verified(env.store, final_id):
        raise UpgradeError(f"refusing to migrate {env.name}: no verified backup taken after the server stopped")
    if env.config.database.rds and (
            not marker.get("rds_snapshot_id")
            or rds_snapshots(env).snapshot_status(marker["rds_snapshot_id"]) != "available"):
        raise UpgradeError(f"refusing to migrate {env.name}: its RDS snapshot is not available")
    marker["migration_started"] = True
    env.store.mark_in_progress(marker)
    version = marker["to_version"]
    with ticking(f"migrating {env.name}'s database to {env.target.platform} {version}",
                 expected_seconds=expected_seconds):
        launched = env.driver.launch_migration(version, marker.get("attempt", 1))
    return {"to_version": version, **launched}


def start(env: Environment, run_id: str) -> Waiting:
    marker = marker_of_run(env, run_id)
    if marker is None:
        return {"skipped": f"{env.name} is not being upgraded by this run"}
    final_id = marker.get("final_backup_id")
    if not final_id or not is_verified(env.store, final_id):
        # ZenML and MLflow 3 migrate an old schema by themselves when the new version starts.
        raise UpgradeError(f"refusing to start {env.adapter.name} {marker['to_version']} on {env.name}: no verified "
                           "backup taken after the server stopped (a new version may migrate the database at start)")
    return (yield from waits_of(env.driver.launch(marker["to_version"], marker.get("deployment") or {})))


def switch(env: Environment, plan_: dict) -> Waiting:
    """Blue-green: the Service moves to the new release only once it answers with the new version."""
    return (yield from env.driver.switch(plan_[env.name]["target"]))


def check_health(env: Environment, plan_: dict) -> dict:
    """Healthy, and serving the version the plan promised."""
    result = health(env)
    expected = plan_[env.name]["target"]
    if result["version"] != expected:
        raise UpgradeError(f"{env.name} answers but serves {result['version']}, expected {expected}")
    return {**result, "healthy_at": now_iso()}


def smoke(env: Environment) -> dict:
    return env.adapter.smoke_test()


def check_artifacts(env: Environment, plan_: dict) -> dict:
    """The most recent models/artifacts, loaded by the NEW client version from the upgraded server."""
    count, env_plan = env.target.compatibility.recent_artifacts, plan_[env.name]
    if count == 0:
        return {"skipped": "compatibility.recent_artifacts is 0"}
    venv = env.driver.ensure_installed(env_plan["target"])
    results = env.adapter.load_recent_artifacts(venv, count)
    failed = [item for item in results if not item["ok"]]
    for item in failed:
        log.warning("%s: %s does not load with %s %s: %s", env.name, item["name"], env.adapter.name,
                    env_plan["target"], item["error"])
    if failed and env.target.compatibility.on_incompatible == "fail":
        listing = "\n  - ".join(f"{item['name']}: {item['error']}" for item in failed)
        raise UpgradeError(f"{env.name}: {len(failed)} of the {len(results)} most recent artifacts do not load with "
                           f"the {env.adapter.name} {env_plan['target']} client:\n  - {listing}")
    return {"client_version": env_plan["target"], "checked": len(results), "failed": failed,
            "loaded": [item["name"] for item in results if item["ok"]]}


def follow_ups(env: Environment, plan_: dict) -> dict:
    """The vendor's post-upgrade to-dos (ZenML: templates, snapshots and schedules to rebuild)."""
    result = env.adapter.follow_ups(plan_[env.name]["target"])
    for item in result.get("to_rebuild", []):
        log.warning("%s: %s %r (%s) was built with %s: %s", env.name, item["kind"], item["name"], item["id"],
                    item.get("built_with") or "an unknown version", result["action"])
    return {"environment": env.name, **result}


def verify_migrated_data(env: Environment, run_id: str) -> dict:
    """After the migration, before the new server starts (and writes; where a chart's hook migrates
    at the start, right after it, with the tables the server writes itself counted by rows): the
    database against the final backup over the columns both schemas share, by the database's own
    checksums (one pass per table), so it describes exactly the data the backup holds."""
    marker = marker_of_run(env, run_id)
    if marker is None or not marker.get("migration_started"):
        return {"skipped": f"{env.name} was not migrated by this run"}
    final_id = marker["final_backup_id"]
    manifest = read_manifest(env.store, final_id)
    before_columns = manifest.facts.get("columns")
    if not before_columns:
        return {"skipped": f"backup {final_id} records no columns (an older Airlock took it): the data is compared "
                           "through the server's API only"}
    started = time.monotonic()
    now, now_columns, problems = compare_migrated(env.database, manifest.tables, manifest.facts,
                                                  env.adapter.migration_rewrites + env.adapter.self_written_tables)
    if problems:
        raise UpgradeError(f"{env.name}: the migration to {marker['to_version']} lost or changed data of the final "
                           f"backup {final_id}: {listed(problems)}. {started_or_not(env)}; the rollback restores that "
                           "backup.")
    return {"final_backup_id": final_id, "tables": len(now), "rows": sum(int(t["rows"]) for t in now.values()),
            "new_tables": sorted(set(now_columns) - set(before_columns)), "equal_to_final_backup": True,
            "seconds": round(time.monotonic() - started, 3)}


def started_or_not(env: Environment) -> str:
    """For on-call: whether the new server already runs when the migrated data is checked."""
    if env.config.driver.migrates_at_start:
        return "The new server already runs (the chart's hook migrated inside helm upgrade)"
    return "The new server was not started"


def verify_fingerprint(env: Environment, run_id: str) -> dict:
    """The data read through the new server equals the data before the upgrade."""
    marker = marker_of_run(env, run_id)
    if marker is None:
        return {"skipped": f"{env.name} is not being upgraded by this run"}
    after = env.adapter.fingerprint().to_dict()
    before = marker["fingerprint"]
    if after["digest"] != before["digest"]:
        raise UpgradeError(f"{env.name}: data changed during the upgrade: fingerprint {before['digest'][:12]} "
                           f"→ {after['digest'][:12]}; counts before {before['counts']}, after {after['counts']}")
    return {"fingerprint": after, "equal_to_pre_upgrade": True}


def verify_artifact_store(env: Environment, run_id: str) -> dict:
    """No artifact the upgrade deleted or changed: the artifact store against the final backup's
    inventory (artifacts added since are counted, not judged)."""
    marker = marker_of_run(env, run_id)
    if marker is None or env.artifacts is None:
        return {"skipped": f"{env.name} is not being upgraded by this run" if marker is None
                else f"{env.name} has no artifacts store configured"}
    try:
        compared = compare_artifacts(env.artifacts, env.store, marker["final_backup_id"])
    except ArtifactError as error:
        raise UpgradeError(f"{env.name}: the artifact store could not be checked against the final backup: {error}. "
                           "The new version serves; fix that and clear this task to check again.") from None
    if lost := lost_artifacts(compared):
        raise UpgradeError(f"{env.name}: the upgrade deleted or changed artifacts of {env.artifacts.location}: {lost}. "
                           f"A rollback puts them back from backup {marker['final_backup_id']} (artifacts written "
                           "since stay).")
    return compared


def assess_rollback(env: Environment, run_id: str) -> dict:
    """What a rollback would cost, for the human deciding it: rows written since the upgrade, per
    table (the live database against the final backup taken before the migration), and whether the
    new server still answers at all (a server that does not is rolled back without asking)."""
    marker = marker_of_run(env, run_id)
    if marker is None:
        return {"skipped": f"{env.name} is not being upgraded by this run"}
    answering = answers(env.config.url)
    before = read_manifest(env.store, marker["final_backup_id"]).tables if marker.get("final_backup_id") else {}
    try:
        now = env.database.table_stats()
    except Exception as error:
        return {"answering": answering, "final_backup_id": marker.get("final_backup_id"), "tables": [],
                "rewritten": [], "unknown": f"the database could not be read: {error}"}
    changed = written_since(users_data(env, before), users_data(env, now))
    return {"answering": answering, "final_backup_id": marker.get("final_backup_id"), "unknown": None,
            "tables": [t for t in changed if t["rows_now"] != t["rows_before"]],
            "rewritten": [t["table"] for t in changed if t["rows_now"] == t["rows_before"]]}


def written_since(before: TableStats, now: TableStats) -> list[dict]:
    """Tables whose data changed since `before` (rows then, rows now); new tables count in full."""
    changed = []
    for table in sorted(now):
        then = before.get(table, {"rows": 0, "checksum": "0"})
        if then.get("checksum") != now[table].get("checksum") or then["rows"] != now[table]["rows"]:
            changed.append({"table": table, "rows_before": int(then["rows"]), "rows_now": int(now[table]["rows"]),
                            "new_table": table not in before})
    return changed


def keep_new_version(env: Environment, run_id: str, decision: dict | None) -> dict:
    """On-call chose to keep the new version after a failed watch: nothing is restored. The marker
    stays, so a rollback is still one clear of the decision away (it keeps what was written first)."""
    marker = marker_of_run(env, run_id)
    who = answered_by(decision) if decision else "nobody within the decision timeout (default: keep)"
    log.warning("%s: keeping %s as %s decided; the marker stays at %s", env.name,
                (marker or {}).get("to_version"), who, env.store.marker_location())
    return {"environment": env.name, "kept": (marker or {}).get("to_version"), "decided_by": who,
            "marker": env.store.marker_location()}


def finish(env: Environment, run_id: str) -> dict:
    """The upgrade of this environment is done: drop the marker so the next run may start."""
    marker = marker_of_run(env, run_id)
    if marker:
        env.store.clear_in_progress(run_id)
    return {"environment": env.name, "finished": marker is not None,
            "final_backup_id": marker.get("final_backup_id") if marker else None}


def retention(envs: list[Environment]) -> dict:
    """Old backup sets go, as the target's backup settings say; never one a pending rollback needs."""
    backup = envs[0].target.backup
    return {env.name: apply_retention(env.store, backup.keep_last, backup.keep_days) for env in envs}


def rollback(env: Environment, run_id: str) -> Waiting:
    """Old release and pre-upgrade database back, proven equal to what was there before. Its waits
    (the server stopping, an RDS restore, the old release rolling out and answering) go to the
    triggerer; the marker records when the database is back, so the run after a wait (or a retry)
    goes on from there instead of restoring again."""
    marker = marker_of_run(env, run_id)
    if marker is None:
        return {"rolled_back": False, "reason": f"{env.name} was not touched by this run"}
    started = time.monotonic()
    if "rollback_database" not in marker:
        yield from waits_of(env.driver.stop(marker.get("deployment")))
        try:
            kept = keep_post_upgrade_data(env, run_id, marker)
        except Exception as error:
            raise UpgradeError(f"{env.name}: NOTHING was restored: the database as the new version left it could not "
                               f"be backed up first ({error}). The server is stopped. Fix that and clear this task; to "
                               f"roll back without keeping what was written since the upgrade, restore "
                               f"{marker.get('final_backup_id')} by hand.") from None
        restored = yield from restore_database(env, run_id, marker)
        marker["rollback_database"] = {"restored": restored, "post_upgrade_backup": kept}
        env.store.mark_in_progress(marker)
    restored, kept = marker["rollback_database"]["restored"], marker["rollback_database"]["post_upgrade_backup"]
    if "rollback_release" not in marker:
        marker["rollback_release"] = yield from start_old_release(env, marker)
        env.store.mark_in_progress(marker)
    else:
        yield from old_release_serving_still(env, marker)
    put_back = restore_artifact_store(env, marker)  # after the start: a store that fails leaves the server serving
    env.store.clear_in_progress(run_id)
    return {"rolled_back": True, "restored": restored, **marker["rollback_release"], "post_upgrade_backup": kept,
            "artifacts": put_back, "seconds": round(time.monotonic() - started, 3)}


def start_old_release(env: Environment, marker: dict) -> Waiting:
    """The release that ran before, serving the restored database, proven by version and fingerprint."""
    yield from waits_of(env.driver.restore(marker["from_version"], marker.get("deployment") or {}))
    served = env.adapter.server_version()
    after = env.adapter.fingerprint().to_dict()
    expected = (marker.get("fingerprint") or {}).get("digest")  # none for a set taken without one
    if served != marker["from_version"] or after["digest"] != (expected or after["digest"]):
        raise UpgradeError(
            f"{env.name}: after rollback the server runs {served} with fingerprint {after['digest'][:12]}, "
            f"expected {marker['from_version']} and {(expected or '(not recorded)')[:12]}; marker kept at "
            f"{env.store.marker_path()}")
    return {"version": served, "healthy_at": now_iso(),
            "fingerprint_equal": True if expected else "not recorded for this set (its tables' checksums were "
                                                       "proven equal at the restore)"}


def old_release_serving_still(env: Environment, marker: dict) -> Waiting:
    """A retry after the old release was started and proven (what failed came after): it may have
    died since, so it is started again where it is down, and left untouched where it serves (a Helm
    rollback again would add a revision). Its version is checked; its fingerprint is not: users may
    have written to it since it was proven."""
    if not env.adapter.is_healthy():
        yield from waits_of(env.driver.restore(marker["from_version"], marker.get("deployment") or {}))
    served = env.adapter.server_version()
    if served != marker["from_version"]:
        raise UpgradeError(f"{env.name}: the rollback's release had been started and proven, but {served} serves now, "
                           f"not {marker['from_version']}; marker kept at {env.store.marker_path()}")


def restore_artifact_store(env: Environment, marker: dict) -> dict | None:
    """The artifacts the final backup inventoried, back as they were (repeatable: only what differs
    is put back); None without an artifact store or a final backup."""
    final_id = marker.get("final_backup_id")
    if env.artifacts is None or not final_id:
        return None
    try:
        return restore_artifacts(env.artifacts, env.store, final_id)
    except ArtifactError as error:
        raise UpgradeError(f"{env.name}: {marker['from_version']} serves again on the restored database, but the "
                           f"artifact store is not restored: {error}. Fix that and clear this task: only the "
                           "artifacts are restored then.") from None


def restore_database(env: Environment, run_id: str, marker: dict) -> Waiting:
    """The database as it was before the migration: the RDS snapshot (restored into a new instance
    that takes the original's name) or the final backup; nothing when the migration never started."""
    rds = env.config.database.rds
    if marker.get("migration_started") and rds and rds.rollback == "snapshot":
        suffix = run_slug(run_id).lower()[-40:].strip("-")
        return (yield from rds_snapshots(env).restore_and_swap(marker["rds_snapshot_id"], suffix))
    if not marker.get("migration_started"):
        return None
    final_id = marker.get("final_backup_id")
    if not final_id:
        raise BackupError(f"{env.name}: migration started without a final backup; restore by hand "
                          f"from {marker['prepare_backup_id']}")
    return restore_backup(env.database, env.store, final_id)


def keep_post_upgrade_data(env: Environment, run_id: str, marker: dict) -> dict | None:
    """Before a database that has served the new version is restored over, back it up as it is (the
    "post-upgrade" set): what was written since the upgrade is kept, and the report names it. Taken
    once per rollback: a later try finds it in the marker (the database may be half-restored by then)."""
    if not marker.get("migration_started"):
        return None
    if marker.get("post_upgrade"):
        return marker["post_upgrade"]
    backup_id = f"{backup_id_for(env.name, POST_UPGRADE, run_id)}--a{marker.get('attempt', 1)}"
    result = backup(env, POST_UPGRADE, run_id, marker["to_version"], backup_id=backup_id)
    final = read_manifest(env.store, marker["final_backup_id"]).tables if marker.get("final_backup_id") else {}
    written = written_since(users_data(env, final), users_data(env, read_manifest(env.store, backup_id).tables))
    kept = {"backup_id": backup_id, "location": result["location"], "written_since_upgrade": written}
    marker.update(post_upgrade_backup_id=backup_id, post_upgrade=kept)
    env.store.mark_in_progress(marker)
    log.warning("%s: the database as the new version left it is kept in %s (%s); tables changed since the "
                "upgrade: %s", env.name, backup_id, result["location"],
                ", ".join(f"{t['table']} {t['rows_before']}→{t['rows_now']}" for t in written) or "none")
    return kept
