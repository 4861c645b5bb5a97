"""Backups on real SQLite, MariaDB (mydumper and mysqldump) and PostgreSQL: round trips,
verification that catches corruption, consistency under writes, no leaked password."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import tempfile
import threading
from contextlib import closing
from pathlib import Path

import MySQLdb
import pytest
from airlock.backups import (
    BackupError,
    adopt_backup,
    is_verified,
    read_manifest,
    restore_backup,
    take_backup,
    verify_backup,
)
from airlock.child_env import child_env
from airlock.databases.base import DatabaseError
from airlock.databases.mysql import MysqlDatabase, MysqlParams, charset_clause
from airlock.databases.postgresql import PostgresDatabase, PostgresParams
from airlock.databases.sqlite import SNAPSHOT, SqliteDatabase
from airlock.migrated_data import compare_migrated, migration_losses, shared_columns
from airlock.signing import Signer
from airlock.stores.base import sha256_of
from airlock.stores.local import LocalBackupStore
from services import TEST_PASSWORD, new_database, new_postgres_database

META = {"target": "t", "environment": "production", "purpose": "prepare", "run_id": "r1",
        "platform": "mlflow", "platform_version": "2.16.2"}
TYPES = {"sqlite": ("DOUBLE", "BLOB", "?"), "mysql": ("DOUBLE", "BLOB", "%s"),
         "postgresql": ("DOUBLE PRECISION", "BYTEA", "%s")}


def fill(conn, kind: str) -> None:
    double, blob, mark = TYPES[kind]
    cursor = conn.cursor()
    cursor.execute("CREATE TABLE experiments (id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL, note TEXT)")
    cursor.execute(f"CREATE TABLE metrics (id INTEGER PRIMARY KEY, experiment_id INTEGER NOT NULL, value {double},"
                   f" payload {blob}, FOREIGN KEY (experiment_id) REFERENCES experiments(id))")
    rows = [(i, f"experiment-{i} ünïcode ✓", None if i % 3 else f"note {i}") for i in range(1, 40)]
    cursor.executemany(f"INSERT INTO experiments VALUES ({mark},{mark},{mark})", rows)
    metrics = [(i, 1 + i % 39, i / 7.0, bytes([i % 256, 0, 255])) for i in range(1, 500)]
    cursor.executemany(f"INSERT INTO metrics VALUES ({mark},{mark},{mark},{mark})", metrics)
    conn.commit()


def rows_of(db) -> dict:
    if isinstance(db, SqliteDatabase):
        with closing(sqlite3.connect(db.path)) as conn:
            return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in ("experiments", "metrics")}
    with db.connect() as conn:
        return {t: sorted(tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                          for row in db.query(conn, f"SELECT * FROM {t}")) for t in ("experiments", "metrics")}


def execute(db, *statements: str) -> None:
    if isinstance(db, SqliteDatabase):
        with closing(sqlite3.connect(db.path)) as conn:
            for statement in statements:
                conn.execute(statement)
            conn.commit()
        return
    with db.connect() as conn:
        for statement in statements:
            db.query(conn, statement)


def filled_database(kind: str, tmp_path, prefix: str):
    """A database of `kind` (sqlite, mydumper, mysqldump or postgresql) with the test tables."""
    if kind == "sqlite":
        database = SqliteDatabase(tmp_path / "mlflow.db")
        with closing(sqlite3.connect(database.path)) as conn:
            fill(conn, "sqlite")
    elif kind == "postgresql":
        database = new_postgres_database(prefix)
        with database.connect(autocommit=False) as conn:
            fill(conn, "postgresql")
    else:
        database = new_database(prefix, tool=kind)
        with database.connect() as conn:
            fill(conn, "mysql")
    return database


@pytest.fixture(params=["sqlite", "mydumper", "mysqldump", "postgresql"])
def db(request, tmp_path):
    database = filled_database(request.param, tmp_path, "airlock_it_backup")
    yield database
    database.drop()


def store_in(tmp_path) -> LocalBackupStore:
    return LocalBackupStore(tmp_path / "backups", "t", "production")


def test_round_trip_restores_identical_data_and_drops_what_a_migration_added(db, tmp_path):
    store = store_in(tmp_path)
    before = rows_of(db)
    manifest = take_backup(db, store, "b1", META, {"version": "2.16.2"})
    assert manifest.tables["metrics"]["rows"] == 499
    verification = verify_backup(db, store, "b1")
    assert verification["rows"] == 39 + 499
    execute(db, "CREATE TABLE added_by_migration (x INTEGER)", "UPDATE metrics SET value = value * 2",
            "DELETE FROM metrics WHERE id > 400")
    restore_backup(db, store, "b1")
    assert rows_of(db) == before
    assert "added_by_migration" not in db.table_stats()
    assert json.loads((store.path("b1") / "configuration.json").read_text()) == {"version": "2.16.2"}


FINAL_META = {**META, "purpose": "final"}


def adopts_only_while_equal(db, store) -> None:
    """A verified set is adopted while the database holds exactly its data, and restores that data;
    a changed value, or a renamed column with every value the same, makes it refuse."""
    before = rows_of(db)
    take_backup(db, store, "b1", META, {"version": "2.16.2"})
    assert "b1 is not a verified set" in adopt_backup(db, store, "b0", "b1", FINAL_META)  # never adopted
    verify_backup(db, store, "b1")
    first = read_manifest(store, "b1")

    adopted = adopt_backup(db, store, "b2", "b1", FINAL_META, {"version": "2.16.2", "taken": "again"})

    assert adopted is not None and adopted.facts["adopted_from"] == "b1" and adopted.purpose == "final"
    assert adopted.tables == first.tables
    assert ("engine_checksums" in first.facts) == isinstance(db, MysqlDatabase)  # MariaDB: proven by CHECKSUM TABLE
    assert {name: entry for name, entry in adopted.files.items() if name != "configuration.json"} == \
        {name: entry for name, entry in first.files.items() if name != "configuration.json"}
    assert is_verified(store, "b2") and store.read_json("b2", "verification.json")["equal_to"] == "b1"
    assert store.read_json("b2", "configuration.json") == {"version": "2.16.2", "taken": "again"}
    execute(db, "UPDATE experiments SET note = 'changed' WHERE id = 3")
    assert db.tables_changed_since(first.tables, first.facts) == ["experiments"]
    assert adopt_backup(db, store, "b3", "b1", FINAL_META).endswith(  # one value changed, same row count
        "changed since backup b1 was taken (at least in tables experiments)")
    execute(db, "UPDATE experiments SET note = 'note 3' WHERE id = 3",
            "ALTER TABLE experiments RENAME COLUMN note TO remark")
    assert db.table_stats() == first.tables  # the checksums alone would not see the rename
    assert db.tables_changed_since(first.tables, first.facts) == ["experiments"]
    assert isinstance(adopt_backup(db, store, "b4", "b1", FINAL_META), str)
    execute(db, "UPDATE metrics SET value = 0 WHERE id = 5")
    # MariaDB stops at a column change (enough to refuse; a dump follows) without its engine scan
    assert db.tables_changed_since(first.tables, first.facts) == \
        (["experiments"] if isinstance(db, MysqlDatabase) else ["experiments", "metrics"])
    assert sorted(store.backups()) == ["b1", "b2"]
    execute(db, "DROP TABLE metrics")
    assert db.tables_changed_since(first.tables, first.facts) == ["experiments", "metrics"]
    store.delete("b1")  # a retention may delete the set adopted from: the adopted one stands alone
    restore_backup(db, store, "b2")
    assert rows_of(db) == before and "remark" not in db.table_columns()["experiments"]


def test_a_verified_set_is_adopted_only_while_the_database_holds_exactly_its_data(db, tmp_path):
    adopts_only_while_equal(db, signed_store(tmp_path))


def test_a_set_missing_a_file_since_its_verification_is_not_adopted(tmp_path):
    """The set to adopt lost a file (deleted by hand, a broken disk): the new set is dumped instead
    of failing the final backup, and nothing half-made of it stays in the store."""
    db = filled_database("sqlite", tmp_path, "unused")
    store = store_in(tmp_path)
    manifest = take_backup(db, store, "b1", META)
    verify_backup(db, store, "b1")
    (store.path("b1") / next(iter(manifest.files))).unlink()
    assert adopt_backup(db, store, "b2", "b1", FINAL_META).startswith("a file of backup b1 cannot be copied")
    assert store.backup_ids() == ["b1"]


def migrated_losses(db, manifest, rewritten: tuple[str, ...] = ()) -> list[str]:
    """The database now against a backup, as the step after a migration compares them."""
    return compare_migrated(db, manifest.tables, manifest.facts, rewritten)[2]


def test_a_migration_that_adds_is_equal_and_one_that_loses_or_rewrites_is_named(db, tmp_path):
    """The checksums over the columns both schemas share: what a migration adds is not judged; a
    row, a column or a value it loses is named (each database kind computes them itself)."""
    manifest = take_backup(db, store_in(tmp_path), "b1", META)
    assert manifest.facts["columns"]["metrics"] == ["id", "experiment_id", "value", "payload"]
    assert db.table_stats(manifest.facts["columns"]) == manifest.tables  # all columns: the same checksum
    execute(db, "CREATE TABLE added_by_migration (x INTEGER)", "ALTER TABLE experiments ADD COLUMN workspace "
                "VARCHAR(50) DEFAULT 'default'", "UPDATE experiments SET workspace = 'team-a' WHERE id < 5")
    assert migrated_losses(db, manifest) == []

    execute(db, "UPDATE experiments SET name = 'renamed' WHERE id = 3", "ALTER TABLE metrics DROP COLUMN payload")
    changed = "table experiments: values changed in its old columns (39 rows)"
    assert migrated_losses(db, manifest) == [
        changed, "table metrics: column(s) payload dropped, with the values of 499 rows"]
    execute(db, "DELETE FROM metrics WHERE id > 400")
    assert migrated_losses(db, manifest) == [changed, "table metrics: 499 rows before, 400 after"]
    execute(db, "INSERT INTO experiments (id, name) VALUES (40, 'the vendor adds one of its own')")
    assert migrated_losses(db, manifest)[0] == "table experiments: 39 rows before, 40 after"
    # a table the vendor's migration rewrites by design: only that none of its rows went is checked
    assert migrated_losses(db, manifest, rewritten=("experiments",)) == ["table metrics: 499 rows before, 400 after"]
    assert migrated_losses(db, manifest, rewritten=("experiments", "metrics")) == [
        "table metrics: 499 rows before, 400 after"]


def test_on_mysql_a_table_the_migration_only_indexed_is_proven_by_its_engine_checksum(tmp_path):
    """MariaDB's CHECKSUM TABLE, recorded with the backup, proves a table whose columns the migration
    left as they were unchanged in one engine scan (MLflow 3's migration only indexes `metrics`, its
    largest table); a changed value in such a table still fails the engine checksum and is named by
    the SQL checksum."""
    db = filled_database("mydumper", tmp_path, "airlock_it_engine")
    try:
        manifest = take_backup(db, store_in(tmp_path), "b1", META)
        assert set(manifest.facts["engine_checksums"]) == {"experiments", "metrics"}
        summed, real_stats = [], db.stats_with

        def stats_with(conn, columns=None):
            summed.extend(columns or ["(all)"])
            return real_stats(conn, columns)

        db.stats_with = stats_with
        execute(db, "CREATE INDEX by_value ON metrics (value)", "ALTER TABLE experiments ADD COLUMN workspace "
                    "VARCHAR(50) DEFAULT 'default'")
        assert migrated_losses(db, manifest) == []
        assert summed == ["experiments"]  # metrics: its engine checksum, no SQL checksum pass
        execute(db, "UPDATE metrics SET value = 0.5 WHERE id = 7")
        assert migrated_losses(db, manifest) == ["table metrics: values changed in its old columns (499 rows)"]
    finally:
        db.drop()


def test_mariadbs_checksum_table_reads_the_dumps_snapshot_not_a_later_write(tmp_path):
    """What recording CHECKSUM TABLE with a dump relies on: inside the snapshot, a write committed
    after it is not seen (else a backup missing that write could later pass as equal to the live data)."""
    db = filled_database("mydumper", tmp_path, "airlock_it_engine_snap")
    try:
        with db.snapshot() as conn:
            before = db.engine_checksums_with(conn, ["experiments"])
            execute(db, "INSERT INTO experiments (id, name) VALUES (100, 'written after the snapshot')")
            assert db.engine_checksums_with(conn, ["experiments"]) == before
        with db.connect() as conn:
            assert db.engine_checksums_with(conn, ["experiments"]) != before
    finally:
        db.drop()


def test_verification_leaves_no_scratch_database_behind(db, tmp_path):
    store = store_in(tmp_path)
    take_backup(db, store, "b1", META)
    verify_backup(db, store, "b1")
    if isinstance(db, SqliteDatabase):
        assert not list(Path(tempfile.gettempdir()).glob(db.scratch_prefix("production").replace("_", "-") + "*"))
        return
    listing = ("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA" if isinstance(db, MysqlDatabase)
               else "SELECT datname FROM pg_database")
    with db.connect(database="postgres" if isinstance(db, PostgresDatabase) else None) as conn:
        names = [row[0] for row in db.query(conn, listing)]
    # only this database's copies: the server is shared with tests running beside
    assert not [name for name in names if name.startswith(db.scratch_prefix("production"))]


def test_dump_whose_rows_differ_fails_verification_naming_the_table(db, tmp_path):
    """A backup that decompresses and loads fine but holds different data is caught by the checksums."""
    store = store_in(tmp_path)
    take_backup(db, store, "b1", META)
    manifest = json.loads((store.path("b1") / "manifest.json").read_text())
    name, plain = next((name, text) for name in manifest["files"] if name.endswith(".zst")
                       for text in [subprocess.run(["zstd", "-dc", str(store.path("b1") / name)],
                                                   capture_output=True, check=True, env=child_env()).stdout]
                       if b"experiment-7 " in text or isinstance(db, SqliteDatabase))
    path = store.path("b1") / name
    if isinstance(db, SqliteDatabase):  # a valid database file with one value changed
        with tempfile.TemporaryDirectory() as work:
            copy = Path(work) / "copy.sqlite"
            copy.write_bytes(plain)
            with closing(sqlite3.connect(copy)) as conn:
                conn.execute("UPDATE experiments SET name = 'experiment-X' WHERE id = 7")
                conn.commit()
            plain_tampered = copy.read_bytes()
    else:
        plain_tampered = plain.replace(b"experiment-7 ", b"experiment-X ", 1)
    # the test's own zstd gets the environment Airlock gives its tools: the secret scan of every session
    # on the machine looks at every zstd, however short-lived
    path.write_bytes(subprocess.run(["zstd", "-c"], input=plain_tampered, capture_output=True, check=True,
                                    env=child_env()).stdout)
    manifest["files"][name]["sha256"] = sha256_of(path)  # the file check alone would not see it
    (store.path("b1") / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match="table experiments: checksum differs") as error:
        verify_backup(db, store, "b1")
    assert "metrics" not in str(error.value)
    assert not is_verified(store, "b1")


def test_corrupted_file_fails_verification_naming_the_file(db, tmp_path):
    store = store_in(tmp_path)
    manifest = take_backup(db, store, "b1", META)
    name = sorted(manifest.files)[0]
    data = bytearray((store.path("b1") / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (store.path("b1") / name).write_bytes(bytes(data))
    with pytest.raises(BackupError, match=f"file {name} is corrupted"):
        verify_backup(db, store, "b1")
    with pytest.raises(BackupError, match="is not verified"):
        restore_backup(db, store, "b1")


def test_backup_without_manifest_is_never_used(tmp_path):
    database = filled_database("sqlite", tmp_path, "unused")
    store = store_in(tmp_path)
    take_backup(database, store, "b1", META)
    (store.path("b1") / "manifest.json").unlink()
    with pytest.raises(BackupError, match="has no manifest: it is incomplete"):
        verify_backup(database, store, "b1")
    assert SNAPSHOT in [p.name for p in store.path("b1").iterdir()]


def test_postgres_backup_is_consistent_while_writes_go_on(tmp_path):
    """The manifest describes the exported snapshot exactly, however many rows arrive meanwhile."""
    database = new_postgres_database("airlock_it_writes")
    try:
        with database.connect(autocommit=False) as conn:
            fill(conn, "postgresql")
        stop = threading.Event()

        def keep_writing():
            with database.connect() as conn:
                i = 1000
                while not stop.is_set():
                    database.query(conn, "INSERT INTO metrics VALUES (%s, 1, 0.5, NULL)", (i,))
                    i += 1

        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            store = store_in(tmp_path)
            take_backup(database, store, "b1", META)
            assert verify_backup(database, store, "b1")["ok"]
        finally:
            stop.set()
            writer.join()
        assert database.table_stats()["metrics"]["rows"] > read_manifest(store, "b1").tables["metrics"]["rows"]
    finally:
        database.drop()


@pytest.mark.parametrize("kind", ["mysql", "postgresql"])
def test_errors_never_show_the_password(kind, tmp_path, caplog, private_tmp):
    leftovers = ("airlock-my-*.cnf", "airlock-pgpass-*")
    good = new_database("airlock_it_secret") if kind == "mysql" else new_postgres_database("airlock_it_secret")
    try:
        params_class = MysqlParams if kind == "mysql" else PostgresParams
        bad_class = MysqlDatabase if kind == "mysql" else PostgresDatabase
        wrong = bad_class(params_class("127.0.0.1", good.params.port, "no_such_user", TEST_PASSWORD, "no_such_db"))
        with pytest.raises(DatabaseError) as error:
            take_backup(wrong, store_in(tmp_path), "b2", META)
        assert "cannot connect" in str(error.value)
        store = store_in(tmp_path)
        take_backup(good, store, "b1", META)
        written = b"".join(p.read_bytes() for p in store.path("b1").rglob("*") if p.is_file())
        assert TEST_PASSWORD not in str(error.value) + caplog.text
        assert TEST_PASSWORD.encode() not in written
        assert [path for pattern in leftovers for path in private_tmp.glob(pattern)] == []  # no credentials file left
    finally:
        good.drop()


def kill_dump_connections(db, stop: threading.Event) -> list[int]:
    """Play a network failure: terminate the dump tool's server connections once it is reading."""
    from services import admin_connection, postgres_admin

    killed: list[int] = []
    while not stop.is_set() and not killed:
        if isinstance(db, PostgresDatabase):
            with closing(postgres_admin()) as conn, conn.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(pid), pid FROM pg_stat_activity WHERE datname = %s "
                               "AND application_name = 'pg_dump' AND query ILIKE 'COPY%%'", (db.params.database,))
                killed = [row[1] for row in cursor.fetchall()]
        else:
            with closing(admin_connection()) as conn, conn.cursor() as cursor:
                cursor.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE '%%SQL_NO_CACHE%%'"
                               " AND (DB = %s OR INFO LIKE %s) AND ID <> CONNECTION_ID()",
                               (db.params.database, f"%{db.params.database}%big%"))
                for (connection_id,) in cursor.fetchall():
                    try:
                        cursor.execute(f"KILL {int(connection_id)}")
                        killed.append(connection_id)
                    except MySQLdb.OperationalError:  # that query ended meanwhile: look again
                        continue
    return killed


