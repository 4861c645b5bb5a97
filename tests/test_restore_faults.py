"""Faults during a restore over the live database, injected the way they happen: a missing tool, a
disk with no room, the connection cut by the server (KILL), the worker killed (SIGKILL) mid-load;
and the backup's own guarantees: routines, events, triggers, views and PostgreSQL grants come back,
and writers are not held for the length of a backup. Each asserts the data a user would find."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from airlock.backups import restore_backup, take_backup, verify_backup
from airlock.databases.base import DatabaseError
from airlock.databases.mysql import MysqlDatabase
from airlock.databases.postgresql import PostgresDatabase
from airlock.stores.local import LocalBackupStore
from services import TEST_USER, admin_connection, postgres_admin
from test_backups import META, execute, filled_database, rows_of

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


def grow(db, rows: int, first_id: int = 1000) -> None:
    """Enough data that loading it takes a while (about 100 bytes a row)."""
    with db.connect() as conn:
        for start in range(first_id, first_id + rows, 20000):
            values = ",".join(f"({i}, 1, {i / 3}, NULL)" for i in range(start, min(start + 20000, first_id + rows)))
            db.query(conn, f"INSERT INTO metrics VALUES {values}")
            if isinstance(db, PostgresDatabase):
                conn.commit() if not conn.autocommit else None


@pytest.fixture(params=["mydumper", "mysqldump", "postgresql"])
def backed_up(request, tmp_path):
    """A database with a verified backup, then changed the way a migration changes it."""
    db = filled_database(request.param, tmp_path, "airlock_it_fault")
    grow(db, 60000)
    store = LocalBackupStore(tmp_path / "backups", "t", "production")
    take_backup(db, store, "b1", META)
    verify_backup(db, store, "b1")
    expected = rows_of(db)
    execute(db, "CREATE TABLE added_by_migration (x INTEGER)", "DELETE FROM metrics WHERE id > 30000")
    migrated = rows_of(db)
    yield db, store, expected, migrated
    db.drop()


def test_restore_without_its_tool_changes_nothing(backed_up, tmp_path, monkeypatch):
    db, store, _, migrated = backed_up
    only_zstd = tmp_path / "bin"
    only_zstd.mkdir()
    (only_zstd / "zstd").symlink_to("/usr/bin/zstd")
    monkeypatch.setenv("PATH", str(only_zstd))
    tool = "pg_restore" if isinstance(db, PostgresDatabase) else (
        "myloader" if db.tool == "mydumper" else "mysql")
    with pytest.raises(DatabaseError, match=f"{tool} not installed on this worker; nothing was changed"):
        restore_backup(db, store, "b1")
    assert rows_of(db) == migrated
    assert "added_by_migration" in db.table_stats()


@pytest.mark.parametrize("backed_up", ["mydumper", "postgresql"], indirect=True)
def test_restore_without_room_on_disk_changes_nothing(backed_up, tmp_path, monkeypatch):
    """TMPDIR on a 1 MB tmpfs, where a directory-format restore decompresses: refused before the live
    database is touched. (A mysqldump stream needs no temporary files.)"""
    db, store, _, migrated = backed_up
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        from conftest import unavailable

        unavailable(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        monkeypatch.setenv("TMPDIR", str(small))
        import tempfile

        monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR, as a fresh worker would
        with pytest.raises(DatabaseError, match=rf"{small} has \d+\.\d MB free and the restore needs about"):
            restore_backup(db, store, "b1")
        assert rows_of(db) == migrated
    finally:
        subprocess.run(["umount", str(small)], check=True)


def kill_restore_connections(db) -> int:
    """Cut every connection to the restore's staging database, as a server (or a DBA) would."""
    staging = db.restore_staging().params.database
    if isinstance(db, PostgresDatabase):
        conn = postgres_admin()
        with conn.cursor() as cursor:
            cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
                           (staging,))
            killed = cursor.fetchone()[0]
        conn.close()
        return killed
    conn = admin_connection()
    killed = 0
    with conn.cursor() as cursor:
        cursor.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND USER = %s",
                       (staging, TEST_USER))
        for (connection_id,) in cursor.fetchall():
            try:
                cursor.execute(f"KILL {int(connection_id)}")
                killed += 1
            except Exception:
                pass
    conn.close()
    return killed


