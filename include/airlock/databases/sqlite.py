"""SQLite, the embedded default: online backup API, zstd-compressed snapshot."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from contextlib import closing
from pathlib import Path

from airlock.child_env import child_env
from airlock.databases.base import (
    Columns,
    Database,
    DatabaseError,
    StreamSink,
    StreamSource,
    TableStats,
    compress,
    decompress,
    feed,
    row_checksum_sum,
)

SNAPSHOT = "database.sqlite.zst"


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def columns_with(conn: sqlite3.Connection) -> Columns:
    tables = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    return {table: [row[1] for row in conn.execute(f"PRAGMA table_info({quote_identifier(table)})")]
            for table in tables}


def stats_with(conn: sqlite3.Connection, columns: Columns) -> TableStats:
    stats: TableStats = {}
    for table, names in columns.items():
        selected = ",".join(quote_identifier(name) for name in names)
        rows, checksum = row_checksum_sum(conn.execute(f"SELECT {selected} FROM {quote_identifier(table)}"))
        stats[table] = {"rows": rows, "checksum": checksum}
    return stats


def columns_of(path: Path) -> Columns:
    with closing(read_only(path)) as conn:
        return columns_with(conn)


def stats_of(path: Path, columns: Columns | None = None) -> TableStats:
    """Row count and order-independent checksum of every user table in a SQLite file (or of the
    tables and columns given)."""
    with closing(read_only(path)) as conn:
        return stats_with(conn, columns or columns_with(conn))


def consistent_stats_of(path: Path) -> tuple[TableStats, Columns]:
    """Both read in one transaction: one snapshot of the file."""
    with closing(read_only(path)) as conn:
        conn.execute("BEGIN")
        columns = columns_with(conn)
        return stats_with(conn, columns), columns


def schema_version_of(path: Path) -> str | None:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        try:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError:
            return None
        return row[0] if row else None


class SqliteDatabase(Database):
    kind = "sqlite"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def describe(self) -> str:
        return f"sqlite file {self.path}"

    def sqlalchemy_uri(self) -> str:
        return f"sqlite:///{self.path}"

    def exists(self) -> bool:
        return self.path.is_file()

    def snapshot(self, target: Path) -> tuple[TableStats, dict]:
        """A consistent copy (the online backup API, safe while the server writes) and its stats."""
        if not self.exists():
            raise DatabaseError(f"cannot back up {self.describe()}: the file does not exist")
        with closing(sqlite3.connect(self.path)) as source, closing(sqlite3.connect(target)) as copy:
            source.backup(copy)
        return stats_of(target), {"server_version": sqlite3.sqlite_version,
                                  "schema_version": schema_version_of(target), "columns": columns_of(target)}

    def dump(self, directory: Path) -> tuple[list[str], TableStats, dict]:
        snapshot = directory / "database.sqlite"
        stats, facts = self.snapshot(snapshot)
        compress(snapshot, directory / SNAPSHOT)
        return [SNAPSHOT], stats, facts

    def dump_stream(self, put: StreamSink) -> tuple[list[str], TableStats, dict]:
        # The snapshot is a local copy of a local file; only its compressed form is streamed.
        with tempfile.TemporaryDirectory(prefix="airlock-sqlite-") as work:
            snapshot = Path(work) / "database.sqlite"
            stats, facts = self.snapshot(snapshot)
            with subprocess.Popen(["zstd", "-q", "-3", "-T0", "-c", str(snapshot)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=child_env()) as zstd:
                put(SNAPSHOT, zstd.stdout)
                error = zstd.stderr.read()
            if zstd.returncode != 0:
                raise DatabaseError(f"zstd failed on the snapshot of {self.describe()}: {error.decode()[-500:]}")
        return [SNAPSHOT], stats, facts

    def load(self, directory: Path, facts: dict) -> None:
        staged = self.staged_path()
        decompress(directory / SNAPSHOT, staged)
        self.replace_with(staged)

    def load_stream(self, get: StreamSource, facts: dict) -> None:
        staged = self.staged_path()
        with get(SNAPSHOT) as source, open(staged, "wb") as out:
            unzip = subprocess.Popen(["zstd", "-q", "-d", "-c"], stdin=subprocess.PIPE, stdout=out, env=child_env(),
                                     stderr=subprocess.PIPE)
            feed(source, unzip.stdin).join()
            error = unzip.stderr.read()
            unzip.wait()
        if unzip.returncode != 0:
            staged.unlink(missing_ok=True)
            raise DatabaseError(f"zstd failed restoring {self.describe()}: {error.decode()[-500:]}")
        self.replace_with(staged)

    def staged_path(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.path.with_name(self.path.name + ".airlock-restore")

    def replace_with(self, staged: Path) -> None:
        """Swap the restored file in atomically, dropping the old file's journals."""
        for suffix in ("-wal", "-shm", "-journal"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)
        os.replace(staged, self.path)

    def restore_staging(self) -> SqliteDatabase:
        return SqliteDatabase(self.path.with_name(self.path.name + ".airlock-restore.sqlite"))

    def swap_in(self, staging: Database, facts: dict) -> None:
        assert isinstance(staging, SqliteDatabase)
        self.replace_with(staging.path)

    def table_stats(self, columns: Columns | None = None) -> TableStats:
        return stats_of(self.path, columns)

    def table_columns(self) -> Columns:
        return columns_of(self.path)

    def consistent_stats(self) -> tuple[TableStats, Columns]:
        return consistent_stats_of(self.path)

    def scratch(self, label: str) -> SqliteDatabase:
        prefix = self.scratch_prefix(label).replace("_", "-")
        for stale in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a worker that died verifying
        directory = tempfile.mkdtemp(prefix=prefix)
        return SqliteDatabase(Path(directory) / "scratch.sqlite")

    def drop(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)
        if self.path.parent.name.startswith("airlock-verify-"):
            self.path.parent.rmdir()
