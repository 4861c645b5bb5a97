"""Production downtime at size: the MLflow guide's method 1 by hand against Airlock's production
phase, in one run, on two equal MLflow databases of at least 1 GB on MariaDB (2.16.2 → 3.17.2).

Each database gets its schema from MLflow 2.16.2's first start and its runs by bulk SQL (as in
bench/fingerprint.py: 5 params, 3 tags, 5 metrics × 50 steps each). A prober asks the server's
/health every 0.2 s; the downtime is the longest gap between two answers, i.e. from the last answer
before the stop to the first after the start.
  (a) the guide: stop the server, `mysqldump --single-transaction | gzip > file`, `mlflow db upgrade`
      with 3.17.2, start 3.17.2. The migration and the start are each timed alone: their sum is the
      physical minimum.
  (b) Airlock: its phase-1 backup first (the server serving), a run logged by a user, then the
      production steps as the DAG's tasks run them: the backup before the stop (dumped and verified
      by a restore into a scratch database while the drained server serves), freeze (fingerprint,
      stop), the final backup (adopting the one before the stop when the database still holds
      exactly its data; else a dump and a restore), migrate, migrated data, start. Each step is
      timed: where the downtime goes.
Last line: `Airlock X.XXx the physical minimum (bar 1.2x), Y.YYx the guide's method (bar 0.5x)`.

    .venv/bin/python bench/downtime.py [--runs 17000] [--ports 5306,5307]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml
from airlock import steps
from airlock.child_env import child_env
from airlock.config import load_target
from airlock.databases.mysql import MysqlDatabase, MysqlParams
from airlock.drivers.process import ensure_platform_venv
from airlock.environment import open_environment
from airlock.platforms.mlflow import MlflowAdapter
from airlock.waits import run_waits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fingerprint import EXPERIMENT, seed  # the same bulk seeding

OLD, NEW = "2.16.2", "3.17.2"
RUN = "manual__bench_downtime"
PLAN = {"from": OLD, "to": NEW, "production": {"change": "major", "current": OLD, "target": NEW}}
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # as the tests run MLflow 3 (no job runner)


def args_() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=17000, help="runs per database (17,000 ≈ 1 GB)")
    parser.add_argument("--ports", default="5306,5307", help="the guide's server port, Airlock's server port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--db-port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    return parser.parse_args()


class Prober:
    """GET /health every 0.2 s; the longest gap between two answers is the downtime."""

    def __init__(self, url: str):
        self.url, self.answers, self.done = f"{url}/health", [], threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)

    def poll(self) -> None:
        while not self.done.is_set():
            asked = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=1) as response:
                    if response.status == 200:
                        self.answers.append(asked)
            except OSError:
                pass
            self.done.wait(max(0.0, 0.2 - (time.monotonic() - asked)))

    def __enter__(self) -> Prober:
        """Once the server has answered a few times: the gap must start at an answer before the stop."""
        self.thread.start()
        deadline = time.monotonic() + 30
        while len(self.answers) < 3:
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.url} does not answer: nothing to measure a downtime from")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.5)  # a few answers after the start
        self.done.set()
        self.thread.join()

    def downtime(self) -> float:
        return max(later - earlier for earlier, later in zip(self.answers, self.answers[1:], strict=False))


def database(args, name: str) -> MysqlDatabase:
    return MysqlDatabase(MysqlParams(host=args.host, port=args.db_port, user=args.user, password="", database=name))


def wait_serving(url: str, version: str, seconds: float = 300) -> None:
    """Until the server answers with `version` (not an older server still holding the port)."""
    adapter, deadline = MlflowAdapter(url), time.monotonic() + seconds
    while time.monotonic() < deadline:
        if adapter.is_healthy() and adapter.server_version() == version:
            return
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer with MLflow {version} within {seconds:.0f} s")


def start_server(version: str, db: MysqlDatabase, port: int) -> subprocess.Popen:
    venv = ensure_platform_venv(MlflowAdapter("http://x"), version)
    return subprocess.Popen([str(venv / "bin" / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**child_env(), **SERVER_ENV, "MLFLOW_BACKEND_STORE_URI": db.sqlalchemy_uri()},
                            start_new_session=True)


def stop_server(server: subprocess.Popen, seconds: float = 60) -> None:
    """SIGTERM to the CLI and the server it started, then wait until every one of them is gone (the
    CLI exits before its server has let go of the port)."""
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(seconds)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(server.pid, signal.SIGKILL)


def seeded(args, db: MysqlDatabase, port: int) -> float:
    """The database with MLflow 2.16.2's schema and --runs runs; its size in MB."""
    db.recreate({})
    server = start_server(OLD, db, port)
    try:
        wait_serving(f"http://127.0.0.1:{port}", OLD)
    finally:
        stop_server(server)
    with db.connect() as conn:
        cursor = conn.cursor()
        cursor.execute(f"INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage, "
                       f"creation_time, last_update_time) VALUES ({EXPERIMENT}, 'bench', "
                       f"'mlflow-artifacts:/{EXPERIMENT}', 'active', 1700000000000, 1700000000000)")
        for first in range(1, args.runs + 1, 5000):
            seed(conn, first, min(first + 4999, args.runs))
        conn.commit()
        cursor.execute("ANALYZE TABLE runs, params, tags, metrics, latest_metrics")
        cursor.fetchall()
        cursor.execute("SELECT SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES "
                       "WHERE TABLE_SCHEMA=%s", (db.params.database,))
        return float(cursor.fetchone()[0]) / 1e6


