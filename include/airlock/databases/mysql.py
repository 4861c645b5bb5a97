"""MySQL and MariaDB: a consistent mysqldump piped through zstd, restored with the mysql client.

Credentials reach the command-line tools through a 0600 defaults file that lives only for the
duration of the command, never through argv or a shell.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
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

from airlock.child_env import child_env
from airlock.config import loopback_or
from airlock.databases.base import (
    Columns,
    Database,
    DatabaseError,
    LineWatcher,
    ServerParams,
    StreamSink,
    StreamSource,
    TableStats,
    compress_in_place,
    compressed_output,
    decompress_into,
    decompress_stream_into,
    differing,
    progress_log,
)

DUMP = "database.sql.zst"
MYDUMPER_DIR = "mydumper"
THREADS = max(2, os.cpu_count() or 2)
MYDUMPER_THREADS = 2 * THREADS
UPLOADS = 4
LOCK_WAIT_SECONDS = 10
"""How long a backup waits for the tables (long-running writes) before it gives up, never holding more."""
LOCK_HOLD_SECONDS = 10
"""How long writers may be held while the dump tool opens its snapshots (normally milliseconds)."""
MYDUMPER_CONNECTED = re.compile(r"Thread \d+ connected using MySQL connection ID (\d+)")
SAFE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


MysqlParams = ServerParams
log = logging.getLogger("airlock.backup")


def quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def compress_finished_files(dumper: subprocess.Popen, out: Path,
                            on_compressed: Callable[[Path], None] = lambda path: None) -> None:
    """While mydumper runs, zstd each file it has closed (one process each, beside the dump), and hand
    each compressed file to `on_compressed` as soon as it is whole (an upload can start while the
    dump goes on). A file zstd failed on stays plain, for compress_in_place."""
    started: set[str] = set()
    compressing: list[tuple[Path, subprocess.Popen]] = []

    def hand_over_finished(wait: bool) -> None:
        for path, process in list(compressing):
            if (process.wait() if wait else process.poll()) is not None:
                compressing.remove((path, process))
                if process.returncode == 0:
                    on_compressed(path.with_name(path.name + ".zst"))

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
                compressing.append((path, subprocess.Popen(
                    ["zstd", "-q", "-1", "-T1", "--rm", str(path)], env=child_env(),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        hand_over_finished(wait=False)
        time.sleep(0.05)
    hand_over_finished(wait=True)


DEFINITION_LISTINGS = (
    ("VIEW", "SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA=%s ORDER BY TABLE_NAME"),
    ("TRIGGER", "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA=%s "
                "ORDER BY EVENT_OBJECT_TABLE, ACTION_ORDER"),
    ("ROUTINE", "SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA=%s "
                "ORDER BY ROUTINE_NAME"),
    ("EVENT", "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA=%s ORDER BY EVENT_NAME"),
)
"""How to list each kind of definition that lives in a database besides its tables."""
CHARSET_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


class SideBySideUploads:
    """Files handed to `put`, UPLOADS at a time (an object store takes parallel uploads at the speed
    a single one cannot reach), each once, as soon as it is handed over."""

    def __init__(self, put: StreamSink, folder: Path):
        self.put, self.folder, self.started = put, folder, {}
        self.pool = ThreadPoolExecutor(max_workers=UPLOADS, thread_name_prefix="airlock-upload")

    def upload(self, name: str) -> None:
        with open(self.folder / name, "rb") as source:
            self.put(name, source)

    def start(self, name: str) -> None:
        if name not in self.started:
            self.started[name] = self.pool.submit(self.upload, name)

    def finish(self, names: list[str]) -> None:
        """The files not handed over yet, then every upload's end (the first failure is raised)."""
        for name in names:
            self.start(name)
        for upload in self.started.values():
            upload.result()

    def __enter__(self) -> SideBySideUploads:
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def charset_clause(facts: dict) -> str:
    """CHARACTER SET … COLLATE … from a manifest's facts, refused unless both are plain names."""
    charset, collation = facts.get("charset") or "utf8mb4", facts.get("collation") or "utf8mb4_general_ci"
    for value in (charset, collation):
        if not isinstance(value, str) or not CHARSET_NAME.fullmatch(value):
            raise DatabaseError(f"the backup's manifest names charset/collation {value!r}, which is not a "
                                "charset name; refusing to put it into SQL")
    return f"CHARACTER SET {charset} COLLATE {collation}"


