"""MySQL and MariaDB: a consistent mysqldump piped through zstd, restored with the mysql client.

Credentials reach the command-line tools through a 0600 defaults file that lives only for the
duration of the command, never through argv or a shell.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import MySQLdb

from airlock.databases.base import (
    Database,
    DatabaseError,
    ServerParams,
    StreamSink,
    StreamSource,
    TableStats,
    compress_in_place,
    compressed_output,
    decompress_into,
    decompress_stream_into,
    progress_log,
)

DUMP = "database.sql.zst"
MYDUMPER_DIR = "mydumper"
THREADS = max(2, os.cpu_count() or 2)
SAFE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


MysqlParams = ServerParams


def quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def compress_finished_files(dumper: subprocess.Popen, out: Path) -> list[subprocess.Popen]:
    """While mydumper runs, zstd each file it has closed (one thread each, beside the dump)."""
    started: set[str] = set()
    processes = []
    while dumper.poll() is None:
        # List the files first, then what mydumper holds open: a file that exists and is not open
        # afterwards is finished (mydumper writes each file once). The other order would catch a
        # file created between the two looks and compress it while it is still being written.
        present = sorted(out.glob("*.sql")) if out.is_dir() else []
        try:
            open_now = {os.readlink(link) for link in Path(f"/proc/{dumper.pid}/fd").iterdir()}
        except (FileNotFoundError, ProcessLookupError):
            break
        for path in present:
            if str(path) not in open_now and path.name not in started:
                started.add(path.name)
                processes.append(subprocess.Popen(["zstd", "-q", "-1", "-T1", "--rm", str(path)],
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.05)
    return processes


class MysqlDatabase(Database):
    kind = "mysql"
    default_port = 3306

    @classmethod
    def from_fields(cls, host: str, port: int, user: str, password: str, database: str) -> MysqlDatabase:
        return cls(MysqlParams(host, port, user, password, database))

    def __init__(self, params: MysqlParams, tool: str | None = None):
        """`tool`: "mydumper" or "mysqldump"; by default mydumper where it and myloader are installed."""
        if not SAFE_NAME.match(params.database):
            raise DatabaseError(f"database name {params.database!r} must match {SAFE_NAME.pattern}")
        if tool not in (None, "mydumper", "mysqldump"):
            raise DatabaseError(f"unknown dump tool {tool!r} (mydumper or mysqldump)")
        self.params, self.tool = params, tool

    def describe(self) -> str:
        p = self.params
        return f"mysql database {p.database} on {p.host}:{p.port} as {p.user}"

    def secrets(self) -> list[str]:
        return [self.params.password, quote(self.params.password)]

    def sqlalchemy_uri(self) -> str:
        p = self.params
        return f"mysql+pymysql://{quote(p.user)}:{quote(p.password)}@{p.host}:{p.port}/{p.database}"

    # -- connections ---------------------------------------------------------------------------
    @contextmanager
    def connect(self, database: str | None = "") -> Iterator[MySQLdb.Connection]:
        p = self.params
        try:
            conn = MySQLdb.connect(host=p.host, port=p.port, user=p.user, password=p.password,
                                   database=p.database if database == "" else (database or ""),
                                   connect_timeout=10, autocommit=True)
        except MySQLdb.Error as error:
            raise DatabaseError(f"cannot connect to {self.describe()}: {self.redact(str(error))}") from None
        try:
            yield conn
        finally:
            conn.close()

    def query(self, conn, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, args)
                return list(cursor.fetchall())
        except MySQLdb.Error as error:
            raise DatabaseError(f"{self.describe()}: {self.redact(str(error))}") from None

    @contextmanager
    def defaults_file(self) -> Iterator[str]:
        """A private my.cnf with the credentials, deleted as soon as the command is done."""
        p = self.params
        password = p.password.replace("\\", "\\\\").replace('"', '\\"')
        fd, path = tempfile.mkstemp(prefix="airlock-my-", suffix=".cnf")
        try:
            with os.fdopen(fd, "w") as handle:
                os.fchmod(handle.fileno(), 0o600)
                credentials = f'host={p.host}\nport={p.port}\nuser={p.user}\npassword="{password}"\n'
                handle.write("".join(f"[{group}]\n{credentials}" for group in ("client", "mydumper", "myloader")))
            yield path
        finally:
            os.unlink(path)

    # -- the interface -------------------------------------------------------------------------
    def exists(self) -> bool:
        with self.connect(database=None) as conn:
            return bool(self.query(conn, "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME=%s",
                                   (self.params.database,)))

    def tables(self, conn) -> list[str]:
        return [row[0] for row in self.query(
            conn, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s "
                  "AND TABLE_TYPE='BASE TABLE' ORDER BY TABLE_NAME", (self.params.database,))]

    def stats_with(self, conn) -> TableStats:
        """Row count and an order-independent checksum per table: the sum of a CRC32 of each row
        (every column, plus which columns are NULL), computed by the server."""
        stats: TableStats = {}
        for table in self.tables(conn):
            columns = [quote_identifier(row[0]) for row in self.query(
                conn, "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA=%s "
                      "AND TABLE_NAME=%s ORDER BY ORDINAL_POSITION", (self.params.database, table))]
            nulls = ",".join(f"ISNULL({c})" for c in columns)
            rows, total = self.query(conn, (
                f"SELECT COUNT(*), COALESCE(SUM(CRC32(CONCAT_WS('|',CONCAT({nulls}),{','.join(columns)}))),0) "
                f"FROM {quote_identifier(table)}"))[0]
            stats[table] = {"rows": int(rows), "checksum": format(int(total), "x")}
        return stats

    def table_stats(self) -> TableStats:
        with self.connect() as conn:
            return self.stats_with(conn)

    def facts_with(self, conn) -> dict:
        charset, collation = self.query(
            conn, "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
                  "WHERE SCHEMA_NAME=%s", (self.params.database,))[0]
        schema = None
        if "alembic_version" in self.tables(conn):
            rows = self.query(conn, "SELECT version_num FROM alembic_version")
            schema = rows[0][0] if rows else None
        return {"server_version": self.query(conn, "SELECT VERSION()")[0][0], "schema_version": schema,
                "charset": charset, "collation": collation}

    def locked(self, dump: Callable[[], None], progress_dir: Path | None = None) -> tuple[TableStats, dict]:
        """Run `dump` while holding read locks, so the statistics describe exactly the dumped data.

        Writers wait for the length of the dump; the upgrade's final backup is taken with the
        server stopped, where that costs nothing. With the locks held, every mydumper thread's
        snapshot is the same, so mydumper runs without its own global lock (--no-locks).
        """
        with self.connect() as conn:
            tables = self.tables(conn)
            if tables:
                self.query(conn, "LOCK TABLES " + ", ".join(f"{quote_identifier(t)} READ" for t in tables))
            try:
                facts = self.facts_with(conn)
                with ThreadPoolExecutor(1) as pool:
                    stats = pool.submit(self.table_stats)  # reads beside the dump, under the same locks
                    if progress_dir is None:
                        dump()
                    else:
                        with progress_log(progress_dir, len(tables), self.params.database):
                            dump()
                    return stats.result(), facts
            finally:
                if tables:
                    self.query(conn, "UNLOCK TABLES")

    def dump(self, directory: Path) -> tuple[list[str], TableStats, dict]:
        tool = self.tool or ("mydumper" if shutil.which("mydumper") and shutil.which("myloader") else "mysqldump")
        if tool == "mysqldump":
            stats, facts = self.locked(lambda: self.run_dump(directory / DUMP), directory)
            return [DUMP], stats, {**facts, "tool": tool}
        stats, facts = self.locked(lambda: self.run_mydumper(directory), directory)
        # compressed after the locks are released: writers need not wait for it
        files = [f"{MYDUMPER_DIR}/{name}" for name in compress_in_place(directory / MYDUMPER_DIR)]
        return files, stats, {**facts, "tool": tool}

    def dump_stream(self, put: StreamSink) -> tuple[list[str], TableStats, dict]:
        """mysqldump | zstd straight into `put` (mydumper needs a directory, so it is not used here)."""

        def stream() -> None:
            with self.mysqldump_stream() as compressed:
                put(DUMP, compressed)

        stats, facts = self.locked(stream)
        return [DUMP], stats, {**facts, "tool": "mysqldump"}

    def run_mydumper(self, directory: Path) -> None:
        """Parallel per-table (and per-chunk) dump; run while this session holds the read locks.
        Files mydumper has finished are compressed while it works on the others."""
        out = directory / MYDUMPER_DIR
        with self.defaults_file() as cnf:
            dumper = subprocess.Popen(
                ["mydumper", f"--defaults-file={cnf}", "--database", self.params.database, "--outputdir", str(out),
                 "--threads", str(2 * THREADS), "--rows", "250000", "--no-locks", "--verbose", "1"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            with ThreadPoolExecutor(1) as reader:
                output = reader.submit(dumper.stdout.read)
                compressing = compress_finished_files(dumper, out)
                returncode = dumper.wait()
                for process in compressing:
                    process.wait()
                self.check_tool("mydumper", returncode, output.result())

    def run_dump(self, target: Path) -> None:
        with self.mysqldump_stream() as compressed, open(target, "wb") as out:
            shutil.copyfileobj(compressed, out, 1 << 20)

    @contextmanager
    def mysqldump_stream(self) -> Iterator[BinaryIO]:
        """The zstd-compressed output of a consistent mysqldump, as a stream; checked at the end."""
        with self.defaults_file() as cnf, compressed_output(
                ["mysqldump", f"--defaults-extra-file={cnf}", "--single-transaction", "--quick", "--hex-blob",
                 "--no-tablespaces", "--skip-lock-tables", "--triggers", self.params.database],
                f"mysqldump of {self.describe()}", redact=self.redact) as stream:
            yield stream

    def check_tool(self, name: str, returncode: int, output: bytes) -> None:
        if returncode != 0:
            detail = self.redact(output.decode(errors="replace").strip()[-800:])
            raise DatabaseError(f"{name} failed for {self.describe()} (exit {returncode}): {detail}")

    def load_stream(self, get: StreamSource, facts: dict) -> None:
        if facts.get("tool") == "mydumper":
            raise DatabaseError("a mydumper backup is a directory; it is restored from a local store only")
        self.recreate(facts)
        with self.defaults_file() as cnf, get(DUMP) as source:
            decompress_stream_into(source, ["mysql", f"--defaults-extra-file={cnf}", self.params.database],
                                   "mysql", redact=self.redact)

    def load(self, directory: Path, facts: dict) -> None:
        self.recreate(facts)
        if facts.get("tool") == "mydumper":
            self.run_myloader(directory / MYDUMPER_DIR)
        else:
            self.run_mysql_client(directory / DUMP)

    def run_myloader(self, dump_dir: Path) -> None:
        if not shutil.which("myloader"):
            raise DatabaseError(f"this backup was taken with mydumper; install myloader to restore it "
                                f"into {self.describe()}")
        with tempfile.TemporaryDirectory(prefix="airlock-myloader-") as plain:
            decompress_into(dump_dir, plain)
            source = next(Path(plain).glob("*-schema-create.sql")).name.removesuffix("-schema-create.sql")
            with self.defaults_file() as cnf:
                result = subprocess.run(
                    ["myloader", f"--defaults-file={cnf}", "--directory", plain, "--source-db", source,
                     "--database", self.params.database, "--threads", str(THREADS), "--overwrite-tables",
                     "--verbose", "1"], capture_output=True, check=False)
        self.check_tool("myloader", result.returncode, result.stderr + result.stdout)

    def recreate(self, facts: dict) -> None:
        """A dump loaded over a migrated schema fails half-way on foreign keys: start empty."""
        name = quote_identifier(self.params.database)
        charset = facts.get("charset") or "utf8mb4"
        collation = facts.get("collation") or "utf8mb4_general_ci"
        with self.connect(database=None) as conn:
            self.query(conn, f"DROP DATABASE IF EXISTS {name}")
            self.query(conn, f"CREATE DATABASE {name} CHARACTER SET {charset} COLLATE {collation}")

    def run_mysql_client(self, dump: Path) -> None:
        with self.defaults_file() as cnf, open(dump, "rb") as source:
            decompress_stream_into(source, ["mysql", f"--defaults-extra-file={cnf}", self.params.database],
                                   "mysql", redact=self.redact)

    def scratch(self, label: str) -> MysqlDatabase:
        name = f"airlock_verify_{re.sub(r'[^a-z0-9]', '', label.lower())[:24]}_{uuid.uuid4().hex[:8]}"
        return MysqlDatabase(replace(self.params, database=name), self.tool)

    def drop(self) -> None:
        with self.connect(database=None) as conn:
            self.query(conn, f"DROP DATABASE IF EXISTS {quote_identifier(self.params.database)}")