@pytest.mark.parametrize("kind", ["mydumper", "mysqldump", "postgresql"])
def test_connection_cut_during_the_dump_fails_the_backup_and_it_is_never_verified(kind, tmp_path):
    db = new_postgres_database("airlock_it_cut") if kind == "postgresql" else new_database("airlock_it_cut", kind)
    try:
        filler = ("INSERT INTO big SELECT g, md5(g::text) || repeat('x', 400) FROM generate_series(1, 800000) g"
                  if kind == "postgresql" else
                  "INSERT INTO big SELECT seq, CONCAT(MD5(seq), REPEAT('x', 400)) FROM seq_1_to_800000")
        execute(db, "CREATE TABLE big (id INTEGER PRIMARY KEY, body TEXT)", filler)
        for attempt in range(3):  # a cut that lands after the last row is no cut: the set must then be whole
            store = store_in(tmp_path / f"try-{attempt}")
            error = cut_during_backup(db, store)
            if error is not None:
                break
            assert verify_backup(db, store, "b1")["ok"], "the dump ended normally, yet its set does not verify"
        else:
            pytest.fail("the dump's connection was never cut while it was reading (3 tries)")
        assert db.params.database in str(error)
        assert store.backups() == []  # no manifest: never offered for a rollback
        assert not is_verified(store, "b1")
        with pytest.raises(BackupError, match="no manifest"):
            verify_backup(db, store, "b1")
    finally:
        db.drop()