def timed(action) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def the_guides_method(args, db: MysqlDatabase, port: int, work: Path) -> dict:
    """Method 1 by hand: stop, mysqldump | gzip, mlflow db upgrade, start."""
    server = start_server(OLD, db, port)
    wait_serving(f"http://127.0.0.1:{port}", OLD)
    times = {}
    with Prober(f"http://127.0.0.1:{port}") as prober, db.defaults_file() as cnf:
        times["stop"] = timed(lambda: stop_server(server))
        with open(work / "guide.sql.gz", "wb") as out:
            def dump_gzip() -> None:
                dump = subprocess.Popen(["mysqldump", f"--defaults-extra-file={cnf}", "--single-transaction",
                                         db.params.database], stdout=subprocess.PIPE, env=child_env())
                gzip = subprocess.run(["gzip"], stdin=dump.stdout, stdout=out, check=True)
                dump.stdout.close()
                if dump.wait() != 0 or gzip.returncode != 0:
                    raise SystemExit("mysqldump | gzip failed")
            times["backup"] = timed(dump_gzip)
        venv = ensure_platform_venv(MlflowAdapter("http://x"), NEW)
        times["migrate"] = timed(lambda: subprocess.run([str(venv / "bin" / "mlflow"), "db", "upgrade",
                                                         db.sqlalchemy_uri()], env=child_env(), check=True,
                                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        started = time.monotonic()
        server = start_server(NEW, db, port)
        wait_serving(f"http://127.0.0.1:{port}", NEW)
        times["start"] = time.monotonic() - started
    stop_server(server)
    return {**times, "downtime": prober.downtime(), "physical": times["migrate"] + times["start"]}


def airlock_environment(args, db: MysqlDatabase, port: int, work: Path):
    """Airlock's production environment of a one-target targets file (process driver, local store)."""
    entry = {"url": f"http://127.0.0.1:{port}", "database": {"kind": "mysql", "conn_id": "bench_mysql",
                                                               "database": db.params.database},
             "driver": {"kind": "process", "state_dir": str(work / "production"), "env": SERVER_ENV,
                        "start_timeout_seconds": 300, "migration_timeout_seconds": 3600}}
    targets = work / "targets.yaml"
    targets.write_text(yaml.safe_dump({"targets": {"bench": {
        "platform": "mlflow", "approvers": ["admin"], "backup": {"location": str(work / "backups")},
        "environments": {"staging": {**entry, "url": f"http://127.0.0.1:{port + 1000}",
                                     "driver": {**entry["driver"], "state_dir": str(work / "staging")},
                                     "database": {**entry["database"], "database": "airlock_bench_unused"}},
                         "production": entry}}}}))
    os.environ["AIRFLOW_CONN_BENCH_MYSQL"] = f"mysql://{args.user}@{args.host}:{args.db_port}"
    os.environ.setdefault("AIRFLOW_VAR_AIRLOCK_BACKUP_SIGNING_KEY", secrets.token_hex(32))
    return open_environment(load_target("bench", targets), "production", resolve=lambda config: db)


def log_a_run(url: str) -> None:
    """A user's write after phase 1, through the REST API: the production phase's backups must hold it."""
    body = json.dumps({"experiment_id": str(EXPERIMENT), "start_time": int(time.time() * 1000)}).encode()
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/runs/create", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def airlocks_production_phase(args, db: MysqlDatabase, port: int, work: Path) -> dict:
    env = airlock_environment(args, db, port, work)
    run_waits(env.driver.launch(OLD))
    times = {"phase-1 backup (serving)": timed(lambda: steps.backup(env, steps.PREPARE, RUN, OLD))}
    log_a_run(env.config.url)  # written between phase 1 and the production phase, as users do
    with Prober(env.config.url) as prober:
        serving = {}
        times["backup before the stop (serving)"] = timed(
            lambda: serving.update(steps.backup_before_stop(env, RUN, PLAN)))
        times["freeze (fingerprint, stop)"] = timed(lambda: run_waits(steps.freeze(env, RUN, PLAN)))
        final = {}
        times["final backup"] = timed(lambda: final.update(steps.final_backup(env, RUN)))
        times["migrate"] = timed(lambda: steps.migrate(env, RUN))
        times["migrated data"] = timed(lambda: steps.verify_migrated_data(env, RUN))
        times["start"] = timed(lambda: run_waits(steps.start(env, RUN)))
    env.driver.stop()
    env.store.clear_in_progress(RUN)
    print(f"backup before the stop: {describe_backup(serving)}; final backup: {describe_backup(final)}", flush=True)
    return {**times, "downtime": prober.downtime()}


def describe_backup(result: dict) -> str:
    if result.get("adopted_from"):
        return f"adopted {result['adopted_from']} (no dump, no restore)"
    return f"dumped in {result['backup_seconds']:.1f} s, verified in {result['verify_seconds']:.1f} s"


def main() -> None:
    args = args_()
    guide_port, airlock_port = (int(port) for port in args.ports.split(","))
    guide_db, airlock_db = database(args, "airlock_bench_downtime_guide"), database(args, "airlock_bench_downtime")
    with tempfile.TemporaryDirectory(prefix="airlock-bench-downtime-") as scratch:
        work = Path(scratch)
        try:
            for db, port in ((guide_db, guide_port), (airlock_db, airlock_port)):
                started = time.monotonic()
                megabytes = seeded(args, db, port)
                print(f"{db.params.database}: {args.runs:,} runs, {megabytes:,.0f} MB (data + indexes), seeded in "
                      f"{time.monotonic() - started:.0f} s", flush=True)
            guide = the_guides_method(args, guide_db, guide_port, work)
            print("the guide's method: " + ", ".join(f"{step} {guide[step]:.1f} s" for step in
                                                      ("stop", "backup", "migrate", "start")), flush=True)
            print(f"physical minimum (the migration and the new server's start, each alone): "
                  f"{guide['physical']:.1f} s", flush=True)
            airlock = airlocks_production_phase(args, airlock_db, airlock_port, work)
            print("Airlock: " + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in airlock.items()
                                          if step != "downtime"), flush=True)
        finally:
            for db in (guide_db, airlock_db):
                db.drop()
    own = airlock["migrate"] + airlock["start"]
    print(f"downtime: the guide's method {guide['downtime']:.1f} s, Airlock {airlock['downtime']:.1f} s, "
          f"physical minimum {guide['physical']:.1f} s")
    print(f"Airlock's own migration and start in this run: {own:.1f} s; its downtime is "
          f"{airlock['downtime'] / own:.2f}x that (the same migration varies from run to run; this ratio does "
          "not depend on it)")
    print(f"Airlock {airlock['downtime'] / guide['physical']:.2f}x the physical minimum (bar 1.2x), "
          f"{airlock['downtime'] / guide['downtime']:.2f}x the guide's method (bar 0.5x)")


if __name__ == "__main__":
    main()
