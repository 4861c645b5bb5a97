"""PostgreSQL: parallel pg_dump/pg_restore of the directory format, files zstd-compressed.

Consistency without locks: Airlock opens a REPEATABLE READ transaction, exports its snapshot and
hands it to `pg_dump --snapshot`, then computes the table statistics in that same transaction, so
the manifest describes exactly the dumped data while the server keeps taking writes.
The password reaches the tools through a private 0600 password file, never argv or a shell.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import psycopg2
from psycopg2 import sql

from airlock.child_env import child_env
from airlock.config import loopback_or
from airlock.databases.base import (
    Columns,
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

DUMP_DIR = "pg_dump"
STREAM_DUMP = "database.pgdump.zst"
JOBS = max(2, os.cpu_count() or 2)
SAFE_NAME = re.compile(r"^[A-Za-z0-9_]{1,63}$")
MAINTENANCE_DB = "postgres"


PostgresParams = ServerParams
log = logging.getLogger("airlock.backup")


class PostgresDatabase(Database):
    kind = "postgresql"
    default_port = 5432

    def __init__(self, params: PostgresParams, scratch_server: PostgresParams | None = None):
        """`scratch_server`: where verification and rehearsal copies go (this server by default)."""
        if not SAFE_NAME.match(params.database):
            raise DatabaseError(f"database name {params.database!r} must match {SAFE_NAME.pattern}")
        self.params, self.scratch_server = params, scratch_server

    def describe(self) -> str:
        p = self.params
        return f"postgresql database {p.database} on {p.host}:{p.port} as {p.user}"

    def secrets(self) -> list[str]:
        return [self.params.password, quote(self.params.password)]

    def sqlalchemy_uri(self) -> str:
        p = self.params
        return f"postgresql+psycopg2://{quote(p.user)}:{quote(p.password)}@{p.host}:{p.port}/{p.database}"

    # -- connections ---------------------------------------------------------------------------
    @contextmanager
    def connect(self, database: str | None = None, autocommit: bool = True) -> Iterator:
        p = self.params
        try:
            conn = psycopg2.connect(host=p.host, port=p.port, user=p.user, password=p.password,
                                    dbname=database or p.database, connect_timeout=10)
        except psycopg2.Error as error:
            raise DatabaseError(f"cannot connect to {self.describe()}: {self.redact(str(error))}") from None
        conn.autocommit = autocommit
        try:
            yield conn
        finally:
            conn.close()

    def query(self, conn, statement, args: tuple = ()) -> list[tuple]:
        try:
            with conn.cursor() as cursor:
                cursor.execute(statement, args)
                return list(cursor.fetchall()) if cursor.description else []
        except psycopg2.Error as error:
            raise DatabaseError(f"{self.describe()}: {self.redact(str(error))}") from None

    @contextmanager
    def tool_env(self) -> Iterator[dict[str, str]]:
        """Environment for pg_dump/pg_restore with a private password file (removed afterwards)."""
        p = self.params
        escaped = [str(v).replace("\\", "\\\\").replace(":", "\\:") for v in (p.host, p.port, "*", p.user, p.password)]
        fd, path = tempfile.mkstemp(prefix="airlock-pgpass-")
        try:
            with os.fdopen(fd, "w") as handle:
                os.fchmod(handle.fileno(), 0o600)
                handle.write(":".join(escaped) + "\n")
            yield child_env({"PGPASSFILE": path})
        finally:
            os.unlink(path)

    def connection_args(self) -> list[str]:
        p = self.params
        return ["--host", p.host, "--port", str(p.port), "--username", p.user, "--no-password"]

    def run_tool(self, argv: list[str]) -> None:
        with self.tool_env() as env:
            result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        if result.returncode != 0:
            detail = self.redact((result.stderr or result.stdout).strip()[-800:])
            raise DatabaseError(f"{argv[0]} failed for {self.describe()} (exit {result.returncode}): {detail}")

    # -- the interface -------------------------------------------------------------------------
    def exists(self) -> bool:
        with self.connect(MAINTENANCE_DB) as conn:
            return bool(self.query(conn, "SELECT 1 FROM pg_database WHERE datname = %s", (self.params.database,)))

    def tables(self, conn) -> list[tuple[str, str]]:
        return [(row[0], row[1]) for row in self.query(
            conn, "SELECT schemaname, tablename FROM pg_tables "
                  "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2")]

    def columns_with(self, conn) -> Columns:
        tables, found = set(self.tables(conn)), {}
        for schema, table, column in self.query(
                conn, "SELECT table_schema, table_name, column_name FROM information_schema.columns WHERE "
                      "table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, ordinal_position"):
            if (schema, table) in tables:
                found.setdefault(table if schema == "public" else f"{schema}.{table}", []).append(column)
        return found

    def stats_with(self, conn, columns: Columns | None = None) -> TableStats:
        """Row count and the sum of a 32-bit hash of each row's text form, per table (over all its
        columns: the row itself; over some: a ROW of them, which prints the same way)."""
        stats: TableStats = {}
        for schema, table in self.tables(conn):
            name = table if schema == "public" else f"{schema}.{table}"
            if columns is not None and name not in columns:
                continue
            row = sql.SQL("t") if columns is None else sql.SQL("ROW({})").format(
                sql.SQL(",").join(sql.Identifier("t", column) for column in columns[name]))
            rows, total = self.query(conn, sql.SQL(
                "SELECT count(*), coalesce(sum(hashtext({}::text)::bigint), 0) FROM {}.{} AS t").format(
                row, sql.Identifier(schema), sql.Identifier(table)))[0]
            stats[name] = {"rows": int(rows), "checksum": format(int(total) & (2**64 - 1), "x")}
        return stats

    def table_stats(self, columns: Columns | None = None) -> TableStats:
        with self.connect() as conn:
            return self.stats_with(conn, columns)

    def table_columns(self) -> Columns:
        with self.connect() as conn:
            return self.columns_with(conn)

    def consistent_stats(self) -> tuple[TableStats, Columns]:
        with self.connect(autocommit=False) as conn:
            self.query(conn, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            try:
                return self.stats_with(conn), self.columns_with(conn)
            finally:
                conn.rollback()

    def facts_with(self, conn) -> dict:
        schema = None
        if ("public", "alembic_version") in self.tables(conn):
            rows = self.query(conn, "SELECT version_num FROM alembic_version")
            schema = rows[0][0] if rows else None
        encoding = self.query(conn, "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = %s",
                              (self.params.database,))[0][0]
        return {"server_version": self.query(conn, "SHOW server_version")[0][0], "schema_version": schema,
                "encoding": encoding, "tool": "pg_dump",
                "disk_bytes": int(self.query(conn, "SELECT pg_database_size(%s)", (self.params.database,))[0][0]),
                "columns": self.columns_with(conn)}

    def dump(self, directory: Path) -> tuple[list[str], TableStats, dict]:
        out = directory / DUMP_DIR
        with self.connect(autocommit=False) as conn:
            self.query(conn, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snapshot = self.query(conn, "SELECT pg_export_snapshot()")[0][0]
            with progress_log(directory, len(self.tables(conn)), self.params.database):
                self.run_tool(["pg_dump", *self.connection_args(), "--format=directory", f"--jobs={JOBS}",
                               "--compress=0", f"--snapshot={snapshot}", f"--file={out}", self.params.database])
            stats, facts = self.stats_with(conn), self.facts_with(conn)
            conn.rollback()
        return [f"{DUMP_DIR}/{name}" for name in compress_in_place(out)], stats, facts

    def dump_stream(self, put: StreamSink) -> tuple[list[str], TableStats, dict]:
        """pg_dump's custom format (one stream) through zstd into `put`, on the exported snapshot."""
        with self.connect(autocommit=False) as conn:
            self.query(conn, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snapshot = self.query(conn, "SELECT pg_export_snapshot()")[0][0]
            with self.tool_env() as env, compressed_output(
                    ["pg_dump", *self.connection_args(), "--format=custom", "--compress=0", f"--snapshot={snapshot}",
                     self.params.database],
                    f"pg_dump of {self.describe()}", env=env, redact=self.redact) as stream:
                put(STREAM_DUMP, stream)
            stats, facts = self.stats_with(conn), self.facts_with(conn)
            conn.rollback()
        return [STREAM_DUMP], stats, {**facts, "tool": "pg_dump_custom"}

    def load_stream(self, get: StreamSource, facts: dict) -> None:
        if facts.get("tool") != "pg_dump_custom":
            raise DatabaseError("a directory-format pg_dump backup is restored from a local store only")
        self.recreate(facts)
        with self.tool_env() as env, get(STREAM_DUMP) as source:
            decompress_stream_into(source, ["pg_restore", *self.connection_args(), "--exit-on-error",
                                            f"--dbname={self.params.database}"],
                                   "pg_restore", env=env, redact=self.redact)

    def load(self, directory: Path, facts: dict) -> None:
        self.recreate(facts)
        with tempfile.TemporaryDirectory(prefix="airlock-pg-restore-") as plain:
            decompress_into(directory / DUMP_DIR, plain)
            self.run_tool(["pg_restore", *self.connection_args(), f"--jobs={JOBS}", "--exit-on-error",
                           f"--dbname={self.params.database}", plain])

    def recreate(self, facts: dict) -> None:
        """Restoring over a migrated schema leaves a mix: drop the database and start empty."""
        name = sql.Identifier(self.params.database)
        encoding = facts.get("encoding") or "UTF8"
        with self.connect(MAINTENANCE_DB) as conn:
            self.query(conn, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            self.query(conn, sql.SQL("CREATE DATABASE {} ENCODING {} TEMPLATE template0").format(
                name, sql.Literal(encoding)))

    # -- restoring over the live database ------------------------------------------------------
    def required_tools(self, facts: dict) -> list[str]:
        return ["zstd", "pg_restore"]

    def restores_through_files(self, facts: dict) -> bool:
        return facts.get("tool") == "pg_dump"

    def data_directory(self) -> Path | None:
        if loopback_or(self.params.host) != "loopback":
            return None
        try:
            with self.connect(MAINTENANCE_DB) as conn:
                path = Path(self.query(conn, "SHOW data_directory")[0][0])
        except DatabaseError:
            return None  # only superusers (and pg_read_all_settings) may read it
        return path if path.is_dir() else None

    def companion(self, role: str) -> PostgresDatabase:
        """airlock_<role>_<name>: a database beside this one for a restore's staging or old copy."""
        return PostgresDatabase(replace(self.params, database=f"airlock_{role}_{self.params.database}"[:63]))

    def restore_staging(self) -> PostgresDatabase:
        return self.companion("restore")

    def swap_in(self, staging: Database, facts: dict) -> None:
        """Rename this database aside and the restored one into its place in one transaction, then give
        it this database's owner, grants and settings (pg_dump carries those of the objects inside)."""
        assert isinstance(staging, PostgresDatabase)
        previous, name = self.companion("previous"), self.params.database
        with self.connect(MAINTENANCE_DB) as conn:
            kept = self.database_properties(conn) if self.exists() else None
            self.query(conn, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(previous.params.database)))
            self.query(conn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ANY(%s) "
                             "AND pid <> pg_backend_pid()", ([name, staging.params.database],))
            self.query(conn, "BEGIN")
            if kept is not None:
                self.query(conn, sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(name), sql.Identifier(previous.params.database)))
            self.query(conn, sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(staging.params.database), sql.Identifier(name)))
            self.query(conn, "COMMIT")
            if kept is not None:
                self.apply_database_properties(conn, kept)
        previous.drop()

    def database_properties(self, conn) -> dict:
        """Owner, grants and per-database settings: what lives on the database, not inside it."""
        owner, has_acl = self.query(conn, "SELECT pg_get_userbyid(datdba), datacl IS NOT NULL FROM pg_database "
                                          "WHERE datname = %s", (self.params.database,))[0]
        grants = self.query(conn, "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, "
                                  "a.privilege_type, a.is_grantable FROM pg_database d, aclexplode(d.datacl) a "
                                  "WHERE d.datname = %s", (self.params.database,))
        settings = self.query(conn, "SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_database d "
                                    "ON d.oid = s.setdatabase WHERE d.datname = %s AND s.setrole = 0",
                              (self.params.database,))
        return {"owner": owner, "has_acl": has_acl, "grants": grants, "settings": [row[0] for row in settings]}

    def apply_database_properties(self, conn, kept: dict) -> None:
        database = sql.Identifier(self.params.database)
        if kept["owner"] != self.params.user:
            self.query(conn, sql.SQL("ALTER DATABASE {} OWNER TO {}").format(database, sql.Identifier(kept["owner"])))
        if kept["has_acl"]:
            self.query(conn, sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(database))
        for grantee, privilege, grantable in kept["grants"]:
            if privilege not in ("CONNECT", "CREATE", "TEMPORARY"):
                continue  # not a database privilege; nothing else can come from aclexplode here
            who = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
            self.query(conn, sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                sql.SQL(privilege), database, who, sql.SQL(" WITH GRANT OPTION" if grantable else "")))
        for setting in kept["settings"]:
            key, _, value = setting.partition("=")
            self.query(conn, sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                database, sql.Identifier(key), sql.Literal(value)))

    def scratch(self, label: str) -> PostgresDatabase:
        prefix = self.scratch_prefix(label)
        server = PostgresDatabase(replace(self.scratch_server or self.params, database=MAINTENANCE_DB))
        with server.connect(MAINTENANCE_DB) as conn:
            stale = [row[0] for row in server.query(conn, "SELECT datname FROM pg_database WHERE datname LIKE %s",
                                                    (prefix.replace("_", r"\_") + "%",))]
            for name in stale:
                log.warning("dropping %s, a scratch copy an earlier try left on %s", name, server.describe())
                server.query(conn, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        return PostgresDatabase(replace(server.params, database=f"{prefix}{uuid.uuid4().hex[:8]}"))

    def drop(self) -> None:
        with self.connect(MAINTENANCE_DB) as conn:
            self.query(conn, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(self.params.database)))
