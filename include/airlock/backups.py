"""Backup sets: a database snapshot, the deployment's configuration, and a manifest written last.

A backup set is complete only when its manifest exists, and usable for a rollback only when it is
verified: restored into a scratch database and found equal, table by table, to its manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from airlock.databases.base import Database, TableStats

MANIFEST = "manifest.json"
VERIFICATION = "verification.json"
CONFIGURATION = "configuration.json"
IN_PROGRESS = "UPGRADE_IN_PROGRESS.json"


class BackupError(RuntimeError):
    """A backup that is missing, incomplete, corrupted or does not match its manifest."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def backup_id_for(environment: str, purpose: str, run_id: str) -> str:
    """Deterministic per run, so a retried task finds the backup its first try made."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", run_id).strip("-")[:80]
    return f"{environment}--{purpose}--{slug}"


@dataclass
class Manifest:
    backup_id: str
    target: str
    environment: str
    purpose: str
    run_id: str
    platform: str
    platform_version: str
    database_kind: str
    database: str
    facts: dict
    files: dict[str, dict]
    tables: TableStats
    created_at: str = field(default_factory=now_iso)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def table_differences(expected: TableStats, actual: TableStats) -> list[str]:
    """Human-readable differences between two sets of table statistics."""
    problems = []
    for table in sorted(set(expected) | set(actual)):
        want, got = expected.get(table), actual.get(table)
        if want is None:
            problems.append(f"table {table}: not in the manifest")
        elif got is None:
            problems.append(f"table {table}: missing")
        elif want["rows"] != got["rows"]:
            problems.append(f"table {table}: {got['rows']} rows, manifest says {want['rows']}")
        elif want["checksum"] != got["checksum"]:
            problems.append(f"table {table}: checksum differs from the manifest ({want['rows']} rows)")
    return problems


class LocalBackupStore:
    """Backup sets in a directory tree: <root>/<target>/<environment>/<backup id>/."""

    def __init__(self, root: str | Path, target: str, environment: str):
        self.base = Path(root) / target / environment

    def path(self, backup_id: str) -> Path:
        return self.base / backup_id

    def location(self, backup_id: str) -> str:
        return str(self.path(backup_id))

    def begin(self, backup_id: str) -> Path:
        """An empty directory for a new backup; a partial one from an earlier try is removed."""
        directory = self.path(backup_id)
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        return directory

    def write_json(self, backup_id: str, name: str, data: dict) -> None:
        target = self.path(backup_id) / name
        staged = target.with_suffix(".tmp")
        staged.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(staged, target)

    def read_json(self, backup_id: str, name: str) -> dict | None:
        path = self.path(backup_id) / name
        return json.loads(path.read_text()) if path.is_file() else None

    def manifest(self, backup_id: str) -> Manifest:
        data = self.read_json(backup_id, MANIFEST)
        if data is None:
            raise BackupError(f"backup {backup_id} at {self.location(backup_id)} has no manifest: "
                              "it is incomplete and cannot be used")
        return Manifest(**data)

    def is_verified(self, backup_id: str) -> bool:
        verification = self.read_json(backup_id, VERIFICATION)
        manifest = self.read_json(backup_id, MANIFEST)
        return bool(verification and manifest and verification.get("ok")
                    and verification.get("manifest_sha256") == manifest_digest(manifest))

    def backups(self) -> list[str]:
        if not self.base.is_dir():
            return []
        return sorted(p.name for p in self.base.iterdir() if (p / MANIFEST).is_file())

    # -- the marker that says an environment is mid-upgrade -----------------------------------
    def marker_path(self) -> Path:
        return self.base / IN_PROGRESS

    def mark_in_progress(self, record: dict) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        staged = self.marker_path().with_suffix(".tmp")
        staged.write_text(json.dumps(record, indent=2, sort_keys=True))
        os.replace(staged, self.marker_path())

    def in_progress(self) -> dict | None:
        path = self.marker_path()
        return json.loads(path.read_text()) if path.is_file() else None

    def clear_in_progress(self) -> None:
        self.marker_path().unlink(missing_ok=True)


def manifest_digest(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def take_backup(db: Database, store: LocalBackupStore, backup_id: str, meta: dict,
                configuration: dict | None = None) -> Manifest:
    """Write a backup set; the manifest goes last so a crash never leaves a 'complete' backup."""
    started = time.monotonic()
    directory = store.begin(backup_id)
    names, tables, facts = db.dump(directory)
    if configuration is not None:
        (directory / CONFIGURATION).write_text(json.dumps(configuration, indent=2, sort_keys=True))
        names = [*names, CONFIGURATION]
    files = {name: {"sha256": sha256_of(directory / name), "bytes": (directory / name).stat().st_size}
             for name in names}
    manifest = Manifest(backup_id=backup_id, database_kind=db.kind, database=db.describe(), facts=facts,
                        files=files, tables=tables, **meta)
    manifest.seconds = round(time.monotonic() - started, 3)
    store.write_json(backup_id, MANIFEST, manifest.to_dict())
    return manifest


def check_files(store: LocalBackupStore, manifest: Manifest) -> None:
    """Every file of the set is present and has the sha256 the manifest recorded."""
    directory = store.path(manifest.backup_id)
    for name, expected in manifest.files.items():
        path = directory / name
        if not path.is_file():
            raise BackupError(f"backup {manifest.backup_id}: file {name} is missing from {directory}")
        if sha256_of(path) != expected["sha256"]:
            raise BackupError(f"backup {manifest.backup_id}: file {name} is corrupted (sha256 differs "
                              "from the manifest)")


def verify_backup(db: Database, store: LocalBackupStore, backup_id: str) -> dict:
    """Restore into a scratch database, compare with the manifest, drop the scratch database."""
    if store.is_verified(backup_id):
        return store.read_json(backup_id, VERIFICATION) or {}
    started = time.monotonic()
    manifest = store.manifest(backup_id)
    check_files(store, manifest)
    scratch = db.scratch(manifest.environment)
    try:
        scratch.load(store.path(backup_id), manifest.facts)
        problems = table_differences(manifest.tables, scratch.table_stats())
    finally:
        scratch.drop()
    if problems:
        raise BackupError(f"backup {backup_id} failed verification: " + "; ".join(problems))
    result = {"ok": True, "verified_at": now_iso(), "scratch": scratch.describe(),
              "tables": len(manifest.tables), "rows": sum(int(t["rows"]) for t in manifest.tables.values()),
              "seconds": round(time.monotonic() - started, 3),
              "manifest_sha256": manifest_digest(manifest.to_dict())}
    store.write_json(backup_id, VERIFICATION, result)
    return result


def restore_backup(db: Database, store: LocalBackupStore, backup_id: str) -> dict:
    """Replace the database with a verified backup and prove it equals the manifest."""
    if not store.is_verified(backup_id):
        raise BackupError(f"backup {backup_id} at {store.location(backup_id)} is not verified; "
                          "refusing to restore it over the live database")
    started = time.monotonic()
    manifest = store.manifest(backup_id)
    check_files(store, manifest)
    db.load(store.path(backup_id), manifest.facts)
    problems = table_differences(manifest.tables, db.table_stats())
    if problems:
        raise BackupError(f"restore of {backup_id} into {db.describe()} does not match its manifest: "
                          + "; ".join(problems))
    return {"backup_id": backup_id, "tables": len(manifest.tables), "seconds": round(time.monotonic() - started, 3)}
