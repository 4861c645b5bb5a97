"""Backup and restore speed: the vendors' guide method against Airlock, in one run, same data.

Generates a MariaDB database of about 250 MB (four InnoDB tables of random base64 text), then
times (a) `mysqldump --single-transaction | gzip > file` and `gunzip -c file | mysql` and (b)
Airlock's backup (consistent dump with manifest and checksums, into the local store) and its
restore (without the verification restore), and samples the peak memory of Airlock's backup
(the Python process and every tool it starts). Then the same backup into an S3 store (a moto server
on this machine), and the longest stall a writer inserting every 10 ms sees during Airlock's backup
against the same writer with no backup running. Last line: `backup speedup X.Xx, restore speedup
Y.Yx, S3 throughput Z.ZZx the local store's, longest writer stall A s during the backup vs B s
without`.

    .venv/bin/python bench/backup.py [--mb 250] [--host 127.0.0.1 --port 3306 --user root]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import MySQLdb
from airlock.backups import read_manifest, take_backup
from airlock.databases.mysql import MysqlDatabase, MysqlParams
from airlock.stores.local import LocalBackupStore
from airlock.stores.s3 import S3BackupStore

TABLES = 4
ROW_BYTES = 300  # id, a 64-char key, two blocks of base64 text


def generate(conn, database: str, megabytes: int) -> None:
    rows_per_table = megabytes * 1_000_000 // ROW_BYTES // TABLES
    cursor = conn.cursor()
    cursor.execute(f"DROP DATABASE IF EXISTS `{database}`")
    cursor.execute(f"CREATE DATABASE `{database}`")
    cursor.execute(f"USE `{database}`")  # the seq_1_to_N sequence tables need a current database
    for n in range(TABLES):
        cursor.execute(f"CREATE TABLE `{database}`.t{n} (id INT PRIMARY KEY, k CHAR(64), "
                       "body TEXT, note VARCHAR(120)) ENGINE=InnoDB")
        cursor.execute(f"INSERT INTO `{database}`.t{n} SELECT seq, SHA2(RAND(), 256), "
                       "TO_BASE64(RANDOM_BYTES(120)), TO_BASE64(RANDOM_BYTES(60)) "
                       f"FROM seq_1_to_{rows_per_table}")
    conn.commit()


def data_megabytes(conn, database: str) -> float:
    cursor = conn.cursor()
    cursor.execute("SELECT SUM(DATA_LENGTH) FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s", (database,))
    return float(cursor.fetchone()[0]) / 1e6


def timed(action) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def median_of_runs(action, runs: int = 3) -> float:
    """The median time of `runs` calls of action(n), n = 1, 2, …: one run is too noisy for a ratio."""
    return statistics.median(timed(partial(action, n)) for n in range(1, runs + 1))


def shell_free_pipeline(first: list[str], second: list[str], stdin=None, stdout=None) -> None:
    """first | second, as two processes (no shell), failing loudly on either's error."""
    a = subprocess.Popen(first, stdin=stdin, stdout=subprocess.PIPE)
    b = subprocess.Popen(second, stdin=a.stdout, stdout=stdout)
    a.stdout.close()
    if b.wait() != 0 or a.wait() != 0:
        raise RuntimeError(f"{first[0]} | {second[0]} failed ({a.returncode}, {b.returncode})")


class Writer:
    """Inserts a row every 10 ms and records how long each insert took."""

    def __init__(self, args, database: str):
        self.conn = MySQLdb.connect(host=args.host, port=args.port, user=args.user, password=args.password,
                                    database=database, autocommit=True)
        self.conn.cursor().execute("CREATE TABLE IF NOT EXISTS writes (id INT AUTO_INCREMENT PRIMARY KEY, at DOUBLE)")
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        cursor = self.conn.cursor()
        while not self.stop.is_set():
            started = time.monotonic()
            cursor.execute("INSERT INTO writes (at) VALUES (%s)", (started,))
            self.latencies.append(time.monotonic() - started)
            time.sleep(0.01)

    def __enter__(self):
        self.thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        time.sleep(0.5)
        self.stop.set()
        self.thread.join()
        self.conn.close()

    def summary(self) -> str:
        ordered = sorted(self.latencies)
        p99 = ordered[int(len(ordered) * 0.99) - 1]
        return (f"{len(ordered)} writes, median {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.0f} ms, "
                f"longest stall {max(ordered):.2f} s")


