"""Real services for integration tests: MariaDB on 127.0.0.1:3306, MLflow virtualenvs."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import quote

import MySQLdb
from airlock.databases.mysql import MysqlDatabase, MysqlParams
from airlock.databases.postgresql import PostgresDatabase, PostgresParams
from conftest import unavailable
from leaks import PLANTED

ADMIN = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
TEST_USER, TEST_PASSWORD = "airlock_it", PLANTED["database"]


def admin_connection():
    try:
        return MySQLdb.connect(**ADMIN, autocommit=True, connect_timeout=5)
    except MySQLdb.Error as error:
        unavailable(f"MariaDB is not reachable at 127.0.0.1:3306 as root: {error}")


def ensure_test_user() -> None:
    """A user with a password, so tests can prove the password never reaches a log."""
    conn = admin_connection()
    with conn.cursor() as cursor:
        for host in ("127.0.0.1", "localhost"):
            cursor.execute(f"CREATE USER IF NOT EXISTS '{TEST_USER}'@'{host}' IDENTIFIED BY '{TEST_PASSWORD}'")
            cursor.execute(f"ALTER USER '{TEST_USER}'@'{host}' IDENTIFIED BY '{TEST_PASSWORD}'")
            cursor.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{TEST_USER}'@'{host}'")
    conn.close()


def scratch_copies_on_its_server(db: MysqlDatabase, label: str) -> list[str]:
    """The scratch copies of this database (by `label`) left on its own server. Only this database's:
    the server is shared with tests running beside, whose copies come and go."""
    pattern = db.scratch_prefix(label).replace("_", r"\_") + "%"
    with db.connect(database=None) as conn:
        return [row[0] for row in db.query(
            conn, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s", (pattern,))]


def new_database(prefix: str, tool: str | None = None) -> MysqlDatabase:
    ensure_test_user()
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    conn = admin_connection()
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    conn.close()
    return MysqlDatabase(MysqlParams("127.0.0.1", 3306, TEST_USER, TEST_PASSWORD, name), tool)


def postgres_admin():
    import psycopg2

    try:
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=5)
    except psycopg2.Error as error:
        unavailable(f"PostgreSQL is not reachable at 127.0.0.1:5432 as postgres: {error}")
    conn.autocommit = True
    return conn


def new_postgres_database(prefix: str) -> PostgresDatabase:
    """A database owned by a user with a password (the server may trust it; the tools still get it)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    conn = postgres_admin()
    with conn.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (TEST_USER,))
        if not cursor.fetchone():
            cursor.execute(f"CREATE ROLE {TEST_USER} LOGIN CREATEDB")
        cursor.execute(f"ALTER ROLE {TEST_USER} PASSWORD '{TEST_PASSWORD}'")
        cursor.execute(f"CREATE DATABASE {name} OWNER {TEST_USER}")
    conn.close()
    return PostgresDatabase(PostgresParams("127.0.0.1", 5432, TEST_USER, TEST_PASSWORD, name))


def connection_uri_for_airflow(port: int = 3306) -> str:
    return f"mysql://{TEST_USER}:{quote(TEST_PASSWORD, safe='')}@127.0.0.1:{port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    """A moto server (S3 and RDS APIs, in memory) on a free local port."""
    binary = Path(sys.executable).with_name("moto_server")
    if not binary.exists():
        unavailable("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    process = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            return process, url
        except OSError:
            time.sleep(0.2)
    process.kill()
    unavailable(f"moto_server did not answer on {url} within 30 s")
    raise AssertionError("unreachable")


def aws_connection_json(endpoint: str) -> str:
    return json.dumps({"conn_type": "aws", "login": "testing", "password": PLANTED["s3"],
                       "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}})


class FlakyProxy:
    """A TCP proxy in front of a real server whose first `failures` connections are reset (RST, as a
    load balancer or a restarting pod does); every later one is passed through."""

    def __init__(self, target_host: str, target_port: int, failures: int):
        self.target, self.failures, self.reset = (target_host, target_port), failures, 0
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.reset < self.failures:
                self.reset += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def arm(self, failures: int) -> None:
        """Reset the next `failures` connections (the fault starts now)."""
        self.failures = self.reset + failures

    def close(self) -> None:
        self.listener.close()


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A filesystem of `size` at `path` (a disk that fills), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        unavailable(f"cannot mount a {size} tmpfs at {path}: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


class PrivateMariadb:
    """A MariaDB server of the tests' own (its data directory where the test says, e.g. on a small
    tmpfs), with the tests' user; stopped with the test."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.datadir, self.socket = root / "data", root / "mysqld.sock"
        self.cnf = root / "my.cnf"
        self.cnf.write_text(f"[mysqld]\ndatadir={self.datadir}\nsocket={self.socket}\nport={self.port}\n"
                            f"bind-address=127.0.0.1\nuser=root\ninnodb_log_file_size=8M\ninnodb_buffer_pool_size=32M\n"
                            f"innodb_flush_method=fsync\ninnodb_use_native_aio=0\ninnodb_autoextend_increment=1\n"
                            f"pid-file={root / 'mysqld.pid'}\nlog-error={root / 'error.log'}\n")
        installed = subprocess.run(["mariadb-install-db", f"--defaults-file={self.cnf}", "--user=root",
                                    "--auth-root-authentication-method=normal"], capture_output=True, text=True)
        if installed.returncode != 0:
            unavailable(f"mariadb-install-db failed: {installed.stderr[-500:]}")
        self.process = subprocess.Popen(["mariadbd", f"--defaults-file={self.cnf}"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = MySQLdb.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=2)
                break
            except MySQLdb.Error:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    unavailable(f"private mariadbd did not start: {(root / 'error.log').read_text()[-800:]}")
                time.sleep(0.1)
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE USER '{TEST_USER}'@'127.0.0.1' IDENTIFIED BY '{TEST_PASSWORD}'")
            cursor.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{TEST_USER}'@'127.0.0.1'")
        conn.close()

    def schemas(self) -> list[str]:
        conn = MySQLdb.connect(host="127.0.0.1", port=self.port, user="root")
        with conn.cursor() as cursor:
            cursor.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
            names = [row[0] for row in cursor.fetchall()]
        conn.close()
        return names

    def params(self, database: str) -> MysqlParams:
        return MysqlParams("127.0.0.1", self.port, TEST_USER, TEST_PASSWORD, database)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
