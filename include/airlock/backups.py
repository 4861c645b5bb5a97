"""Backup sets: a database snapshot, the deployment's configuration, and a manifest written last.

A backup set is complete only when its manifest exists, and usable for a rollback only when it is
verified: restored into a scratch database and found equal, table by table, to its manifest.
Works the same on every store: a local directory (dumps in the fastest, directory formats) or an
object store (dumps streamed, never copied to local disk).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from airlock.artifacts.base import INVENTORY, ArtifactStore, keep_artifacts
from airlock.databases.base import Database, TableStats
from airlock.progress import ticking
from airlock.signing import SigningError
from airlock.stores.base import MANIFEST, VERIFICATION, BackupStore, MissingFile, StoreError

CONFIGURATION = "configuration.json"
DOWNLOADS = 4
SAFE_FILE_NAME = re.compile(r"[A-Za-z0-9_.@-]+(/[A-Za-z0-9_.@-]+)*")
"""What a set's own files are called (dump/…, configuration.json): relative, no `..`."""


log = logging.getLogger("airlock.backup")

class BackupError(RuntimeError):
    """A backup that is missing, incomplete, corrupted or does not match its manifest."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def run_slug(run_id: str) -> str:
    """A run id reduced to letters, digits and hyphens (for names of backups, snapshots, instances)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", run_id).strip("-")[:80]


def backup_id_for(environment: str, purpose: str, run_id: str) -> str:
    """Deterministic per run, so a retried task finds the backup its first try made."""
    return f"{environment}--{purpose}--{run_slug(run_id)}"


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
    hmac_sha256: str = ""
    """The signature (airlock.signing) over every other field, with the target's key from Airflow."""

    def to_dict(self) -> dict:
        return asdict(self)


