"""The Upgrades page in a real `airflow api-server` (the plugin loaded from plugins/): nobody gets it
without logging in, and a user sees only the targets whose upgrade DAG the auth manager lets them read."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from airlock import upgrade_log
from airlock.demo.fleet import demo_fleet, write_targets_file

REPO = Path(__file__).resolve().parent.parent
PORT = 5298
USERS = {"admin": "admin", "carol": "viewer"}
GRANTS = {"carol": ["airlock_upgrade__team_a"]}
"""carol may read team_a's upgrade DAG only; admin reads everything."""


def targets_file(root: Path) -> Path:
    """Two targets on local folders, each with one recorded upgrade in its log."""
    targets = demo_fleet(["team_a", "team_b"], root, 23000, log_dirs=True)
    for name, target in targets.items():
        upgrade_log.append(target["log_dir"], {
            "date": "2026-11-20T10:00:00+00:00", "target": name, "run_id": f"manual__{name}_run", "from": "2.16.2",
            "to": "3.17.2", "outcome": "upgraded", "detail": "", "approver": "admin", "rolled_back": False,
            "phase_seconds": {"preflight": 5.0}, "production_downtime_seconds": 21.0,
            "phase_spans": {"preflight": ["2026-11-20T10:00:00+00:00", "2026-11-20T10:00:05+00:00"]}})
    return write_targets_file(root / "targets.yaml", targets)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("upgrades-plugin")
    passwords = {user: secrets.token_urlsafe(12) for user in USERS}
    (root / "passwords.json").write_text(json.dumps(passwords))
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(root), "LANG": "C.UTF-8",
           "AIRFLOW_HOME": str(root / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
           "AIRFLOW__CORE__AUTH_MANAGER": "restricted_auth_manager.RestrictedAuthManager",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(root / "passwords.json"),
           "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32), "AIRFLOW__API__PORT": str(PORT),
           "AIRLOCK_TARGETS_FILE": str(targets_file(root)), "AIRLOCK_TEST_DAG_GRANTS": json.dumps(GRANTS),
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO / "include")])}
    airflow = str(Path(sys.executable).with_name("airflow"))
    migrated = subprocess.run([airflow, "db", "migrate"], env=env, cwd=root, capture_output=True, text=True)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    with open(root / "api-server.log", "ab") as log:
        server = subprocess.Popen([airflow, "api-server", "--port", str(PORT)], env=env, cwd=root, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{PORT}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"the api-server exited; see {root}/api-server.log"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"the api-server did not answer within 120 s; see {root}"
            time.sleep(1)
        yield url, passwords
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def logged_in(api, user: str) -> dict[str, str]:
    url, passwords = api
    token = httpx.post(f"{url}/auth/token", json={"username": user, "password": passwords[user]}).json()
    return {"Authorization": f"Bearer {token['access_token']}"}


def test_nobody_gets_the_page_without_logging_in(api):
    url, _ = api
    for path in ("/airlock/upgrades", "/airlock/upgrades/targets/team_a"):
        answer = httpx.get(url + path)
        assert answer.status_code == 401, (path, answer.status_code, answer.text[:200])
        assert "manual__team_a_run" not in answer.text
    forged = httpx.get(url + "/airlock/upgrades", headers={"Authorization": "Bearer not-a-token"})
    assert forged.status_code in (401, 403) and "team_a" not in forged.text


def test_a_user_sees_only_the_targets_whose_dag_they_may_read(api):
    url, _ = api
    carol = logged_in(api, "carol")
    page = httpx.get(url + "/airlock/upgrades", headers=carol)
    assert page.status_code == 200
    assert "manual__team_a_run" in page.text and 'id="target-team_a"' in page.text
    assert "team_b" not in page.text  # not its row, not its name in the index
    refused = httpx.get(url + "/airlock/upgrades/targets/team_b", headers=carol)
    assert refused.status_code == 403 and "manual__team_b_run" not in refused.text
    assert httpx.get(url + "/airlock/upgrades/targets/team_a", headers=carol).status_code == 200

    admin = httpx.get(url + "/airlock/upgrades", headers=logged_in(api, "admin"))
    assert "manual__team_a_run" in admin.text and "manual__team_b_run" in admin.text


def test_the_page_is_in_the_airflow_navigation(api):
    url, _ = api
    plugins = httpx.get(url + "/api/v2/plugins", headers=logged_in(api, "admin")).json()["plugins"]
    views = [view for plugin in plugins if plugin["name"] == "airlock_upgrades" for view in plugin["external_views"]]
    assert views and views[0]["href"] == "airlock/upgrades" and views[0]["destination"] == "nav"

