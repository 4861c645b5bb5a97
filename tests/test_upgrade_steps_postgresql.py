"""An MLflow server on PostgreSQL, taken through every step that touches data: backup, rehearsal,
stop, final backup, migration, start on 3.17.2, fingerprint, and a rollback to 2.16.2."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from airlock import steps
from airlock.config import load_target
from airlock.demo import SEED_MLFLOW
from airlock.environment import open_environment
from airlock.waits import run_waits
from services import new_postgres_database

pytestmark = pytest.mark.integration
OLD, NEW = "2.16.2", "3.17.2"
RUN = "manual__postgresql"


@pytest.fixture(scope="module")
def aws_connection(aws_conn_id):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    S3Hook(aws_conn_id=aws_conn_id).get_conn().create_bucket(Bucket="airlock-pg")
    return aws_conn_id


@pytest.fixture(params=["local", "s3"])
def production(request, tmp_path, mlflow_venvs, aws_connection):
    database = new_postgres_database("airlock_it_mlflow")
    backup = ({"location": str(tmp_path / "backups")} if request.param == "local" else
              {"location": f"s3://airlock-pg/{tmp_path.name}", "aws_conn_id": aws_connection, "sse": "AES256"})
    envs = {name: {"url": f"http://127.0.0.1:{port}",
                   "driver": {"kind": "process", "state_dir": str(tmp_path / name)},
                   "database": {"kind": "postgresql", "conn_id": "unused_in_this_test", "database": db}}
            for name, port, db in (("staging", 5181, "unused_staging"), ("production", 5182, database.params.database))}
    targets = tmp_path / "targets.yaml"
    targets.write_text(yaml.safe_dump({"targets": {"pg": {
        "platform": "mlflow", "approvers": ["admin"], "upgrade": {"allow_minor_skips": True},
        "backup": backup, "log_dir": str(tmp_path / "log"), "environments": envs}}}))
    env = open_environment(load_target("pg", targets), "production", resolve=lambda config: database)
    env.driver.start(OLD)
    subprocess.run([str(env.driver.venv_path(OLD) / "bin" / "python"), str(SEED_MLFLOW), env.config.url],
                   check=True, capture_output=True)
    yield env
    env.driver.stop()
    database.drop()


def test_mlflow_on_postgresql_upgrades_and_rolls_back_to_the_exact_data(production):
    env = production
    plan = {"from": OLD, "to": NEW, "production": {"change": "major", "current": OLD, "target": NEW}}
    before = env.adapter.fingerprint().digest
    tables_before = env.database.table_stats()

    assert steps.backup(env, steps.PREPARE, RUN, OLD)["verified"]
    rehearsal = steps.rehearse_migration(env, RUN, plan)
    assert rehearsal["migration_seconds"] > 0
    assert env.adapter.server_version() == OLD  # the rehearsal ran on a copy
    assert env.database.table_stats() == tables_before

    run_waits(steps.freeze(env, RUN, plan))
    # nothing written since phase 1: its files make up the final backup (copied inside the store)
    assert steps.final_backup(env, RUN)["adopted_from"] == steps.backup_id_for("production", steps.PREPARE, RUN)
    steps.migrate(env, RUN)
    migrated = steps.verify_migrated_data(env, RUN)  # every old column's values, by PostgreSQL's checksums
    assert migrated["equal_to_final_backup"] and migrated["new_tables"]  # 3.x tables are not judged
    assert migrated["rows"] == sum(t["rows"] for name, t in tables_before.items() if name != "alembic_version")
    run_waits(steps.start(env, RUN))
    assert steps.check_health(env, plan)["version"] == NEW
    steps.smoke(env)
    assert steps.verify_fingerprint(env, RUN)["equal_to_pre_upgrade"]
    assert len(env.database.table_stats()) > len(tables_before)  # 3.x tables exist now

    rolled_back = run_waits(steps.rollback(env, RUN))
    assert rolled_back["rolled_back"] and rolled_back["version"] == OLD
    assert env.adapter.server_version() == OLD
    assert env.adapter.fingerprint().digest == before
    assert env.database.table_stats() == tables_before
    assert env.store.in_progress() is None
    # the database as 3.17.2 left it was kept before the restore
    assert {b.split("--")[1] for b in env.store.backups()} == {"prepare", "final", "post-upgrade"}


def test_a_migration_failing_half_way_on_postgresql_is_rolled_back_to_the_exact_data(production):
    """Production holds a table a later 3.x migration creates: the migration fails part of the way
    through. (On PostgreSQL alembic runs the migrations in one transaction, so the failure undoes the
    ones before it; the rollback must not depend on that.) The rollback brings back 2.16.2 and
    exactly the data before."""
    env = production
    plan = {"from": OLD, "to": NEW, "production": {"change": "major", "current": OLD, "target": NEW}}
    with env.database.connect() as conn:
        env.database.query(conn, "CREATE TABLE webhooks (id INTEGER PRIMARY KEY)")
    before, tables_before = env.adapter.fingerprint().digest, env.database.table_stats()
    steps.backup(env, steps.PREPARE, RUN, OLD)
    run_waits(steps.freeze(env, RUN, plan))
    steps.final_backup(env, RUN)
    with pytest.raises(Exception, match=r"migration of .* failed"):
        steps.migrate(env, RUN)
    rolled_back = run_waits(steps.rollback(env, RUN))
    assert rolled_back["version"] == OLD and rolled_back["fingerprint_equal"]
    assert env.database.table_stats() == tables_before
    assert env.adapter.fingerprint().digest == before
