"""Where scratch copies go and what a full disk does: verification on another server, a scratch copy
left by a worker killed mid-verification is dropped by the next run, a backup store that fills up,
and a database server without room for a restore. Private MariaDB servers and small tmpfs disks."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
import yaml
from airlock import steps
from airlock.backups import restore_backup, take_backup, verify_backup
from airlock.config import load_target
from airlock.databases.base import DatabaseError
from airlock.databases.mysql import MysqlDatabase
from airlock.environment import open_environment
from airlock.stores.local import LocalBackupStore
from services import PrivateMariadb, connection_uri_for_airflow, scratch_copies_on_its_server, small_tmpfs
from test_backups import META, fill, rows_of
from test_restore_faults import grow, worker

pytestmark = pytest.mark.integration


@pytest.fixture
def private_server(tmp_path):
    server = PrivateMariadb(tmp_path / "private")
    yield server
    server.stop()


def filled(params, rows: int = 0) -> MysqlDatabase:
    db = MysqlDatabase(params, "mydumper")
    db.recreate({})
    with db.connect() as conn:
        fill(conn, "mysql")
    if rows:
        grow(db, rows)
    return db


def test_verification_copies_go_to_the_targets_scratch_server(tmp_path, private_server, monkeypatch):
    """`scratch: {conn_id}`: production's server is neither loaded nor filled by the verification."""
    from services import new_database

    production = new_database("airlock_it_scratch", tool="mydumper")
    with production.connect() as conn:
        fill(conn, "mysql")
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOCK_IT_PROD", connection_uri_for_airflow() + "/")
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOCK_IT_SCRATCH",
                       connection_uri_for_airflow(private_server.port) + "/")
    envs = {name: {"url": f"http://127.0.0.1:{port}",
                   "driver": {"kind": "process", "state_dir": str(tmp_path / name)},
                   "database": {"kind": "mysql", "conn_id": "airlock_it_prod", "database": db}}
            for name, port, db in (("staging", 5231, "unused_staging"),
                                   ("production", 5232, production.params.database))}
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump({"targets": {"scratchy": {
        "platform": "mlflow", "approvers": ["admin"], "backup": {"location": str(tmp_path / "backups")},
        "scratch": {"conn_id": "airlock_it_scratch"}, "environments": envs}}}))
    try:
        env = open_environment(load_target("scratchy", path), "production")
        result = steps.backup(env, steps.PREPARE, "manual__scratch", "2.16.2")
        verification = env.store.read_json(result["backup_id"], "verification.json")
        assert f"127.0.0.1:{private_server.port}" in verification["scratch"], verification
        assert scratch_copies_on_its_server(production, "production") == []  # not one on 3306, even briefly kept
        assert not [name for name in private_server.schemas() if name.startswith("airlock_verify_")]
    finally:
        production.drop()


def test_a_scratch_copy_left_by_a_killed_worker_is_dropped_by_the_next_run(tmp_path, private_server):
    db = filled(private_server.params("mlflow"), rows=300000)
    store = LocalBackupStore(tmp_path / "backups", "t", "production")
    take_backup(db, store, "b1", META)
    verifying = worker(db, store, 'verify_backup(db, store, "b1")')
    deadline = time.monotonic() + 60
    while not [n for n in private_server.schemas() if n.startswith("airlock_verify_")]:
        assert time.monotonic() < deadline and verifying.poll() is None, "the verification never made its copy"
        time.sleep(0.02)
    os.killpg(verifying.pid, signal.SIGKILL)
    verifying.wait()
    left = [n for n in private_server.schemas() if n.startswith("airlock_verify_")]
    assert left, "nothing was left behind: the kill came too late to test anything"

    assert verify_backup(db, store, "b1")["ok"]  # the task, cleared, runs again

    assert [n for n in private_server.schemas() if n.startswith("airlock_verify_")] == []


def test_a_backup_store_that_fills_up_leaves_no_usable_set_and_production_untouched(tmp_path, private_server):
    db = filled(private_server.params("mlflow"), rows=200000)
    before = rows_of(db)
    with small_tmpfs(tmp_path / "full", "1m") as full:
        store = LocalBackupStore(full, "t", "production")
        with pytest.raises(DatabaseError, match="No space left on device"):
            take_backup(db, store, "b1", META)
        assert store.backups() == []  # no manifest: never offered for a rollback
    assert rows_of(db) == before


def test_a_restore_is_refused_when_the_database_server_lacks_room(tmp_path):
    """The server's data directory is on a disk that has filled up (other databases, logs): a copy of
    the data beside the live data does not fit, so the restore is refused before anything is touched."""
    with small_tmpfs(tmp_path / "small-disk", "96m") as disk:
        server = PrivateMariadb(disk)
        try:
            db = filled(server.params("mlflow"), rows=60000)
            store = LocalBackupStore(tmp_path / "backups", "t", "production")
            manifest = take_backup(db, store, "b1", META)
            verify_backup(db, store, "b1")
            with db.connect() as conn:
                db.query(conn, "DELETE FROM metrics WHERE id > 1000")
            migrated = rows_of(db)
            ballast = shutil.disk_usage(disk).free - manifest.facts["disk_bytes"] // 2
            (disk / "ballast").write_bytes(b"\0" * ballast)
            with pytest.raises(DatabaseError, match=r"data has \d+\.\d MB free and the restore needs about"):
                restore_backup(db, store, "b1")
            assert rows_of(db) == migrated
        finally:
            server.stop()