class SnapshotWatcher:
    """Tells `consistent_dump` when every session of the dump tool has opened its snapshot.

    mysqldump says "-- Setting savepoint" right after its START TRANSACTION. mydumper (0.10) starts
    its threads one at a time: each says "Thread N connected", starts its transaction and only then
    lets the next one start; so once the last thread has said it, the next line mydumper prints comes
    after every snapshot is open. (INNODB_TRX is no help: it does not list read-only transactions.)
    """

    def __init__(self, release: Callable[[], None]):
        self.release = release
        self.connected = 0
        self.too_late = False

    def on_line(self, line: str) -> None:
        if line.startswith("-- Setting savepoint"):
            self.release()
        elif MYDUMPER_CONNECTED.search(line):
            self.connected += 1
        elif self.connected >= MYDUMPER_THREADS and line.strip():
            self.release()


class MysqlDatabase(Database):
    kind = "mysql"
    default_port = 3306

    def __init__(self, params: MysqlParams, tool: str | None = None, scratch_server: MysqlParams | None = None):
        """`tool`: "mydumper" or "mysqldump"; by default mydumper where it and myloader are installed.
        `scratch_server`: where verification and rehearsal copies go (this server by default)."""
        if not SAFE_NAME.match(params.database):
            raise DatabaseError(f"database name {params.database!r} must match {SAFE_NAME.pattern}")
        if tool not in (None, "mydumper", "mysqldump"):
            raise DatabaseError(f"unknown dump tool {tool!r} (mydumper or mysqldump)")
        self.params, self.tool, self.scratch_server = params, tool, scratch_server

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

    def columns_with(self, conn) -> Columns:
        tables = set(self.tables(conn))
        found: Columns = {}
        for table, column in self.query(conn, "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS "
                                              "WHERE TABLE_SCHEMA=%s ORDER BY TABLE_NAME, ORDINAL_POSITION",
                                        (self.params.database,)):
            if table in tables:
                found.setdefault(table, []).append(column)
        return found

    def stats_with(self, conn, columns: Columns | None = None) -> TableStats:
        """Row count and an order-independent checksum per table: the sum of a CRC32 of each row
        (its columns, plus which of them are NULL), computed by the server."""
        stats: TableStats = {}
        for table, names in (columns or self.columns_with(conn)).items():
            quoted = [quote_identifier(name) for name in names]
            nulls = ",".join(f"ISNULL({c})" for c in quoted)
            rows, total = self.query(conn, (
                f"SELECT COUNT(*), COALESCE(SUM(CRC32(CONCAT_WS('|',CONCAT({nulls}),{','.join(quoted)}))),0) "
                f"FROM {quote_identifier(table)}"))[0]
            stats[table] = {"rows": int(rows), "checksum": format(int(total), "x")}
        return stats

    def table_stats(self, columns: Columns | None = None) -> TableStats:
        with self.connect() as conn:
            return self.stats_with(conn, columns)

    def table_columns(self) -> Columns:
        with self.connect() as conn:
            return self.columns_with(conn)

    def consistent_stats(self) -> tuple[TableStats, Columns]:
        with self.snapshot() as conn:
            columns = self.columns_with(conn)
            return self.stats_with(conn, columns), columns

    @contextmanager
    def snapshot(self) -> Iterator[MySQLdb.Connection]:
        """A connection whose reads all see one consistent snapshot."""
        with self.connect() as conn:
            self.query(conn, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            self.query(conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT")
            try:
                yield conn
            finally:
                self.query(conn, "ROLLBACK")

    def engine_checksums_with(self, conn, tables: list[str]) -> dict[str, str | None]:
        """The server's own CHECKSUM TABLE of each table: one scan inside the storage engine, about a
        third of the SQL checksum's time; on MariaDB a consistent read inside a snapshot (recorded
        with a dump only there: MySQL's is not tested here). It depends on the table's row format, so
        it only tells whether a table on this server is unchanged; backups are still compared by the
        SQL checksum (stats_with)."""
        if not tables:
            return {}
        rows = self.query(conn, "CHECKSUM TABLE " + ", ".join(quote_identifier(table) for table in tables))
        return {name.split(".", 1)[1]: None if value is None else format(int(value), "x") for name, value in rows}

    def tables_changed_since(self, tables: TableStats, facts: dict) -> list[str]:
        """With the engine checksums the backup recorded: the tables whose columns or engine checksum
        differ (one engine scan instead of the SQL checksum pass). Tables whose columns differ are
        enough to refuse, and a dump follows: then only those, without the scan (minutes at 100 GB,
        with the server down)."""
        recorded = facts.get("engine_checksums")
        if not recorded or set(recorded) != set(tables) or None in recorded.values():
            return super().tables_changed_since(tables, facts)
        with self.snapshot() as conn:
            columns = self.columns_with(conn)
            reshaped = differing(columns, facts.get("columns") or {})
            if reshaped:
                return sorted(reshaped)
            return sorted(differing(self.engine_checksums_with(conn, list(columns)), recorded))

    def table_stats_since(self, columns: Columns, before: TableStats, facts: dict) -> TableStats:
        """A table the migration left with all its old columns, in order, and whose engine checksum
        is the one the backup recorded holds the backup's rows: it takes the backup's statistics
        (a migration that only adds an index costs one engine scan, not the SQL checksum pass); any
        other table is checked by the SQL checksum over the shared columns."""
        recorded, old_columns = facts.get("engine_checksums") or {}, facts.get("columns") or {}
        with self.connect() as conn:
            now_columns = self.columns_with(conn)
            whole = [table for table in columns if now_columns.get(table) == old_columns.get(table) == columns[table]
                     and recorded.get(table) is not None and table in before]
            same = {table for table, checksum in self.engine_checksums_with(conn, whole).items()
                    if checksum == recorded[table]}
            remaining = {table: names for table, names in columns.items() if table not in same}
            rest = self.stats_with(conn, remaining) if remaining else {}
        return {table: (before[table] if table in same else rest[table]) for table in columns}

    def facts_with(self, conn) -> dict:
        charset, collation = self.query(
            conn, "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
                  "WHERE SCHEMA_NAME=%s", (self.params.database,))[0]
        schema = None
        if "alembic_version" in self.tables(conn):
            rows = self.query(conn, "SELECT version_num FROM alembic_version")
            schema = rows[0][0] if rows else None
        return {"server_version": self.query(conn, "SELECT VERSION()")[0][0], "schema_version": schema,
                "charset": charset, "collation": collation, "disk_bytes": self.disk_bytes(conn),
                "columns": self.columns_with(conn)}

    def disk_bytes(self, conn) -> int:
        """How much disk the database takes on its server (what a restored copy beside it needs):
        the InnoDB files' allocated size, or the table statistics where those are not listed."""
        try:
            allocated = self.query(conn, "SELECT COALESCE(SUM(ALLOCATED_SIZE), 0) FROM "
                                         "information_schema.INNODB_SYS_TABLESPACES WHERE NAME LIKE %s",
                                   (self.params.database.replace("_", r"\_") + "/%",))[0][0]
        except DatabaseError:  # MySQL 8 names it INNODB_TABLESPACES; RDS may hide it
            allocated = 0
        if allocated:
            return int(allocated)
        return int(self.query(conn, "SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM "
                                    "information_schema.TABLES WHERE TABLE_SCHEMA = %s", (self.params.database,))[0][0])

    def consistent_dump(self, dump: Callable[[Callable[[str], None]], None],
                        progress_dir: Path | None = None) -> tuple[TableStats, dict]:
        """Run `dump` on one consistent snapshot and compute the statistics of exactly that snapshot,
        holding writers back only while the snapshots open (milliseconds), never for the dump.

        A session holds `LOCK TABLES … READ` (its wait bounded by lock_wait_timeout) while a second
        session and the dump tool's sessions start `WITH CONSISTENT SNAPSHOT` transactions; no write
        can land between them. `dump` gets a callback for each line its tool prints and releases
        the lock once `snapshot_opened` says every tool session has its snapshot. The statistics
        are then read in the second session while the dump goes on.
        """
        with self.connect() as lock_conn, self.connect() as snap_conn:
            tables = self.tables(lock_conn)
            self.query(lock_conn, f"SET SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}")
            if tables:
                try:
                    self.query(lock_conn, "LOCK TABLES " + ", ".join(f"{quote_identifier(t)} READ" for t in tables))
                except DatabaseError as error:
                    raise DatabaseError(f"{self.describe()}: no consistent point within {LOCK_WAIT_SECONDS} s "
                                        f"(long-running writes held the tables); nothing was written. Retry the "
                                        f"task when they are done. ({error})") from None
            locked_at = time.monotonic()
            released = threading.Event()

            def release() -> None:
                if not released.is_set():
                    self.query(lock_conn, "UNLOCK TABLES")
                    released.set()

            try:
                self.query(snap_conn, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                self.query(snap_conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT")
                facts = self.facts_with(snap_conn)
                watcher = SnapshotWatcher(release)
                with ThreadPoolExecutor(1) as pool:
                    if progress_dir is None:
                        dumping = pool.submit(dump, watcher.on_line)
                    else:
                        dumping = pool.submit(self.with_progress, dump, watcher.on_line, progress_dir, len(tables))
                    while not released.wait(0.02) and not dumping.done():
                        if time.monotonic() - locked_at > LOCK_HOLD_SECONDS:
                            release()
                            watcher.too_late = True
                    release()
                    held = time.monotonic() - locked_at
                    stats = self.stats_with(snap_conn)
                    if "MariaDB" in facts["server_version"]:  # its CHECKSUM TABLE reads the snapshot (tested)
                        facts["engine_checksums"] = self.engine_checksums_with(snap_conn, list(stats))
                    dumping.result()
                if watcher.too_late:
                    raise DatabaseError(f"{self.describe()}: the dump tool did not open its snapshot within "
                                        f"{LOCK_HOLD_SECONDS} s, so the dump may not match its statistics; the "
                                        "backup is discarded. Retry the task.")
                return stats, {**facts, "writers_held_seconds": round(held, 3)}
            finally:
                release()
                self.query(snap_conn, "ROLLBACK")

    def with_progress(self, dump, on_line, progress_dir: Path, tables: int) -> None:
        with progress_log(progress_dir, tables, self.params.database):
            dump(on_line)

    def dump(self, directory: Path, on_file: Callable[[str], None] = lambda name: None
             ) -> tuple[list[str], TableStats, dict]:
        """`on_file` gets each of mydumper's files as soon as it is compressed (its name in the set)."""
        tool = self.tool or ("mydumper" if shutil.which("mydumper") and shutil.which("myloader") else "mysqldump")
        if tool == "mysqldump":
            stats, facts = self.consistent_dump(lambda on_line: self.run_dump(directory / DUMP, on_line), directory)
            return [DUMP], stats, {**facts, "tool": tool}
        stats, facts = self.consistent_dump(
            lambda on_line: self.run_mydumper(directory, on_line, lambda path: on_file(f"{MYDUMPER_DIR}/{path.name}")),
            directory)
        # what mydumper had not compressed while it ran
        files = [f"{MYDUMPER_DIR}/{name}" for name in compress_in_place(directory / MYDUMPER_DIR)]
        return files, stats, {**facts, "tool": tool}

    def dump_stream(self, put: StreamSink) -> tuple[list[str], TableStats, dict]:
        """For an object store. Where the worker's temporary folder has room for the database,
        mydumper's parallel dump goes there and each file is uploaded, side by side, as soon as it is
        compressed, while the dump goes on (mydumper 0.10 cannot stream); else mysqldump | zstd
        straight into `put`, one thread."""
        if self.tool != "mysqldump" and shutil.which("mydumper") and shutil.which("myloader") \
                and self.scratch_has_room():
            with tempfile.TemporaryDirectory(prefix="airlock-dump-") as scratch, \
                    SideBySideUploads(put, Path(scratch)) as uploads:
                names, stats, facts = self.dump(Path(scratch), uploads.start)
                uploads.finish(names)
            return names, stats, facts

        def stream(on_line: Callable[[str], None]) -> None:
            with self.mysqldump_stream(on_line) as compressed:
                put(DUMP, compressed)

        stats, facts = self.consistent_dump(stream)
        return [DUMP], stats, {**facts, "tool": "mysqldump"}

    def scratch_has_room(self) -> bool:
        """mydumper writes each chunk plain before it is compressed: room for the whole database, and
        a fifth more, in the temporary folder."""
        with self.connect() as conn:
            needed = self.disk_bytes(conn) * 1.2
        return shutil.disk_usage(tempfile.gettempdir()).free > needed

    def run_mydumper(self, directory: Path, on_line: Callable[[str], None],
                     on_compressed: Callable[[Path], None] = lambda path: None) -> None:
        """Parallel per-table (and per-chunk) dump with routines, events and triggers; each thread
        opens its snapshot while `consistent_dump` holds the tables. Files mydumper has finished are
        compressed while it works on the others."""
        out = directory / MYDUMPER_DIR
        with self.defaults_file() as cnf:
            dumper = subprocess.Popen(
                ["mydumper", f"--defaults-file={cnf}", "--database", self.params.database, "--outputdir", str(out),
                 "--threads", str(MYDUMPER_THREADS), "--rows", "50000", "--no-locks", "--routines", "--events",
                 "--triggers", "--verbose", "3"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env())
            output = LineWatcher(dumper.stdout, on_line)
            compress_finished_files(dumper, out, on_compressed)
            returncode = dumper.wait()
            self.check_tool("mydumper", returncode, output.text())

    def run_dump(self, target: Path, on_line: Callable[[str], None]) -> None:
        with self.mysqldump_stream(on_line) as compressed, open(target, "wb") as out:
            shutil.copyfileobj(compressed, out, 1 << 20)

    @contextmanager
    def mysqldump_stream(self, on_line: Callable[[str], None]) -> Iterator[BinaryIO]:
        """The zstd-compressed output of a consistent mysqldump, as a stream; checked at the end."""
        with self.defaults_file() as cnf, compressed_output(
                ["mysqldump", f"--defaults-extra-file={cnf}", "--single-transaction", "--quick", "--hex-blob",
                 "--no-tablespaces", "--skip-lock-tables", "--triggers", "--routines", "--events", "--verbose",
                 self.params.database],
                f"mysqldump of {self.describe()}", redact=self.redact, on_stderr_line=on_line) as stream:
            yield stream

    def check_tool(self, name: str, returncode: int, output: bytes) -> None:
        if returncode != 0:
            detail = self.redact(output.decode(errors="replace").strip()[-800:])
            raise DatabaseError(f"{name} failed for {self.describe()} (exit {returncode}): {detail}")

    def load_stream(self, get: StreamSource, facts: dict) -> None:
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
                     "--verbose", "1"], capture_output=True, check=False, env=child_env())
        self.check_tool("myloader", result.returncode, result.stderr + result.stdout)

    def recreate(self, facts: dict) -> None:
        """A dump loaded over a migrated schema fails half-way on foreign keys: start empty."""
        name = quote_identifier(self.params.database)
        with self.connect(database=None) as conn:
            self.query(conn, f"DROP DATABASE IF EXISTS {name}")
            self.query(conn, f"CREATE DATABASE {name} {charset_clause(facts)}")

    def run_mysql_client(self, dump: Path) -> None:
        with self.defaults_file() as cnf, open(dump, "rb") as source:
            decompress_stream_into(source, ["mysql", f"--defaults-extra-file={cnf}", self.params.database],
                                   "mysql", redact=self.redact)

    # -- restoring over the live database ------------------------------------------------------
    def required_tools(self, facts: dict) -> list[str]:
        return ["zstd", "myloader" if facts.get("tool") == "mydumper" else "mysql"]

    def restores_through_files(self, facts: dict) -> bool:
        return facts.get("tool") == "mydumper"

    def loads_from_files_only(self, facts: dict) -> bool:
        return facts.get("tool") == "mydumper"

    def data_directory(self) -> Path | None:
        if loopback_or(self.params.host) != "loopback":
            return None
        with self.connect(database=None) as conn:
            path = Path(self.query(conn, "SELECT @@datadir")[0][0])
        return path if path.is_dir() else None

    def companion(self, role: str) -> MysqlDatabase:
        """airlock_<role>_<name>: a database beside this one for a restore's staging or old copy."""
        return MysqlDatabase(replace(self.params, database=f"airlock_{role}_{self.params.database}"[:64]), self.tool)

    def restore_staging(self) -> MysqlDatabase:
        return self.companion("restore")

    def swap_in(self, staging: Database, facts: dict) -> None:
        """One RENAME TABLE moves every table of this database aside and every restored table in (atomic);
        views, triggers, routines and events, which cannot move between databases, are recreated here
        from their definitions in the restored copy. If the rename fails (a lock it cannot get), the live
        tables never moved: the live definitions dropped for it are put back before the error goes on."""
        assert isinstance(staging, MysqlDatabase)
        previous = self.companion("previous")
        definitions = staging.definitions()
        live_definitions = self.definitions() if self.exists() else []
        with self.connect(database=None) as conn:
            self.query(conn, f"SET SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}")
            self.query(conn, f"DROP DATABASE IF EXISTS {quote_identifier(previous.params.database)}")
            self.query(conn, f"CREATE DATABASE {quote_identifier(previous.params.database)}")
            self.query(conn, f"CREATE DATABASE IF NOT EXISTS {quote_identifier(self.params.database)}")
            moves = [f"{quote_identifier(self.params.database)}.{quote_identifier(t)} TO "
                     f"{quote_identifier(previous.params.database)}.{quote_identifier(t)}" for t in self.tables(conn)]
            moves += [f"{quote_identifier(staging.params.database)}.{quote_identifier(t)} TO "
                      f"{quote_identifier(self.params.database)}.{quote_identifier(t)}" for t in staging.tables(conn)]
            try:
                self.drop_definitions(conn, self)
                self.drop_definitions(conn, staging, only=("TRIGGER", "VIEW"))
                if moves:
                    self.query(conn, "RENAME TABLE " + ", ".join(moves))
            except DatabaseError:
                self.put_back_definitions(live_definitions)
                raise
            self.query(conn, f"ALTER DATABASE {quote_identifier(self.params.database)} "
                             f"{charset_clause(facts)}")
        self.create_definitions(definitions)
        previous.drop()

    def create_definitions(self, definitions: list[tuple[str, str, str, str]]) -> None:
        with self.connect() as conn:
            for _kind, _name, sql_mode, statement in definitions:
                self.query(conn, "SET SESSION sql_mode = %s", (sql_mode,))
                self.query(conn, statement)

    def put_back_definitions(self, definitions: list[tuple[str, str, str, str]]) -> None:
        """The live database's own definitions again (whichever the failed swap had dropped)."""
        try:
            with self.connect() as conn:
                self.drop_definitions(conn, self)
            self.create_definitions(definitions)
        except DatabaseError as error:
            log.error("%s: could not put back its views, triggers, routines and events after a failed swap (%s); "
                      "the tables and data are untouched: clear the restore task to finish it", self.describe(), error)

    def definitions(self) -> list[tuple[str, str, str, str]]:
        """(kind, name, sql_mode, CREATE statement) of every view, trigger, routine and event, read in
        this database so the statements name no database (views first: triggers may use them)."""
        found = []
        with self.connect() as conn:
            db = self.params.database
            for kind, listing in DEFINITION_LISTINGS:
                for (name, *rest) in self.query(conn, listing, (db,)):
                    kind_here = rest[0] if rest else kind
                    row = self.query(conn, f"SHOW CREATE {kind_here} {quote_identifier(name)}")[0]
                    # SHOW CREATE VIEW: (name, statement, …); EVENT: (name, sql_mode, time_zone, statement, …);
                    # TRIGGER, PROCEDURE, FUNCTION: (name, sql_mode, statement, …)
                    statement, sql_mode = {"VIEW": (row[1], ""), "EVENT": (row[3], row[1])}.get(
                        kind_here, (row[2], row[1]))
                    found.append((kind_here, name, sql_mode, statement))
        return found

    def drop_definitions(self, conn, db: MysqlDatabase, only: tuple[str, ...] = ("TRIGGER", "VIEW", "PROCEDURE",
                                                                                  "FUNCTION", "EVENT")) -> None:
        for kind, listing in DEFINITION_LISTINGS:
            for (name, *rest) in self.query(conn, listing, (db.params.database,)):
                kind_here = rest[0] if rest else kind
                if kind_here in only:
                    self.query(conn, f"DROP {kind_here} IF EXISTS {quote_identifier(db.params.database)}."
                                     f"{quote_identifier(name)}")

    def scratch(self, label: str) -> MysqlDatabase:
        prefix = self.scratch_prefix(label)
        server = MysqlDatabase(replace(self.scratch_server or self.params, database="mysql"), self.tool)
        with server.connect(database=None) as conn:
            pattern = prefix.replace("_", r"\_") + "%"
            stale = [row[0] for row in server.query(
                conn, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s", (pattern,))]
            for name in stale:
                log.warning("dropping %s, a scratch copy an earlier try left on %s", name, server.describe())
                server.query(conn, f"DROP DATABASE IF EXISTS {quote_identifier(name)}")
        return MysqlDatabase(replace(server.params, database=f"{prefix}{uuid.uuid4().hex[:8]}"), self.tool)

    def drop(self) -> None:
        with self.connect(database=None) as conn:
            self.query(conn, f"DROP DATABASE IF EXISTS {quote_identifier(self.params.database)}")
