"""Backups on real SQLite and MariaDB: round trips, verification that catches corruption, no leaks."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import tempfile
from contextlib import closing
from pathlib import Path

import pytest
from airlock.backups import BackupError, LocalBackupStore, restore_backup, sha256_of, take_backup, verify_backup
from airlock.databases.base import DatabaseError
from airlock.databases.mysql import MysqlDatabase, MysqlParams
from airlock.databases.sqlite import SNAPSHOT, SqliteDatabase
from services import TEST_PASSWORD, new_database

META = {"target": "t", "environment": "staging", "purpose": "prepare", "run_id": "r1",
        "platform": "mlflow", "platform_version": "2.16.2"}
SCHEMA = [
    "CREATE TABLE experiments (id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL, note TEXT)",
    "CREATE TABLE metrics (id INTEGER PRIMARY KEY, experiment_id INTEGER NOT NULL, value DOUBLE, payload BLOB,"
    " FOREIGN KEY (experiment_id) REFERENCES experiments(id))",
]


def fill(conn, placeholder: str) -> None:
    cursor = conn.cursor()
    for statement in SCHEMA:
        cursor.execute(statement)
    rows = [(i, f"experiment-{i} ünïcode ✓", None if i % 3 else f"note {i}") for i in range(1, 40)]
    cursor.executemany(f"INSERT INTO experiments VALUES ({placeholder},{placeholder},{placeholder})", rows)
    metrics = [(i, 1 + i % 39, i / 7.0, bytes([i % 256, 0, 255])) for i in range(1, 500)]
    cursor.executemany(f"INSERT INTO metrics VALUES ({placeholder},{placeholder},{placeholder},{placeholder})",
                       metrics)
    conn.commit()


def sqlite_rows(path):
    with closing(sqlite3.connect(path)) as conn:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in ("experiments", "metrics")}


def mysql_rows(db: MysqlDatabase):
    with db.connect() as conn:
        return {t: sorted(db.query(conn, f"SELECT * FROM {t}")) for t in ("experiments", "metrics")}


@pytest.fixture
def sqlite_db(tmp_path):
    path = tmp_path / "mlflow.db"
    with closing(sqlite3.connect(path)) as conn:
        fill(conn, "?")
    return SqliteDatabase(path)


@pytest.fixture(params=["mydumper", "mysqldump"])
def mysql_db(request):
    db = new_database("airlock_it_backup", tool=request.param)
    with db.connect() as conn:
        fill(conn, "%s")
    yield db
    db.drop()


def test_sqlite_round_trip_restores_identical_data(sqlite_db, tmp_path):
    store = LocalBackupStore(tmp_path / "backups", "t", "staging")
    before = sqlite_rows(sqlite_db.path)
    manifest = take_backup(sqlite_db, store, "b1", META, {"version": "2.16.2"})
    assert manifest.tables["metrics"]["rows"] == 499
    assert verify_backup(sqlite_db, store, "b1")["ok"]
    with closing(sqlite3.connect(sqlite_db.path)) as conn:
        conn.execute("DELETE FROM metrics WHERE id > 10")
        conn.execute("CREATE TABLE added_by_migration (x INTEGER)")
        conn.commit()
    restore_backup(sqlite_db, store, "b1")
    assert sqlite_rows(sqlite_db.path) == before
    with closing(sqlite3.connect(sqlite_db.path)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "added_by_migration" not in tables
    assert json.loads((store.path("b1") / "configuration.json").read_text()) == {"version": "2.16.2"}


def test_backup_without_manifest_is_never_used(sqlite_db, tmp_path):
    store = LocalBackupStore(tmp_path / "backups", "t", "staging")
    take_backup(sqlite_db, store, "b1", META)
    (store.path("b1") / "manifest.json").unlink()
    with pytest.raises(BackupError, match="has no manifest: it is incomplete"):
        verify_backup(sqlite_db, store, "b1")
    with pytest.raises(BackupError, match="is not verified"):
        restore_backup(sqlite_db, store, "b1")


def test_corrupted_sqlite_snapshot_fails_verification_naming_the_file(sqlite_db, tmp_path):
    store = LocalBackupStore(tmp_path / "backups", "t", "staging")
    take_backup(sqlite_db, store, "b1", META)
    snapshot = store.path("b1") / SNAPSHOT
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snapshot.write_bytes(bytes(data))
    with pytest.raises(BackupError, match=f"file {SNAPSHOT} is corrupted"):
        verify_backup(sqlite_db, store, "b1")
    assert not store.is_verified("b1")


def test_mysql_round_trip_restores_identical_data(mysql_db, tmp_path):
    store = LocalBackupStore(tmp_path / "backups", "t", "production")
    before = mysql_rows(mysql_db)
    manifest = take_backup(mysql_db, store, "b1", META)
    assert manifest.facts["charset"] == "utf8mb4"
    verification = verify_backup(mysql_db, store, "b1")
    assert verification["rows"] == 39 + 499
    assert verification["scratch"].startswith("mysql database airlock_verify_")
    with mysql_db.connect() as conn:  # what a migration does: new tables, changed rows
        mysql_db.query(conn, "CREATE TABLE added_by_migration (x INT)")
        mysql_db.query(conn, "UPDATE metrics SET value = value * 2")
    restore_backup(mysql_db, store, "b1")
    assert mysql_rows(mysql_db) == before
    with mysql_db.connect() as conn:
        assert "added_by_migration" not in mysql_db.tables(conn)


def test_verification_drops_its_scratch_database(mysql_db, tmp_path):
    store = LocalBackupStore(tmp_path / "backups", "t", "production")
    take_backup(mysql_db, store, "b1", META)
    verify_backup(mysql_db, store, "b1")
    with mysql_db.connect(database=None) as conn:
        left = mysql_db.query(conn, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA "
                                    "WHERE SCHEMA_NAME LIKE 'airlock_verify_production%%'")
    assert left == []


def test_mysql_dump_whose_rows_differ_fails_verification_naming_the_table(mysql_db, tmp_path):
    """A dump that decompresses and loads fine but holds different data is caught by the checksums."""
    store = LocalBackupStore(tmp_path / "backups", "t", "production")
    take_backup(mysql_db, store, "b1", META)
    manifest = json.loads((store.path("b1") / "manifest.json").read_text())
    for name in manifest["files"]:
        dump = store.path("b1") / name
        sql = subprocess.run(["zstd", "-dc", str(dump)], capture_output=True, check=True).stdout
        if b"experiment-7 " in sql:
            break
    tampered = sql.replace(b"experiment-7 ", b"experiment-X ", 1)
    dump.write_bytes(subprocess.run(["zstd", "-c"], input=tampered, capture_output=True, check=True).stdout)
    manifest["files"][name]["sha256"] = sha256_of(dump)  # the file check alone would not see it
    (store.path("b1") / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match="table experiments: checksum differs") as error:
        verify_backup(mysql_db, store, "b1")
    assert "metrics" not in str(error.value)


def test_mysql_errors_never_show_the_password(mysql_db, tmp_path, caplog):
    credentials_files = set(Path(tempfile.gettempdir()).glob("airlock-my-*.cnf"))
    store = LocalBackupStore(tmp_path / "backups", "t", "production")
    wrong = MysqlDatabase(MysqlParams("127.0.0.1", 3306, "airlock_it", TEST_PASSWORD + "x", mysql_db.params.database))
    with pytest.raises(DatabaseError) as error:
        take_backup(wrong, store, "b2", META)
    assert "cannot connect" in str(error.value)
    take_backup(mysql_db, store, "b1", META)
    written = b"".join(p.read_bytes() for p in store.path("b1").rglob("*") if p.is_file())
    assert TEST_PASSWORD not in str(error.value) + caplog.text
    assert TEST_PASSWORD.encode() not in written
    assert set(Path(tempfile.gettempdir()).glob("airlock-my-*.cnf")) == credentials_files