def cut_during_backup(db, store) -> DatabaseError | None:
    """Take a backup while the database server kills the dump's connection; the error it failed with
    (None when the dump finished before the cut)."""
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=lambda: killed.extend(kill_dump_connections(db, stop)))
    killer.start()
    try:
        take_backup(db, store, "b1", META)
    except DatabaseError as error:
        return error
    finally:
        stop.set()
        killer.join()
    return None


def test_dump_verify_and_restore_log_progress_while_they_run(tmp_path, caplog, monkeypatch):
    db = new_database("airlock_it_progress", tool="mysqldump")
    try:
        execute(db, "CREATE TABLE big (id INTEGER PRIMARY KEY, body TEXT)",
                "INSERT INTO big SELECT seq, TO_BASE64(RANDOM_BYTES(300)) FROM seq_1_to_200000")
        monkeypatch.setenv("AIRLOCK_PROGRESS_SECONDS", "0.2")
        caplog.set_level("INFO", logger="airlock")
        store = store_in(tmp_path)
        take_backup(db, store, "b1", META)
        dumped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dumping ")]
        assert len(dumped) >= 2 and all(f"dumping {db.params.database}: " in line and "MB/s" in line
                                        for line in dumped[:-1]), dumped
        assert dumped[-1].startswith(f"dumping {db.params.database}: done in ")

        caplog.clear()
        verify_backup(db, store, "b1")
        loading = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loading backup b1 into ")]
        assert len(loading) >= 2 and " so far" in loading[0] and loading[-1].split(": ")[-1].startswith("done in ")

        caplog.clear()
        restore_backup(db, store, "b1")  # the verification took about as long: the time left is known
        restoring = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loading backup b1 into ")]
        assert any("left (it took" in line or "longer than the" in line for line in restoring), restoring
    finally:
        db.drop()