def wait_for_load(db, deadline: float, restoring) -> bool:
    """True once the restore has begun loading into its staging database (a table exists there);
    False when it ended first (under load it may load between two looks) or by the deadline."""
    staging = db.restore_staging()
    while time.monotonic() < deadline and restoring():
        try:
            if staging.exists() and staging.table_stats():
                return True
        except DatabaseError:
            pass
        time.sleep(0.005)
    return False


def cut_during_a_restore(db, store) -> tuple[int, list[BaseException]]:
    """Start a restore, and cut its connections once it loads: (connections killed, what it raised)."""
    failure: list[BaseException] = []

    def restore():
        try:
            restore_backup(db, store, "b1")
        except BaseException as error:
            failure.append(error)

    worker = threading.Thread(target=restore)
    worker.start()
    killed = 0
    if not wait_for_load(db, time.monotonic() + 120, worker.is_alive):  # a miss: the caller looks again
        worker.join()
        return killed, failure
    while worker.is_alive() and not killed:
        killed = kill_restore_connections(db)
    worker.join()
    return killed, failure


def test_restore_whose_connection_is_cut_leaves_the_old_data_and_a_rerun_ends_exact(backed_up):
    db, store, expected, migrated = backed_up
    before = migrated
    for _ in range(3):  # a cut that lands after the load finished is no cut: that restore must be exact
        killed, failure = cut_during_a_restore(db, store)
        if failure:
            break
        assert rows_of(db) == expected, "a restore that reported success is not exact"
        before = expected
    assert killed and failure, "three cuts in a row missed the restore"
    assert rows_of(db) == before  # cut half-way: the live database is as it was
    restore_backup(db, store, "b1")  # on-call clears the task
    assert rows_of(db) == expected
    assert "added_by_migration" not in db.table_stats()


WORKER = """
import sys
sys.path.insert(0, {tests!r})
from airlock.backups import restore_backup, take_backup, verify_backup
from airlock.databases.{module} import {cls}, ServerParams
from airlock.stores.local import LocalBackupStore
from test_backups import META
db = {cls}(ServerParams(*{params!r}){extra})
store = LocalBackupStore({root!r}, "t", "production")
{call}
"""


def worker(db, store: LocalBackupStore, call: str) -> subprocess.Popen:
    """A separate process (a task's worker) running `call` on this database and store."""
    postgres = isinstance(db, PostgresDatabase)
    p = db.params
    script = WORKER.format(tests=str(REPO / "tests"), module="postgresql" if postgres else "mysql",
                           cls="PostgresDatabase" if postgres else "MysqlDatabase",
                           params=(p.host, p.port, p.user, p.password, p.database),
                           extra="" if postgres else f", {db.tool!r}", root=str(store.base.parent.parent), call=call)
    return subprocess.Popen([sys.executable, "-c", script], start_new_session=True)


def test_worker_killed_during_a_restore_leaves_the_old_data_and_a_rerun_ends_exact(backed_up):
    """kill -9 of the process running the restore, mid-load; then the task is cleared and re-runs."""
    db, store, expected, migrated = backed_up
    before = migrated
    for _ in range(3):  # a restore that ended before the kill landed is no fault: it must be exact
        restoring = worker(db, store, 'restore_backup(db, store, "b1")')
        loading = wait_for_load(db, time.monotonic() + 120, lambda process=restoring: process.poll() is None)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(restoring.pid, signal.SIGKILL)
        if restoring.wait() == -signal.SIGKILL and loading:
            break
        assert rows_of(db) == expected, "a restore that ran to its end is not exact"
        before = expected
    else:
        pytest.fail("three kills in a row missed the restore")
    # the old data, or (if the kill came after the swap) the restored data: never a mix, never empty
    assert rows_of(db) in (before, expected)
    restore_backup(db, store, "b1")
    assert rows_of(db) == expected


