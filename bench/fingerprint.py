"""The data fingerprint at production size against a dump of the same database, in one run.

MLflow 2.16.2 creates its schema on MariaDB; runs are then added by bulk SQL (each with 5 params,
3 tags and 5 metrics × 50 steps, as the issue measured) up to each size of --sizes. At each size,
with the server running, the checks an upgrade makes to prove the users' data unchanged are timed
through the same code the upgrade runs:
  - before the stop: steps.steady_fingerprint (one pass of the database's checksums, between two
    reads of the API's fingerprint of the newest runs);
  - after the migration: migrated_data.compare_migrated (the checksums over the shared columns);
  - after the start: the API's fingerprint again;
against `mysqldump --single-transaction` of the same database (to /dev/null: the dump alone).
Printed per size: rows, MB, each time, the fingerprint's ratio to the dump and its growth against
the data's. Last line: `fingerprint X.XXx the dump at N runs (bar 3x); time grew A.Ax for B.Bx the
data`.

    .venv/bin/python bench/fingerprint.py [--sizes 1000,10000,50000] [--port 5305]
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import MySQLdb
from airlock.databases.mysql import MysqlDatabase, MysqlParams
from airlock.drivers.process import ensure_platform_venv
from airlock.migrated_data import compare_migrated
from airlock.platforms.mlflow import MlflowAdapter
from airlock.steps import steady_fingerprint

DATABASE = "airlock_bench_fingerprint"
VERSION = "2.16.2"
EXPERIMENT = 1
PARAMS, TAGS, KEYS, STEPS = 5, 3, 5, 50


def args_() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--port", type=int, default=5305)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--db-port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    return parser.parse_args()


def connect(args, database: str | None = None):
    return MySQLdb.connect(host=args.host, port=args.db_port, user=args.user, database=database or "",
                           autocommit=True)


def start_server(args, database: MysqlDatabase) -> subprocess.Popen:
    """MLflow's server on the database (it creates the schema on its first start)."""
    venv = ensure_platform_venv(MlflowAdapter("http://x"), VERSION)
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": database.sqlalchemy_uri()}
    server = subprocess.Popen([str(venv / "bin" / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                               str(args.port), "--workers", "1"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    adapter = MlflowAdapter(f"http://127.0.0.1:{args.port}")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            adapter.health()
            return server
        except Exception:  # not answering yet
            time.sleep(1)
    os.killpg(server.pid, signal.SIGKILL)
    raise SystemExit("MLflow did not answer within 180 s")


def seed(conn, first: int, last: int) -> None:
    """Runs first..last (ids from MariaDB's sequence tables), with their params, tags and metrics."""
    cursor = conn.cursor()
    runs = f"seq_{first}_to_{last}"
    cursor.execute(f"INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
                   f"start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id) "
                   f"SELECT LPAD(HEX(seq), 32, '0'), CONCAT('run-', seq), 'LOCAL', 'train.py', '', 'bench', "
                   f"'FINISHED', 1700000000000 + seq * 1000, 1700000000000 + seq * 1000 + 500, '', 'active', "
                   f"CONCAT('mlflow-artifacts:/{EXPERIMENT}/', LPAD(HEX(seq), 32, '0'), '/artifacts'), "
                   f"{EXPERIMENT} FROM {runs}")
    cursor.execute(f"INSERT INTO params (`key`, value, run_uuid) SELECT CONCAT('param_', p.seq), "
                   f"CONCAT('value-', r.seq * p.seq), LPAD(HEX(r.seq), 32, '0') FROM {runs} r JOIN seq_1_to_{PARAMS} p")
    cursor.execute(f"INSERT INTO tags (`key`, value, run_uuid) SELECT CONCAT('tag_', t.seq), "
                   f"CONCAT('tag-value-', r.seq), LPAD(HEX(r.seq), 32, '0') FROM {runs} r JOIN seq_1_to_{TAGS} t")
    cursor.execute(f"INSERT INTO metrics (`key`, value, timestamp, run_uuid, step, is_nan) SELECT "
                   f"CONCAT('metric_', k.seq), SIN(r.seq + k.seq * s.seq), 1700000000000 + r.seq * 1000 + s.seq, "
                   f"LPAD(HEX(r.seq), 32, '0'), s.seq, 0 FROM {runs} r JOIN seq_1_to_{KEYS} k "
                   f"JOIN seq_0_to_{STEPS - 1} s")
    cursor.execute(f"INSERT INTO latest_metrics (`key`, value, timestamp, step, is_nan, run_uuid) SELECT "
                   f"CONCAT('metric_', k.seq), SIN(r.seq + k.seq * {STEPS - 1}), "
                   f"1700000000000 + r.seq * 1000 + {STEPS - 1}, {STEPS - 1}, 0, LPAD(HEX(r.seq), 32, '0') "
                   f"FROM {runs} r JOIN seq_1_to_{KEYS} k")


def megabytes(conn) -> float:
    cursor = conn.cursor()
    cursor.execute("ANALYZE TABLE runs, params, tags, metrics, latest_metrics")
    cursor.fetchall()
    cursor.execute("SELECT SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s",
                   (DATABASE,))
    return float(cursor.fetchone()[0]) / 1e6


def timed(action) -> tuple[float, object]:
    started = time.monotonic()
    result = action()
    return time.monotonic() - started, result


def dump_seconds(args) -> float:
    with open(os.devnull, "wb") as sink:
        seconds, _ = timed(lambda: subprocess.run(
            ["mysqldump", "--single-transaction", "--quick", f"--host={args.host}", f"--port={args.db_port}",
             f"--user={args.user}", DATABASE], stdout=sink, check=True))
    return seconds


def measure(args, database: MysqlDatabase, adapter: MlflowAdapter) -> dict:
    """The upgrade's checks, each timed, and the dump."""
    env = SimpleNamespace(name="production", database=database, adapter=adapter)
    before, (_, stats) = timed(lambda: steady_fingerprint(env))
    columns = database.table_columns()
    migrated, (_, _, problems) = timed(lambda: compare_migrated(database, stats, {"columns": columns},
                                                                adapter.migration_rewrites))
    assert problems == [], problems  # nothing changed: the check must say so
    after, _ = timed(adapter.fingerprint)
    return {"before_stop": before, "after_migration": migrated, "after_start": after,
            "fingerprint": before + migrated + after, "dump": dump_seconds(args)}


def main() -> None:
    args = args_()
    sizes = [int(size) for size in args.sizes.split(",")]
    with connect(args) as conn:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{DATABASE}`")
        conn.cursor().execute(f"CREATE DATABASE `{DATABASE}`")
    database = MysqlDatabase(MysqlParams(host=args.host, port=args.db_port, user=args.user, password="",
                                         database=DATABASE))
    server = start_server(args, database)
    adapter = MlflowAdapter(f"http://127.0.0.1:{args.port}")
    results, seeded = [], 0
    try:
        with connect(args, DATABASE) as conn:
            conn.cursor().execute(f"INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage,"
                                  f" creation_time, last_update_time) VALUES ({EXPERIMENT}, 'bench', "
                                  f"'mlflow-artifacts:/{EXPERIMENT}', 'active', 1700000000000, 1700000000000)")
            for size in sizes:
                seeding, _ = timed(lambda first=seeded + 1, last=size: seed(conn, first, last))
                seeded = size
                result = {"runs": size, "metric_points": size * KEYS * STEPS, "mb": megabytes(conn),
                          **measure(args, database, adapter)}
                results.append(result)
                print(f"{size:>6} runs, {result['metric_points']:>10,} metric points, {result['mb']:7.1f} MB "
                      f"(seeded in {seeding:.0f} s): fingerprint {result['fingerprint']:6.2f} s "
                      f"(before the stop {result['before_stop']:.2f}, after the migration "
                      f"{result['after_migration']:.2f}, after the start {result['after_start']:.2f}); "
                      f"dump {result['dump']:6.2f} s; ratio {result['fingerprint'] / result['dump']:.2f}x", flush=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the CLI and the gunicorn it starts
        server.wait(30)
        with connect(args) as conn:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS `{DATABASE}`")
    for smaller, larger in itertools.pairwise(results):
        print(f"{smaller['runs']} → {larger['runs']} runs: data ×{larger['mb'] / smaller['mb']:.1f}, fingerprint "
              f"×{larger['fingerprint'] / smaller['fingerprint']:.1f}, dump ×{larger['dump'] / smaller['dump']:.1f}")
    first, last = results[0], results[-1]
    print(f"fingerprint {last['fingerprint'] / last['dump']:.2f}x the dump at {last['runs']} runs (bar 3x); time grew "
          f"{last['fingerprint'] / first['fingerprint']:.1f}x for {last['mb'] / first['mb']:.1f}x the data")


if __name__ == "__main__":
    sys.exit(main())
