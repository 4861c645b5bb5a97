"""Credentials from Airflow connections, looked up only when a task runs."""

from __future__ import annotations


def connection_fields(conn_id: str) -> tuple[str, int | None, str, str]:
    """(host, port, login, password) of an Airflow connection; the password is masked in logs."""
    from airflow.sdk import BaseHook
    from airflow.sdk.log import mask_secret

    conn = BaseHook.get_connection(conn_id)
    password = conn.password or ""
    if password:
        mask_secret(password)
    return conn.host or "127.0.0.1", conn.port, conn.login or "", password


def airflow_secret(conn_id: str | None = None, variable: str | None = None) -> str:
    """A connection's password or a variable's value (a key that must not live beside what it
    protects); masked in logs."""
    from airflow.sdk import BaseHook, Variable
    from airflow.sdk.log import mask_secret

    value = BaseHook.get_connection(conn_id).password if conn_id else Variable.get(variable or "")
    if value:
        mask_secret(value)
    return value or ""