def test_mysql_routines_events_triggers_and_views_come_back(tmp_path):
    db = filled_database("mydumper", tmp_path, "airlock_it_objects")
    mysqldump_db = MysqlDatabase(db.params, "mysqldump")
    try:
        with db.connect() as conn:
            for statement in (
                    "CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, experiment_id INT)",
                    "CREATE TRIGGER experiments_audit AFTER INSERT ON experiments FOR EACH ROW "
                    "INSERT INTO audit (experiment_id) VALUES (NEW.id)",
                    "CREATE VIEW named AS SELECT id, name FROM experiments",
                    "CREATE PROCEDURE count_metrics(OUT n INT) BEGIN SELECT COUNT(*) INTO n FROM metrics; END",
                    "CREATE FUNCTION double_it(x INT) RETURNS INT DETERMINISTIC RETURN x * 2",
                    "CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY DO DELETE FROM audit WHERE id < 0"):
                db.query(conn, statement)
        for tool_db in (db, mysqldump_db):
            store = LocalBackupStore(tmp_path / f"backups-{tool_db.tool}", "t", "production")
            take_backup(tool_db, store, "b1", META)
            verify_backup(tool_db, store, "b1")
            with db.connect() as conn:  # the migration drops them all
                for statement in ("DROP TRIGGER experiments_audit", "DROP VIEW named", "DROP PROCEDURE count_metrics",
                                  "DROP FUNCTION double_it", "DROP EVENT nightly"):
                    db.query(conn, statement)
            restore_backup(tool_db, store, "b1")
            with db.connect() as conn:
                db.query(conn, "INSERT INTO experiments VALUES (1000, 'after restore', NULL)")
                assert db.query(conn, "SELECT experiment_id FROM audit") == [(1000,)], tool_db.tool
                assert db.query(conn, "SELECT name FROM named WHERE id = 1000") == [("after restore",)]
                db.query(conn, "CALL count_metrics(@n)")
                assert db.query(conn, "SELECT @n, double_it(21)") == [(499, 42)]
                assert db.query(conn, "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s",
                                (db.params.database,)) == [("nightly",)]
                db.query(conn, "DELETE FROM experiments WHERE id = 1000")
                db.query(conn, "DELETE FROM audit")
    finally:
        db.drop()


def test_a_swap_that_cannot_get_its_locks_leaves_the_live_database_whole(tmp_path):
    """A long transaction holds a live table: the swap's RENAME gives up after its lock wait. The live
    tables never moved, and their trigger and view (dropped for the swap) are there again; clearing
    the task once the transaction ended restores exactly."""
    import MySQLdb

    db = filled_database("mydumper", tmp_path, "airlock_it_swap")
    try:
        with db.connect() as conn:
            for statement in ("CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, experiment_id INT)",
                              "CREATE TRIGGER experiments_audit AFTER INSERT ON experiments FOR EACH ROW "
                              "INSERT INTO audit (experiment_id) VALUES (NEW.id)",
                              "CREATE VIEW named AS SELECT id, name FROM experiments"):
                db.query(conn, statement)
        store = LocalBackupStore(tmp_path / "backups", "t", "production")
        take_backup(db, store, "b1", META)
        verify_backup(db, store, "b1")
        expected = rows_of(db)
        execute(db, "DELETE FROM metrics WHERE id > 400")
        migrated = rows_of(db)
        holder = MySQLdb.connect(host=db.params.host, port=db.params.port, user=db.params.user,
                                 password=db.params.password, database=db.params.database)
        holder.cursor().execute("START TRANSACTION")
        holder.cursor().execute("SELECT COUNT(*) FROM metrics")  # a shared metadata lock until it ends
        try:
            with pytest.raises(DatabaseError, match="Lock wait timeout"):
                restore_backup(db, store, "b1")
        finally:
            holder.rollback()
            holder.close()
        assert rows_of(db) == migrated
        with db.connect() as conn:
            db.query(conn, "INSERT INTO experiments VALUES (1000, 'after the failed swap', NULL)")
            assert db.query(conn, "SELECT experiment_id FROM audit") == [(1000,)]
            assert db.query(conn, "SELECT name FROM named WHERE id = 1000") == [("after the failed swap",)]
            db.query(conn, "DELETE FROM experiments WHERE id = 1000")
        restore_backup(db, store, "b1")
        assert rows_of(db) == expected
    finally:
        db.drop()