def manifest_digest(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def read_manifest(store: BackupStore, backup_id: str) -> Manifest:
    data = store.read_json(backup_id, MANIFEST)
    if data is None:
        raise BackupError(f"backup {backup_id} at {store.location(backup_id)} has no manifest: "
                          "it is incomplete and cannot be used")
    if store.signer is not None:
        try:
            store.signer.check(data, f"backup {backup_id} at {store.location(backup_id)}")
        except SigningError as error:
            raise BackupError(str(error)) from None
    unsafe = [name for name in data.get("files") or {} if not SAFE_FILE_NAME.fullmatch(name) or ".." in name]
    if unsafe:
        raise BackupError(f"backup {backup_id} at {store.location(backup_id)}: its manifest names files outside "
                          f"the set ({unsafe[0][:80]!r}); refusing to use it")
    try:
        return Manifest(**data)
    except TypeError:
        raise BackupError(f"backup {backup_id} at {store.location(backup_id)}: its manifest has fields this "
                          "Airlock does not know; refusing to use it") from None


def is_verified(store: BackupStore, backup_id: str) -> bool:
    verification = store.read_json(backup_id, VERIFICATION)
    manifest = store.read_json(backup_id, MANIFEST)
    return bool(verification and manifest and verification.get("ok")
                and verification.get("manifest_sha256") == manifest_digest(manifest))


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


def tags_for(meta: dict) -> dict[str, str]:
    return {key: str(meta[key]) for key in ("target", "environment", "purpose", "run_id", "platform_version")}


def take_backup(db: Database, store: BackupStore, backup_id: str, meta: dict,
                configuration: dict | None = None, artifacts: ArtifactStore | None = None,
                note: dict | None = None) -> Manifest:
    """Write a backup set; the manifest goes last so a crash never leaves a 'complete' backup. With
    `artifacts`, the artifact store's inventory (and copy) joins the set, after the database's dump;
    `note` joins its facts (why it was dumped, for a retry to tell)."""
    started = time.monotonic()
    directory = store.begin(backup_id)
    if directory is not None:
        names, tables, facts = db.dump(directory)
        files = {name: store.digest(backup_id, name) for name in names}
    else:
        files = {}

        def put(name, stream):
            files[name] = store.put_stream(backup_id, name, stream, tags_for(meta))

        names, tables, facts = db.dump_stream(put)
    return complete_set(db, store, backup_id, meta, files, tables, {**facts, **(note or {})}, started,
                        configuration, artifacts)


def complete_set(db: Database, store: BackupStore, backup_id: str, meta: dict, files: dict, tables: TableStats,
                 facts: dict, started: float, configuration: dict | None, artifacts: ArtifactStore | None
                 ) -> Manifest:
    """The set's configuration and artifact inventory, then its signed manifest, last."""
    tags = tags_for(meta)
    if configuration is not None:
        files[CONFIGURATION] = store.write_json(backup_id, CONFIGURATION, configuration, tags)
    if artifacts is not None:
        files[INVENTORY] = keep_artifacts(artifacts, store, backup_id, tags)
    manifest = Manifest(backup_id=backup_id, database_kind=db.kind, database=db.describe(), facts=facts,
                        files=files, tables=tables, **meta)
    manifest.seconds = round(time.monotonic() - started, 3)
    data = manifest.to_dict()
    if store.signer is not None:
        data = store.signer.sign(data)
        manifest.hmac_sha256 = data["hmac_sha256"]
    store.write_json(backup_id, MANIFEST, data, tags)
    return manifest


def adopt_backup(db: Database, store: BackupStore, backup_id: str, source_id: str, meta: dict,
                 configuration: dict | None = None, artifacts: ArtifactStore | None = None) -> Manifest | str:
    """The set `backup_id` made of the verified set `source_id`'s database files, when the database
    holds exactly what that set holds (Database.tables_changed_since: every table's checksum and
    columns, read at one consistent point). Its verification (a restore found equal to those
    statistics) then holds for the new set too, so the files are copied inside the store (hard links
    on a disk, server-side copies in S3) instead of dumped and restored again: one checksum scan
    instead of a dump and a restore. The configuration and the artifact inventory are taken anew.
    When anything differs: why, in a sentence for on-call (the dump that follows takes longer)."""
    if not is_verified(store, source_id):
        return f"backup {source_id} is not a verified set in the store (never finished, or deleted once adopted)"
    started = time.monotonic()
    source = read_manifest(store, source_id)
    if source.database != db.describe():
        return f"backup {source_id} is of {source.database}, not of {db.describe()}"
    with ticking(f"checking that {db.describe()} still holds exactly backup {source_id}'s data"):
        changed = db.tables_changed_since(source.tables, source.facts)
    if changed:
        return f"{db.describe()} changed since backup {source_id} was taken (at least in tables {', '.join(changed)})"
    store.begin(backup_id)
    files = {name: entry for name, entry in source.files.items() if name not in (CONFIGURATION, INVENTORY)}
    try:
        for name in files:
            store.copy_file(source_id, backup_id, name, tags_for(meta))
    except StoreError as error:  # a file of the set went missing since it was verified: dump instead
        store.delete(backup_id)
        return f"a file of backup {source_id} cannot be copied ({error})"
    facts = {key: value for key, value in source.facts.items() if key != "not_adopted"}  # it is, this time
    complete_set(db, store, backup_id, meta, files, source.tables, {**facts, "adopted_from": source_id},
                 started, configuration, artifacts)
    source_verification = store.read_json(source_id, VERIFICATION) or {}
    record_verification(store, backup_id, started, equal_to=source_id,
                        source_verified_at=source_verification.get("verified_at"),
                        scratch=source_verification.get("scratch"))
    return read_manifest(store, backup_id)


def record_verification(store: BackupStore, backup_id: str, started: float, **how) -> dict:
    """What makes the set usable for a rollback: its manifest's digest, and how it was proven."""
    manifest = read_manifest(store, backup_id)
    result = {"ok": True, "verified_at": now_iso(), **how, "tables": len(manifest.tables),
              "rows": sum(int(t["rows"]) for t in manifest.tables.values()),
              "seconds": round(time.monotonic() - started, 3), "manifest_sha256": manifest_digest(manifest.to_dict())}
    store.write_json(backup_id, VERIFICATION, result)
    return result


def check_files(store: BackupStore, manifest: Manifest) -> None:
    """Every file of the set is present and has the sha256 the manifest recorded."""
    for name, expected in manifest.files.items():
        found = store.digest(manifest.backup_id, name)
        if found is None:
            raise BackupError(f"backup {manifest.backup_id}: file {name} is missing from "
                              f"{store.location(manifest.backup_id)}")
        if found["sha256"] != expected["sha256"]:
            raise BackupError(f"backup {manifest.backup_id}: file {name} is corrupted (sha256 differs "
                              "from the manifest)")


@contextmanager
def opened(store: BackupStore, manifest: Manifest, name: str) -> Iterator[BinaryIO]:
    """One file of the set, read from the store; one that is gone is named as missing from the set."""
    try:
        stream_context = store.open_stream(manifest.backup_id, name)
    except MissingFile:
        raise BackupError(f"backup {manifest.backup_id}: file {name} is missing from "
                          f"{store.location(manifest.backup_id)}") from None
    with stream_context as stream:
        yield stream


def plain_size(store: BackupStore, manifest: Manifest) -> int:
    """About how many bytes the set takes once decompressed: the size zstd recorded in each file's
    frame header, or 8 times the compressed size where it recorded none (a stream)."""
    total = 0
    for name, entry in manifest.files.items():
        content_size = None
        if name.endswith(".zst"):
            with opened(store, manifest, name) as stream:
                content_size = zstd_content_size(stream.read(18))
        total += content_size if content_size is not None else int(entry["bytes"]) * (8 if name.endswith(".zst") else 1)
    return total


def zstd_content_size(header: bytes) -> int | None:
    """Frame_Content_Size from a zstd frame header (RFC 8878, 3.1.1.1), or None when absent."""
    if len(header) < 6 or header[:4] != b"\x28\xb5\x2f\xfd":
        return None
    descriptor = header[4]
    fcs_flag, single_segment, dict_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    offset = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if size == 0 or len(header) < offset + size:
        return None
    value = int.from_bytes(header[offset:offset + size], "little")
    return value + 256 if size == 2 else value


class ByteCount:
    """Bytes read so far, across threads: what a progress line measures."""

    def __init__(self):
        self.value, self.lock = 0, threading.Lock()

    def add(self, amount: int) -> None:
        with self.lock:
            self.value += amount


class CountingReader:
    """A stream whose reads are counted."""

    def __init__(self, stream: BinaryIO, count: ByteCount):
        self.stream, self.count = stream, count

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.count.add(len(data))
        return data

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextmanager
def counted(store: BackupStore, manifest: Manifest, name: str, count: ByteCount) -> Iterator[BinaryIO]:
    with opened(store, manifest, name) as stream:
        yield CountingReader(stream, count)


def load_backup(db: Database, store: BackupStore, manifest: Manifest) -> None:
    """From the set's folder (a local store), from its objects streamed, or, for a dump that only
    loads from files (mydumper's), from its objects downloaded side by side into a temporary folder;
    with progress lines (the bytes read where they can be counted, else the time the verification took)."""
    directory, read = store.directory(manifest.backup_id), ByteCount()
    total = sum(int(entry["bytes"]) for entry in manifest.files.values())
    what = f"loading backup {manifest.backup_id} into {db.describe()}"
    before = (store.read_json(manifest.backup_id, VERIFICATION) or {}).get("seconds")
    if directory is not None:
        with ticking(what, expected_seconds=before):
            db.load(directory, manifest.facts)
    elif downloads(db, store, manifest):
        with tempfile.TemporaryDirectory(prefix="airlock-download-") as scratch:
            with ticking(f"downloading backup {manifest.backup_id}", measure=lambda: read.value, total=total):
                download_side_by_side(store, manifest, Path(scratch), read)
            with ticking(what, expected_seconds=before):
                db.load(Path(scratch), manifest.facts)
    else:
        with ticking(what, measure=lambda: read.value, total=total):
            db.load_stream(lambda name: counted(store, manifest, name, read), manifest.facts)


def downloads(db: Database, store: BackupStore, manifest: Manifest) -> bool:
    """The set is downloaded to be loaded (and its files checked as they arrive)."""
    return store.directory(manifest.backup_id) is None and db.loads_from_files_only(manifest.facts)


def check_files_before_load(db: Database, store: BackupStore, manifest: Manifest) -> None:
    """The set's files checked before anything is loaded, unless the load downloads (and so checks)
    them anyway: an S3 set is read once, not twice."""
    if not downloads(db, store, manifest):
        check_files(store, manifest)


def download_side_by_side(store: BackupStore, manifest: Manifest, folder: Path, read: ByteCount) -> None:
    """Every file of the set into `folder`, DOWNLOADS at a time, each checked against the manifest's sha256."""
    def download(name: str) -> None:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with counted(store, manifest, name, read) as source, open(folder / name, "wb") as out:
            for block in iter(lambda: source.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != manifest.files[name]["sha256"]:
            raise BackupError(f"backup {manifest.backup_id}: file {name} is corrupted (sha256 differs from the "
                              "manifest)")

    with ThreadPoolExecutor(max_workers=DOWNLOADS, thread_name_prefix="airlock-download") as pool:
        list(pool.map(download, manifest.files))  # the first failure is raised


def verify_backup(db: Database, store: BackupStore, backup_id: str) -> dict:
    """Restore into a scratch database, compare with the manifest, drop the scratch database."""
    if is_verified(store, backup_id):
        return store.read_json(backup_id, VERIFICATION) or {}
    started = time.monotonic()
    manifest = read_manifest(store, backup_id)
    check_files_before_load(db, store, manifest)
    scratch = db.scratch(manifest.environment)
    scratch.check_restore_possible(manifest.facts, plain_size(store, manifest))  # room on the scratch server
    try:
        load_backup(scratch, store, manifest)
        problems = table_differences(manifest.tables, scratch.table_stats())
    finally:
        scratch.drop()
    if problems:
        raise BackupError(f"backup {backup_id} failed verification: " + "; ".join(problems))
    return record_verification(store, backup_id, started, scratch=scratch.describe())


def restore_backup(db: Database, store: BackupStore, backup_id: str) -> dict:
    """Replace the database with a verified backup, proven equal to the manifest before it is swapped
    in (the swap renames; it does not touch the data, so the proof is not taken twice)."""
    if not is_verified(store, backup_id):
        raise BackupError(f"backup {backup_id} at {store.location(backup_id)} is not verified; "
                          "refusing to restore it over the live database")
    started = time.monotonic()
    manifest = read_manifest(store, backup_id)
    check_files_before_load(db, store, manifest)  # every file reads back with the sha256 the manifest recorded
    db.check_restore_possible(manifest.facts, plain_size(store, manifest))
    db.restore_in_place(lambda staging: load_backup(staging, store, manifest),
                        lambda staging: table_differences(manifest.tables, staging.table_stats()), manifest.facts)
    return {"backup_id": backup_id, "tables": len(manifest.tables), "seconds": round(time.monotonic() - started, 3)}


def apply_retention(store: BackupStore, keep_last: int, keep_days: float, now: datetime | None = None) -> dict:
    """Delete complete sets beyond the newest `keep_last` that are older than `keep_days`, and sets
    without a manifest older than a day; never a set that the environment's unfinished upgrade needs."""
    now = now or datetime.now(UTC)
    marker = store.in_progress() or {}
    protected = {marker.get("prepare_backup_id"), marker.get("final_backup_id")} - {None}
    complete = {backup_id: read_manifest(store, backup_id) for backup_id in store.backups()}
    newest_first = sorted(complete, key=lambda b: complete[b].created_at, reverse=True)
    cutoff = now - timedelta(days=keep_days)
    deleted = []
    for backup_id in newest_first[keep_last:]:
        if backup_id not in protected and datetime.fromisoformat(complete[backup_id].created_at) < cutoff:
            store.delete(backup_id)
            deleted.append(backup_id)
    return {"kept": [b for b in newest_first if b not in deleted], "deleted": deleted,
            "protected": sorted(protected)}