def signed_store(tmp_path, key: str = "k" * 32) -> LocalBackupStore:
    store = store_in(tmp_path)
    store.signer = Signer(lambda: key, "test key")
    return store


def test_backup_sets_and_markers_are_owner_only(db, tmp_path):
    """Dumps hold every team's data and the marker says what is being done: nobody else reads them."""
    store = signed_store(tmp_path)
    take_backup(db, store, "b1", META, {"version": "2.16.2"})
    verify_backup(db, store, "b1")
    store.mark_in_progress({"run_id": "r1"})
    paths = [store.base, *store.base.rglob("*")]
    wrong = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths
             if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)}
    assert wrong == {}  # folders 0700, files 0600: nothing readable by anyone else
    checked = {p.name for p in paths if p.is_file()}
    assert store.marker_path() in paths
    assert checked - {"manifest.json", "verification.json", "configuration.json", store.marker_path().name}  # dumps


def test_a_forged_set_in_the_store_is_refused_at_restore(db, tmp_path):
    """Someone who can write to the store (not to Airflow) builds a complete, 'verified' set of their
    own data, manifest and statistics included: it is refused, and production keeps its data."""
    store = signed_store(tmp_path)
    take_backup(db, store, "b1", META)
    verify_backup(db, store, "b1")
    before = rows_of(db)
    execute(db, "UPDATE experiments SET name = 'forged' WHERE id = 7")
    for forger in (store_in(tmp_path), signed_store(tmp_path, key="another-key-of-32-characters-xx")):
        take_backup(db, forger, "forged", META)
        verify_backup(db, forger, "forged")  # writes verification.json, as a forger with the code could
        execute(db, "UPDATE experiments SET name = 'live' WHERE id = 7")
        with pytest.raises(BackupError, match="not signed") as refused:
            restore_backup(db, store, "forged")
        assert "Refusing to use it" in str(refused.value)
        assert rows_of(db)["experiments"][6][1] == "live"  # untouched
        execute(db, "UPDATE experiments SET name = 'forged' WHERE id = 7")
    restore_backup(db, store, "b1")  # the genuine set still restores
    assert rows_of(db) == before