def test_postgresql_grants_and_ownership_come_back(tmp_path):
    """The server runs as another role than Airlock's: after a rollback it must still read its data."""
    db = filled_database("postgresql", tmp_path, "airlock_it_grants")
    admin = postgres_admin()
    with admin.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = 'airlock_it_app'")
        if not cursor.fetchone():
            cursor.execute("CREATE ROLE airlock_it_app LOGIN")
    admin.close()
    try:
        execute(db, "GRANT SELECT, INSERT ON experiments, metrics TO airlock_it_app",
                f"REVOKE CONNECT ON DATABASE {db.params.database} FROM PUBLIC",
                f"GRANT CONNECT ON DATABASE {db.params.database} TO airlock_it_app")
        store = LocalBackupStore(tmp_path / "backups", "t", "production")
        take_backup(db, store, "b1", META)
        verify_backup(db, store, "b1")
        restore_backup(db, store, "b1")
        import psycopg2

        app = psycopg2.connect(host="127.0.0.1", port=5432, user="airlock_it_app", dbname=db.params.database)
        with app.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM metrics")
            assert cursor.fetchone() == (499,)
        app.close()
        with db.connect("postgres") as conn:
            acl = db.query(conn, "SELECT datacl::text FROM pg_database WHERE datname = %s", (db.params.database,))
        assert "airlock_it_app=c/" in acl[0][0] and "=c/" not in acl[0][0].replace("airlock_it_app=c/", "")
    finally:
        db.drop()


@pytest.mark.parametrize("tool", ["mydumper", "mysqldump"])
def test_a_live_backup_does_not_hold_writers_for_its_length(tmp_path, tool):
    """A writer inserting every 10 ms keeps writing while production is backed up (phase 1), and the
    backup still describes exactly one instant (it verifies, and holds fewer rows than the end)."""
    db = filled_database(tool, tmp_path, "airlock_it_writers")
    try:
        grow(db, 1_500_000)  # about 2 s of dumping here: long enough to tell "held for the dump" apart
        stop, latencies = threading.Event(), []

        def keep_writing():
            with db.connect() as conn:
                i = 10_000_000
                while not stop.is_set():
                    started = time.monotonic()
                    db.query(conn, "INSERT INTO metrics VALUES (%s, 1, 0.5, NULL)", (i,))
                    latencies.append(time.monotonic() - started)
                    i += 1
                    time.sleep(0.01)

        writer = threading.Thread(target=keep_writing)
        writer.start()
        time.sleep(0.3)
        store = LocalBackupStore(tmp_path / "backups", "t", "production")
        try:
            manifest = take_backup(db, store, "b1", META)
        finally:
            stop.set()
            writer.join()
        assert verify_backup(db, store, "b1")["ok"]
        assert db.table_stats()["metrics"]["rows"] > manifest.tables["metrics"]["rows"]
        assert manifest.facts["writers_held_seconds"] < 1.0, manifest.facts
        # the tool's start-up (connections, snapshots) holds writers, not the dump: not more than a fraction
        assert max(latencies) < min(1.0, manifest.seconds / 3), \
            f"a write waited {max(latencies):.2f} s during a {manifest.seconds} s backup"
    finally:
        db.drop()


@pytest.mark.parametrize("backed_up", ["mydumper", "postgresql"], indirect=True)
def test_worker_killed_during_a_backup_leaves_no_usable_set_and_a_rerun_completes(backed_up):
    """kill -9 of the process taking a backup, mid-dump: no half set is ever offered, production is
    untouched, and the task cleared afterwards takes a complete, verified set."""
    db, store, _, _ = backed_up
    grow(db, 200000, first_id=1_000_000)
    before = rows_of(db)
    backing_up = worker(db, store, 'take_backup(db, store, "b2", META)')
    deadline = time.monotonic() + 60
    while not any(store.path("b2").rglob("*")):  # the dump has started writing
        assert time.monotonic() < deadline and backing_up.poll() is None, "the backup never started writing"
        time.sleep(0.01)
    os.killpg(backing_up.pid, signal.SIGKILL)
    backing_up.wait()
    assert "b2" not in store.backups()  # no manifest: never offered for a rollback
    assert rows_of(db) == before
    take_backup(db, store, "b2", META)  # the cleared task
    assert verify_backup(db, store, "b2")["ok"] and "b2" in store.backups()
