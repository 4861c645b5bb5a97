"""Logins to platform servers: an Airflow connection per environment (`auth: {conn_id: …}`).

The connection's login and password are a user name and password (MLflow's basic-auth app, a ZenML
user); a password alone is the platform's token (an MLflow bearer token, a ZenML or Sematic API key).
The secret is looked up only when a task runs, masked in task logs, and never part of a repr.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from airlock.http import ServerError


@dataclass(frozen=True)
class Credential:
    """What one environment's server is logged in with; `where` says where it came from."""

    secret: str = field(repr=False)
    username: str = ""
    conn_id: str = ""
    environment: str = ""

    @property
    def is_login(self) -> bool:
        """A user name and password (else the secret is a token or API key)."""
        return bool(self.username)

    def basic_header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.secret}".encode()).decode()

    @property
    def where(self) -> str:
        return f"Airflow connection {self.conn_id!r} (environments.{self.environment}.auth.conn_id)"


class AuthError(ServerError):
    """A server refused Airlock's login, or the login's connection is missing; says which and what to do."""


def credential_from_connection(conn_id: str, environment: str) -> Credential:
    """The credential an environment names, from Airflow (masked in logs by `connection_fields`); a
    missing or empty one is an AuthError."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    from airlock.airflow_connections import connection_fields

    where = f"Airflow connection {conn_id!r} (environments.{environment}.auth.conn_id)"
    try:
        _, _, login, password = connection_fields(conn_id)
    except AirflowNotFoundException:
        raise AuthError(f"{environment}: {where} does not exist on this worker; "
                        f"create it with the server's user name and password, or its token as the password "
                        f"(airflow connections add {conn_id} --conn-type http --conn-login USER "
                        "--conn-password SECRET). Nothing was touched.") from None
    if not password:
        raise AuthError(f"{environment}: {where} has no password: put the server's password, token or API key "
                        "in it. Nothing was touched.")
    return Credential(password, login, conn_id, environment)