class PeakMemory:
    """Samples the summed RSS of this process and all its descendants."""

    def __init__(self):
        self.peak = 0
        self.done = threading.Event()

    def tree_rss(self) -> int:
        children: dict[int, list[int]] = {}
        rss: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
                rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
        total, todo = 0, [os.getpid()]
        while todo:
            pid = todo.pop()
            total += rss.get(pid, 0)
            todo.extend(children.get(pid, []))
        return total

    def sample(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, self.tree_rss())

    def __enter__(self):
        threading.Thread(target=self.sample, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.done.set()


def bench_args(description: str) -> argparse.Namespace:
    """--mb and where the MariaDB server is (the password from $BENCH_MYSQL_PASSWORD)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--mb", type=int, default=250)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default=os.environ.get("BENCH_MYSQL_PASSWORD", ""))
    return parser.parse_args()


def generated(args: argparse.Namespace, database: str):
    """A connection to the server, with `database` generated at about --mb megabytes."""
    conn = MySQLdb.connect(host=args.host, port=args.port, user=args.user, password=args.password, autocommit=True)
    print(f"generating about {args.mb} MB in {database} ...", flush=True)
    generate(conn, database, args.mb)
    print(f"{database}: {data_megabytes(conn, database):.0f} MB of InnoDB data in {TABLES} tables", flush=True)
    return conn


def s3_store_on_moto(stack):
    """An S3 backup store on a moto server started for the bench (stopped when `stack` closes)."""
    import boto3

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from services import start_moto

    process, endpoint = start_moto()
    stack.callback(process.kill)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                          aws_secret_access_key="bench")
    client.create_bucket(Bucket="airlock-bench")
    return S3BackupStore(client, "s3://airlock-bench/backups", "bench", "production")


def main() -> None:
    args = bench_args(__doc__.splitlines()[0])
    source, target = "airlock_bench_source", "airlock_bench_restore"
    conn = generated(args, source)
    params = MysqlParams(args.host, args.port, args.user, args.password, source)
    db, restored = MysqlDatabase(params), MysqlDatabase(MysqlParams(args.host, args.port, args.user,
                                                                    args.password, target))
    meta = {"target": "bench", "environment": "production", "purpose": "bench", "run_id": "bench",
            "platform": "mlflow", "platform_version": "0"}
    with tempfile.TemporaryDirectory(prefix="airlock-bench-") as work, db.defaults_file() as cnf, \
            contextlib.ExitStack() as stack:
        dump = Path(work) / "guide.sql.gz"
        creds = [f"--defaults-extra-file={cnf}"]
        with open(dump, "wb") as out:
            guide_backup = timed(lambda: shell_free_pipeline(
                ["mysqldump", *creds, "--single-transaction", source], ["gzip"], stdout=out))
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{target}`")
        conn.cursor().execute(f"CREATE DATABASE `{target}`")
        guide_restore = timed(lambda: shell_free_pipeline(["gunzip", "-c", str(dump)], ["mysql", *creds, target]))
        store = LocalBackupStore(Path(work) / "store", "bench", "production")
        with Writer(args, source) as idle_writer:  # the same writer, with no backup running
            time.sleep(10)
        with PeakMemory() as memory:
            airlock_backup = median_of_runs(lambda n: take_backup(db, store, f"b{n}", meta))
        with Writer(args, source) as writer:
            take_backup(db, store, "with-writer", meta)
        manifest = read_manifest(store, "b1")
        airlock_restore = timed(lambda: restored.load(store.path("b1"), manifest.facts))
        same = restored.table_stats() == manifest.tables
        airlock_bytes = sum(f["bytes"] for f in manifest.files.values())
        s3 = s3_store_on_moto(stack)
        s3_backup = median_of_runs(lambda n: take_backup(db, s3, f"b{n}", meta))
        s3_manifest = read_manifest(s3, "b1")
        data_mb = data_megabytes(conn, source)
        print(f"guide   backup  (mysqldump --single-transaction | gzip): {guide_backup:6.1f} s, "
              f"{dump.stat().st_size / 1e6:.0f} MB")
        print(f"airlock backup  ({manifest.facts['tool']} + zstd, manifest with checksums): {airlock_backup:6.1f} s "
              f"(median of 3), "
              f"{airlock_bytes / 1e6:.0f} MB, peak memory {memory.peak / 1e6:.0f} MB (process tree), "
              f"{data_mb / airlock_backup:.0f} MB/s of data into the local store")
        print(f"airlock backup  to S3 (moto on this machine; {s3_manifest.facts['tool']}, "
              f"{len(s3_manifest.files)} objects): {s3_backup:6.1f} s (median of 3), "
              f"{data_mb / s3_backup:.0f} MB/s of data")
        print(f"writer inserting every 10 ms: without a backup {idle_writer.summary()}; during Airlock's backup "
              f"{writer.summary()} (writers held {manifest.facts.get('writers_held_seconds')} s)")
        print(f"guide   restore (gunzip | mysql): {guide_restore:6.1f} s")
        print(f"airlock restore ({'myloader' if manifest.facts['tool'] == 'mydumper' else 'mysql'}, no verification): "
              f"{airlock_restore:6.1f} s, restored data equal to the manifest: {same}")
    for name in (source, target):
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
    backup_ratio, restore_ratio = guide_backup / airlock_backup, guide_restore / airlock_restore
    print(f"backup speedup {backup_ratio:.1f}x, restore speedup {restore_ratio:.1f}x, S3 throughput "
          f"{airlock_backup / s3_backup:.2f}x the local store's (bar 0.8x), longest writer stall "
          f"{max(writer.latencies):.2f} s during the backup vs {max(idle_writer.latencies):.2f} s without (bar 0.5 s)")


if __name__ == "__main__":
    main()
