"""Servers that require a login, as platform teams run them, and the Airflow connections Airlock
logs in with.

- MLflow: its basic-auth app (`--app-name basic-auth`), Airlock as an admin user with a planted
  password ("basic"), or a bearer token checked by the app's `authorization_function` hook ("token").
- ZenML: its default authentication; a service account and API key created by the server's admin.
- Sematic: authentication on; a user with an API key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
from pathlib import Path

from airlock.http import request_json
from airlock.platform_auth import Credential
from leaks import PLANTED

TESTS = Path(__file__).resolve().parent
MLFLOW_ADMIN = ("admin", "test-admin-pw-not-airlocks")
"""MLflow's built-in admin (created at the auth database's first start): the tests' own, not Airlock's."""
AIRLOCK_USER = "airlock"
FLASK_KEY_CONN_ID = "airlock_it_mlflow_flask_key"
"""MLflow 3's basic-auth app refuses to start without a CSRF secret key: the server's own secret."""


def conn_id_for(scenario_name: str, env: str) -> str:
    return f"airlock_it_{scenario_name}_{env}_login"


def server_settings(platform: str, auth: str, state_dir: Path) -> dict:
    """What the target's driver needs to start an authenticated server (`env`, `args`)."""
    if platform == "mlflow":
        env = {"MLFLOW_AUTH_CONFIG_PATH": str(state_dir / "basic_auth.ini")}
        if auth == "token":
            env.update({"PYTHONPATH": str(TESTS), "AIRLOCK_TEST_BEARER_SHA256": sha256(PLANTED["platform"])})
        return {"env": env, "args": ["--app-name", "basic-auth"],
                "secret_env": {"MLFLOW_FLASK_SERVER_SECRET_KEY": {"conn_id": FLASK_KEY_CONN_ID}}}
    if platform == "zenml":  # its default authentication (OAUTH2_PASSWORD_BEARER): nothing to switch on
        return {}
    if platform == "sematic":
        return {"env": {"SEMATIC_AUTHENTICATE": "true"}}
    raise ValueError(platform)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def prepare(platform: str, auth: str, state_dir: Path) -> None:
    """Files an authenticated server reads at start (MLflow: its auth config and user database)."""
    if platform != "mlflow":
        return
    set_connection(FLASK_KEY_CONN_ID, Credential("test-flask-csrf-key-not-airlocks"))
    state_dir.mkdir(parents=True, exist_ok=True)
    function = ("mlflow_token_auth:authenticate_request_token" if auth == "token"
                else "mlflow.server.auth:authenticate_request_basic_auth")
    (state_dir / "basic_auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{state_dir / 'basic_auth.db'}\n"
        f"admin_username = {MLFLOW_ADMIN[0]}\nadmin_password = {MLFLOW_ADMIN[1]}\n"
        f"authorization_function = {function}\n")


def create_login(platform: str, auth: str, url: str, venv: Path, scratch: Path, database_url: str) -> Credential:
    """Airlock's credential on a freshly started server, made the way the platform's admin would
    (with the server version's own client in `venv` where it takes one)."""
    if platform == "mlflow":
        if auth == "token":
            return Credential(PLANTED["platform"])
        admin = Credential(MLFLOW_ADMIN[1], MLFLOW_ADMIN[0])
        headers = {"Authorization": admin.basic_header()}
        api = f"{url}/api/2.0/mlflow/users"
        request_json("POST", f"{api}/create", {"username": AIRLOCK_USER, "password": PLANTED["platform"]},
                     headers=headers)
        request_json("PATCH", f"{api}/update-admin", {"username": AIRLOCK_USER, "is_admin": True}, headers=headers)
        return Credential(PLANTED["platform"], AIRLOCK_USER)
    if platform == "zenml":
        key = run_in_venv(venv, TESTS / "zenml_login.py", {
            "ZENML_STORE_URL": url, "ZENML_STORE_USERNAME": "default", "ZENML_STORE_PASSWORD": "",
            "ZENML_CONFIG_PATH": str(scratch), "ZENML_ANALYTICS_OPT_IN": "false"})
        return Credential(key.splitlines()[-1].strip())
    if platform == "sematic":
        run_in_venv(venv, TESTS / "sematic_login.py", {"DATABASE_URL": database_url, "HOME": str(scratch)},
                    stdin=PLANTED["platform"])
        return Credential(PLANTED["platform"])
    raise ValueError(platform)


def cheap_password_hashes(platform: str, auth: str, state_dir: Path) -> None:
    """MLflow's basic-auth app stores werkzeug's default password hash, which its server checks on
    every request at a cost of a large part of a second of CPU: the tests' two users get a PBKDF2
    hash of 1000 rounds instead (the same users, passwords and checks), or every request of a run
    pays that cost on these 2 cores."""
    if (platform, auth) != ("mlflow", "basic"):
        return
    from werkzeug.security import generate_password_hash

    with contextlib.closing(sqlite3.connect(state_dir / "basic_auth.db")) as db, db:
        for user, password in (MLFLOW_ADMIN, (AIRLOCK_USER, PLANTED["platform"])):
            db.execute("UPDATE users SET password_hash = ? WHERE username = ?",
                       (generate_password_hash(password, method="pbkdf2:sha256:1000"), user))


def run_in_venv(venv: Path, script: Path, env: dict[str, str], stdin: str = "") -> str:
    result = subprocess.run([str(venv / "bin" / "python"), str(script)], input=stdin, capture_output=True,
                            text=True, env={"PATH": os.environ["PATH"], **env}, timeout=300, check=False)
    assert result.returncode == 0, f"{script.name} failed:\n{result.stderr[-3000:]}"
    return result.stdout


def set_connection(conn_id: str, credential: Credential) -> None:
    """The Airflow connection Airlock reads the credential from (as `AIRFLOW_CONN_*`, like a deployment)."""
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(
        {"conn_type": "http", "login": credential.username or None, "password": credential.secret})
