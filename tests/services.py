"""Real services for integration tests: MariaDB on 127.0.0.1:3306, MLflow virtualenvs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import MySQLdb
from airlock.databases.mysql import MysqlDatabase, MysqlParams
from airlock.databases.postgresql import PostgresDatabase, PostgresParams
from conftest import unavailable

ADMIN = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
TEST_USER, TEST_PASSWORD = "airlock_it", "pw-Th1s-must-NEVER-be-logged"


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
            cursor.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{TEST_USER}'@'{host}'")
    conn.close()


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
            cursor.execute(f"CREATE ROLE {TEST_USER} LOGIN CREATEDB PASSWORD '{TEST_PASSWORD}'")
        cursor.execute(f"CREATE DATABASE {name} OWNER {TEST_USER}")
    conn.close()
    return PostgresDatabase(PostgresParams("127.0.0.1", 5432, TEST_USER, TEST_PASSWORD, name))


def connection_uri_for_airflow() -> str:
    return f"mysql://{TEST_USER}:{TEST_PASSWORD}@127.0.0.1:3306"


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
    return json.dumps({"conn_type": "aws", "login": "testing", "password": "testing",
                       "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}})
