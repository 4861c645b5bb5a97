"""MySQL and MariaDB: a consistent mysqldump piped through zstd, restored with the mysql client.

Credentials reach the command-line tools through a 0600 defaults file that lives only for the
duration of the command, never through argv or a shell.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

import MySQLdb

from airlock.databases.base import Database, DatabaseError, TableStats

DUMP = "database.sql.zst"
SAFE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


@dataclass(frozen=True)
class MysqlParams:
    host: str
    port: int
    user: str
    password: str
    database: str


def quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class MysqlDatabase(Database):
    kind = "mysql"

    def __init__(self, params: MysqlParams):
        if not SAFE_NAME.match(params.database):
            raise DatabaseError(f"database name {params.database!r} must match {SAFE_NAME.pattern}")
        self.params = params

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
                handle.write(f"[client]\nhost={p.host}\nport={p.port}\nuser={p.user}\n"
                             f'password="{password}"\n')
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
        stats: TableStats = {}
        for table in self.tables(conn):
            columns = [row[0] for row in self.query(
                conn, "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA=%s "
                      "AND TABLE_NAME=%s ORDER BY ORDINAL_POSITION", (self.params.database, table))]
            # Per row: 60 bits of MD5 over every column's bytes; summed, so row order does not matter.
            row_text = ",".join(f"IFNULL(HEX(CAST({quote_identifier(c)} AS BINARY)),'N')" for c in columns)
            rows, total = self.query(conn, (
                f"SELECT COUNT(*), COALESCE(SUM(CAST(CONV(SUBSTRING(MD5(CONCAT_WS('|',{row_text})),1,15),"
                f"16,10) AS UNSIGNED)),0) FROM {quote_identifier(table)}"))[0]
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

    def dump(self, directory: Path) -> tuple[list[str], TableStats, dict]:
        """Dump while holding read locks, so the statistics describe exactly the dumped data.

        Writers wait for the length of the dump; the upgrade's final backup is taken with the
        server stopped, where that costs nothing.
        """
        with self.connect() as conn:
            tables = self.tables(conn)
            if tables:
                self.query(conn, "LOCK TABLES " + ", ".join(f"{quote_identifier(t)} READ" for t in tables))
            try:
                stats, facts = self.stats_with(conn), self.facts_with(conn)
                self.run_dump(directory / DUMP)
            finally:
                if tables:
                    self.query(conn, "UNLOCK TABLES")
        return [DUMP], stats, facts

    def run_dump(self, target: Path) -> None:
        with self.defaults_file() as cnf, open(target, "wb") as out:
            dump = subprocess.Popen(
                ["mysqldump", f"--defaults-extra-file={cnf}", "--single-transaction", "--quick",
                 "--hex-blob", "--no-tablespaces", "--skip-lock-tables", "--triggers", self.params.database],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            zstd = subprocess.Popen(["zstd", "-q", "-3", "-T0", "-c"], stdin=dump.stdout, stdout=out,
                                    stderr=subprocess.PIPE)
            dump.stdout.close()
            zstd_err = zstd.communicate()[1]
            dump_err = dump.communicate()[1]
        self.check_pipeline("mysqldump", dump.returncode, dump_err, "zstd", zstd.returncode, zstd_err)

    def check_pipeline(self, first: str, first_rc: int, first_err: bytes,
                       second: str, second_rc: int, second_err: bytes) -> None:
        for name, rc, err in ((first, first_rc, first_err), (second, second_rc, second_err)):
            if rc != 0:
                detail = self.redact(err.decode(errors="replace").strip()[-800:])
                raise DatabaseError(f"{name} failed for {self.describe()} (exit {rc}): {detail}")

    def load(self, directory: Path, facts: dict) -> None:
        name = quote_identifier(self.params.database)
        charset = facts.get("charset") or "utf8mb4"
        collation = facts.get("collation") or "utf8mb4_general_ci"
        with self.connect(database=None) as conn:
            # A dump loaded over a migrated schema fails half-way on foreign keys: start empty.
            self.query(conn, f"DROP DATABASE IF EXISTS {name}")
            self.query(conn, f"CREATE DATABASE {name} CHARACTER SET {charset} COLLATE {collation}")
        with self.defaults_file() as cnf:
            unzip = subprocess.Popen(["zstd", "-q", "-d", "-c", str(directory / DUMP)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            client = subprocess.Popen(["mysql", f"--defaults-extra-file={cnf}", self.params.database],
                                      stdin=unzip.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            unzip.stdout.close()
            client_err = client.communicate()[1]
            unzip_err = unzip.communicate()[1]
        self.check_pipeline("zstd", unzip.returncode, unzip_err, "mysql", client.returncode, client_err)

    def scratch(self, label: str) -> MysqlDatabase:
        name = f"airlock_verify_{re.sub(r'[^a-z0-9]', '', label.lower())[:24]}_{uuid.uuid4().hex[:8]}"
        return MysqlDatabase(replace(self.params, database=name))

    def drop(self) -> None:
        with self.connect(database=None) as conn:
            self.query(conn, f"DROP DATABASE IF EXISTS {quote_identifier(self.params.database)}")
