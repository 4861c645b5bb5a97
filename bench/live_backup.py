"""The phase-1 backup of a live MariaDB with a writer inserting every 10 ms, and a restore over a live
database: main's way (LOCK TABLES … READ for the whole dump; drop the database, then load) against
Airlock's (writers held only while the snapshots open; load beside the live data, then swap), in one
run on the same data. Prints the writer's stalls and the times; last line:
`writer stall ratio X.Xx (main/airlock), restore time ratio Y.Yx (main/airlock)`.

    .venv/bin/python bench/live_backup.py [--mb 250] [--host 127.0.0.1 --port 3306 --user root]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from airlock.backups import (
    check_files,
    read_manifest,
    restore_backup,
    table_differences,
    take_backup,
    verify_backup,
)
from airlock.databases.mysql import MysqlDatabase, MysqlParams, quote_identifier
from airlock.stores.local import LocalBackupStore
from backup import Writer, bench_args, generated, timed

META = {"target": "bench", "environment": "production", "purpose": "bench", "run_id": "bench",
        "platform": "mlflow", "platform_version": "0"}


def main_style_locked_dump(db: MysqlDatabase, directory: Path) -> None:
    """main's phase-1 backup: every table READ-locked for the length of the dump."""
    directory.mkdir(parents=True)
    with db.connect() as conn:
        tables = db.tables(conn)
        db.query(conn, "LOCK TABLES " + ", ".join(f"{quote_identifier(t)} READ" for t in tables))
        try:
            db.run_mydumper(directory, lambda line: None)
            db.stats_with(conn)
        finally:
            db.query(conn, "UNLOCK TABLES")


def main_style_restore(db: MysqlDatabase, store: LocalBackupStore, manifest) -> None:
    """main's restore: check the files, drop the live database and load into its name, then compare."""
    check_files(store, manifest)
    db.load(store.path(manifest.backup_id), manifest.facts)
    assert not table_differences(manifest.tables, db.table_stats())


def main() -> None:
    args = bench_args(__doc__.splitlines()[0])
    source = "airlock_bench_live"
    conn = generated(args, source)
    db = MysqlDatabase(MysqlParams(args.host, args.port, args.user, args.password, source), "mydumper")
    with tempfile.TemporaryDirectory(prefix="airlock-bench-") as work:
        with Writer(args, source) as main_writer:
            main_seconds = timed(lambda: main_style_locked_dump(db, Path(work) / "main"))
        store = LocalBackupStore(Path(work) / "store", "bench", "production")
        with Writer(args, source) as airlock_writer:
            airlock_seconds = timed(lambda: take_backup(db, store, "b1", META))
        held = read_manifest(store, "b1").facts["writers_held_seconds"]
        print(f"main    backup {main_seconds:5.1f} s, writer: {main_writer.summary()}")
        print(f"airlock backup {airlock_seconds:5.1f} s (writers held {held:.3f} s), "
              f"writer: {airlock_writer.summary()}")

        verify_backup(db, store, "b1")
        manifest = read_manifest(store, "b1")
        main_restore = timed(lambda: main_style_restore(db, store, manifest))
        airlock_restore = timed(lambda: restore_backup(db, store, "b1"))  # checks, load beside, prove, swap
        print(f"main    restore (check files, drop, load into the live name, compare): {main_restore:5.1f} s")
        print(f"airlock restore (check files, tools, room; load beside, compare, swap): {airlock_restore:5.1f} s")
    conn.cursor().execute(f"DROP DATABASE IF EXISTS `{source}`")
    stall = max(main_writer.latencies) / max(airlock_writer.latencies)
    print(f"writer stall ratio {stall:.1f}x (main/airlock), restore time ratio {main_restore / airlock_restore:.2f}x "
          "(main/airlock)")


if __name__ == "__main__":
    main()
