"""Real services for integration tests: MariaDB on 127.0.0.1:3306, MLflow virtualenvs."""

from __future__ import annotations

import uuid

import MySQLdb
from airlock.databases.mysql import MysqlDatabase, MysqlParams
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


def connection_uri_for_airflow() -> str:
    return f"mysql://{TEST_USER}:{TEST_PASSWORD}@127.0.0.1:3306"