def test_a_manifest_naming_files_outside_its_set_is_refused(tmp_path):
    database = filled_database("sqlite", tmp_path, "unused")
    store = store_in(tmp_path)
    take_backup(database, store, "b1", META)
    manifest = json.loads((store.path("b1") / "manifest.json").read_text())
    manifest["files"]["../../../../etc/passwd"] = {"sha256": "0", "bytes": 1}
    (store.path("b1") / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match="names files outside the set"):
        read_manifest(store, "b1")


@pytest.mark.parametrize("charset", ["utf8mb4\n", "utf8mb4 COLLATE x; DROP DATABASE mlflow", "", 7])
def test_charset_from_a_manifest_is_checked_before_it_reaches_sql(charset):
    with pytest.raises(DatabaseError, match="refusing to put it into SQL"):
        charset_clause({"charset": charset or "x" * 65, "collation": "utf8mb4_general_ci"})


def test_a_table_whose_old_columns_all_went_is_named_not_a_crash():
    """A migration that renames every column of a table (or drops the table) leaves nothing to
    checksum: the table is named, unless the vendor rewrites it by design."""
    before_columns = {"runs": ["id", "name"], "tags": ["key", "value"], "alembic_version": ["version_num"]}
    before = {"runs": {"rows": 3, "checksum": "a"}, "tags": {"rows": 2, "checksum": "b"},
              "alembic_version": {"rows": 1, "checksum": "c"}}
    now_columns = {"runs": ["run_id", "run_name"], "alembic_version": ["version_num"]}
    assert shared_columns(before_columns, now_columns) == {}
    assert migration_losses(before, before_columns, {}, now_columns) == [
        "table runs (3 rows) lost all its columns (id, name)", "table tags (2 rows) is gone"]
    assert migration_losses(before, before_columns, {}, now_columns, rewritten=("runs", "tags")) == []
