"""SQLite, the embedded default: online backup API, zstd-compressed snapshot."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path

from airlock.databases.base import (
    Database,
    DatabaseError,
    TableStats,
    compress,
    decompress,
    row_checksum_sum,
)

SNAPSHOT = "database.sqlite.zst"


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def stats_of(path: Path) -> TableStats:
    """Row count and order-independent checksum of every user table in a SQLite file."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        stats: TableStats = {}
        for table in tables:
            rows, checksum = row_checksum_sum(conn.execute(f"SELECT * FROM {quote_identifier(table)}"))
            stats[table] = {"rows": rows, "checksum": checksum}
        return stats


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

    def dump(self, directory: Path) -> tuple[list[str], TableStats, dict]:
        if not self.exists():
            raise DatabaseError(f"cannot back up {self.describe()}: the file does not exist")
        snapshot = directory / "database.sqlite"
        with closing(sqlite3.connect(self.path)) as source, closing(sqlite3.connect(snapshot)) as target:
            source.backup(target)  # consistent even while the server writes
        stats = stats_of(snapshot)
        facts = {"server_version": sqlite3.sqlite_version, "schema_version": schema_version_of(snapshot)}
        compress(snapshot, directory / SNAPSHOT)
        return [SNAPSHOT], stats, facts

    def load(self, directory: Path, facts: dict) -> None:
        staged = self.path.with_name(self.path.name + ".airlock-restore")
        decompress(directory / SNAPSHOT, staged)
        for suffix in ("-wal", "-shm", "-journal"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)
        os.replace(staged, self.path)

    def table_stats(self) -> TableStats:
        return stats_of(self.path)

    def scratch(self, label: str) -> SqliteDatabase:
        directory = tempfile.mkdtemp(prefix=f"airlock-verify-{label}-")
        return SqliteDatabase(Path(directory) / "scratch.sqlite")

    def drop(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)
        if self.path.parent.name.startswith("airlock-verify-"):
            self.path.parent.rmdir()
