"""Backups in S3 (a moto server, reached through an Airflow AWS connection and S3Hook): round trips
(streamed, or mydumper's files uploaded and downloaded side by side), encryption and tags, a failure
in the middle of an upload, corruption, retention."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta

import pytest
from airlock.backups import (
    BackupError,
    apply_retention,
    is_verified,
    read_manifest,
    restore_backup,
    take_backup,
    verify_backup,
)
from airlock.databases.sqlite import SqliteDatabase
from airlock.stores.base import MANIFEST
from airlock.stores.local import LocalBackupStore
from airlock.stores.s3 import S3BackupStore, S3StoreError
from services import new_database
from test_backups import META, adopts_only_while_equal, execute, fill, filled_database, rows_of

pytestmark = pytest.mark.integration
BUCKET = "airlock-backups"


@pytest.fixture(scope="module")
def s3_client(aws_conn_id):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    client = S3Hook(aws_conn_id=aws_conn_id).get_conn()
    client.create_bucket(Bucket=BUCKET)
    return client


def s3_store(client, prefix: str, **options) -> S3BackupStore:
    return S3BackupStore(client, f"s3://{BUCKET}/{prefix}", "t", "production", **options)


@pytest.fixture(params=["sqlite", "mydumper", "mysqldump", "postgresql"])
def db(request, tmp_path):
    database = filled_database(request.param, tmp_path, "airlock_it_s3")
    yield database
    database.drop()


def test_streamed_round_trip_encrypted_and_tagged(db, s3_client, request):
    store = s3_store(s3_client, request.node.name[-20:], sse="AES256")
    before = rows_of(db)
    manifest = take_backup(db, store, "b1", META, {"version": "2.16.2"})
    assert verify_backup(db, store, "b1")["ok"]
    execute(db, "CREATE TABLE added_by_migration (x INTEGER)", "DELETE FROM metrics WHERE id > 100")
    restore_backup(db, store, "b1")
    assert rows_of(db) == before
    assert "added_by_migration" not in db.table_stats()
    assert store.backups() == ["b1"]
    if getattr(db, "tool", None) == "mydumper":  # dumped in parallel into files, uploaded side by side
        assert manifest.facts["tool"] == "mydumper"
        assert len([name for name in manifest.files if name.startswith("mydumper/")]) > 3
    for name in [*manifest.files, MANIFEST]:
        key = store.key("b1", name)
        assert s3_client.head_object(Bucket=BUCKET, Key=key)["ServerSideEncryption"] == "AES256"
        tags = {t["Key"]: t["Value"] for t in s3_client.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]}
        assert tags == {"target": "t", "environment": "production", "purpose": "prepare", "run_id": "r1",
                        "platform_version": "2.16.2"}


def test_a_verified_set_is_adopted_by_server_side_copies_tagged_as_the_new_set(db, s3_client, request):
    store = s3_store(s3_client, request.node.name[-24:], sse="AES256")
    adopts_only_while_equal(db, store)
    for name in read_manifest(store, "b2").files:
        key = store.key("b2", name)
        assert s3_client.head_object(Bucket=BUCKET, Key=key)["ServerSideEncryption"] == "AES256"
        tags = {t["Key"]: t["Value"] for t in s3_client.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]}
        assert tags["purpose"] == "final", (name, tags)


def test_s3_failing_in_the_middle_of_an_upload_leaves_no_usable_backup(s3_client):
    db = new_database("airlock_it_s3_fail", tool="mysqldump")
    try:
        execute(db, "CREATE TABLE big (id INTEGER PRIMARY KEY, body TEXT)",
                "INSERT INTO big SELECT seq, TO_BASE64(RANDOM_BYTES(300)) FROM seq_1_to_300000")
        store = s3_store(s3_client, "failing")
        take_backup(db, store, "earlier", META)
        verify_backup(db, store, "earlier")
        aborted: list[str] = []

        def abort_the_upload_once_parts_arrive():
            deadline = time.monotonic() + 60
            while not aborted and time.monotonic() < deadline:
                for upload in s3_client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
                    parts = s3_client.list_parts(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
                    if parts.get("Parts"):
                        s3_client.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"],
                                                         UploadId=upload["UploadId"])
                        aborted.append(upload["Key"])
                time.sleep(0.05)

        saboteur = threading.Thread(target=abort_the_upload_once_parts_arrive)
        saboteur.start()
        with pytest.raises(S3StoreError, match="upload of s3://airlock-backups/failing/t/production/later/"):
            take_backup(db, store, "later", META)
        saboteur.join()
        assert aborted
        assert store.backups() == ["earlier"]  # the failed one has no manifest: never offered
        assert not is_verified(store, "later")
        with pytest.raises(BackupError, match="is not verified; refusing to restore it"):
            restore_backup(db, store, "later")
    finally:
        db.drop()


def test_a_corrupted_object_fails_verification_and_restore_naming_the_file(db, s3_client, request):
    """Each file is checked, whether the load streams it or (mydumper's) downloads it first; a file
    gone from the bucket is named as missing (not as S3's NoSuchKey), whichever way."""
    store = s3_store(s3_client, f"corrupt-{request.node.callspec.id}")
    before = rows_of(db)
    for backup_id in ("b1", "b2", "b3"):
        take_backup(db, store, backup_id, META)
    verify_backup(db, store, "b2")
    for backup_id in ("b1", "b2"):
        name = sorted(read_manifest(store, backup_id).files)[-1]
        s3_client.put_object(Bucket=BUCKET, Key=store.key(backup_id, name), Body=b"not what was backed up")
    with pytest.raises(BackupError, match=r"backup b1: file .* is corrupted"):
        verify_backup(db, store, "b1")
    missing = sorted(read_manifest(store, "b3").files)[-1]
    s3_client.delete_object(Bucket=BUCKET, Key=store.key("b3", missing))
    with pytest.raises(BackupError, match=rf"backup b3: file {missing} is missing from s3://{BUCKET}/"):
        verify_backup(db, store, "b3")
    execute(db, "DELETE FROM metrics WHERE id > 100")
    changed = rows_of(db)
    with pytest.raises(BackupError, match=r"backup b2: file .* is corrupted"):
        restore_backup(db, store, "b2")
    assert rows_of(db) == changed != before  # the live database was not touched


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_retention_keeps_the_newest_the_young_and_what_a_pending_rollback_needs(kind, s3_client, tmp_path):
    database = SqliteDatabase(tmp_path / "mlflow.db")
    with closing(sqlite3.connect(database.path)) as conn:
        fill(conn, "sqlite")
    store = (LocalBackupStore(tmp_path / "backups", "t", "production") if kind == "local"
             else s3_store(s3_client, f"retention-{tmp_path.name}"))
    now = datetime.now(UTC)
    ages = {"b-90-days": 90, "b-60-days": 60, "b-40-days": 40, "b-2-days": 2, "b-today": 0}
    for backup_id, days in ages.items():
        take_backup(database, store, backup_id, META)
        manifest = read_manifest(store, backup_id).to_dict()
        manifest["created_at"] = (now - timedelta(days=days)).isoformat(timespec="seconds")
        store.write_json(backup_id, MANIFEST, manifest)
    store.begin("b-partial")  # an upload that never finished has no manifest
    store.mark_in_progress({"run_id": "r0", "prepare_backup_id": "b-90-days", "final_backup_id": None})

    result = apply_retention(store, keep_last=1, keep_days=30, now=now)

    assert sorted(result["deleted"]) == ["b-40-days", "b-60-days"]
    assert sorted(store.backups()) == ["b-2-days", "b-90-days", "b-today"]
    assert result["protected"] == ["b-90-days"]
    store.clear_in_progress("r0")
    assert apply_retention(store, keep_last=1, keep_days=30, now=now)["deleted"] == ["b-90-days"]


def test_an_s3_target_keeps_its_upgrade_log_in_the_store_beside_its_environments(s3_client, tmp_path):
    """No local log_dir: every worker (and the Upgrades page) reads the one log in the store."""
    from airlock import upgrade_log
    from airlock.config import load_targets

    good = (tmp_path / "t.yaml")
    good.write_text(json.dumps({"targets": {"t": {
        "platform": "mlflow", "approvers": ["admin"],
        "backup": {"location": f"s3://{BUCKET}/logs", "sse": "aws:kms", "kms_key_id": "k1"},
        "environments": {env: {"url": f"http://127.0.0.1:{port}", "driver": {"kind": "process",
                                                                              "state_dir": f"/srv/{env}"},
                               "database": {"kind": "sqlite", "path": f"/srv/{env}/m.db"}}
                         for env, port in (("staging", 1), ("production", 2))}}}}))
    target = load_targets(good)["t"]
    assert (target.log_dir, target.backup.is_s3, target.backup.kms_key_id) == (None, True, "k1")
    record = {"date": "2026-11-26T10:00:00+00:00", "target": "t", "run_id": "r1", "from": "1.0.0", "to": "1.0.1",
              "outcome": "failed", "phase_seconds": {}, "production_downtime_seconds": None}
    production = S3BackupStore(s3_client, f"s3://{BUCKET}/logs", "t", "production")
    staging = S3BackupStore(s3_client, f"s3://{BUCKET}/logs", "t", "staging")
    where, _ = upgrade_log.append(production, record)
    upgrade_log.append(staging, {**record, "outcome": "upgraded"})  # a retried report, from another worker
    upgrade_log.append(production, {**record, "run_id": "r2", "outcome": "rejected"})
    assert where == f"s3://{BUCKET}/logs/t/{upgrade_log.MARKDOWN}"
    assert [r["outcome"] for r in upgrade_log.read(staging)] == ["upgraded", "rejected"]
    table = s3_client.get_object(Bucket=BUCKET, Key=f"logs/t/{upgrade_log.MARKDOWN}")["Body"].read().decode()
    assert "| t | 1.0.0 → 1.0.1 | upgraded |" in table and "| rejected |" in table
    assert production.backup_ids() == []  # the log is beside the environments' folders, not a backup


def test_kms_encryption_with_the_targets_key(s3_client, aws_conn_id, tmp_path):
    import boto3

    endpoint = s3_client.meta.endpoint_url
    kms = boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    key_id = kms.create_key(Description="airlock backups")["KeyMetadata"]["KeyId"]
    database = SqliteDatabase(tmp_path / "mlflow.db")
    with closing(sqlite3.connect(database.path)) as conn:
        fill(conn, "sqlite")
    store = s3_store(s3_client, "kms", sse="aws:kms", kms_key_id=key_id)
    manifest = take_backup(database, store, "b1", META)
    for name in [*manifest.files, MANIFEST]:
        head = s3_client.head_object(Bucket=BUCKET, Key=store.key("b1", name))
        assert head["ServerSideEncryption"] == "aws:kms"
        assert key_id in head["SSEKMSKeyId"]
    assert verify_backup(database, store, "b1")["ok"]
