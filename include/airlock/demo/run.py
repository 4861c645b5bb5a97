"""`make demo`: upgrade two MLflow servers from 2.16.2 to 3.17.2 through a real Airflow.

Starts MLflow staging and production (SQLite, local processes) with seeded data, starts
`airflow standalone`, triggers the upgrade DAG through the REST API, prints each phase as it completes,
the upgrade report and where the Upgrades page is, and stops everything it started, also on failure or
Ctrl-C.

APPROVE=auto (the default) answers the approval gate through the REST API as a person's tool would;
APPROVE=ui prints the gate's link and the login, and waits for a person to click Approve or Reject.
KEEP=1 leaves Airflow and both servers running at the end, until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from airlock import upgrade_log
from airlock.config import load_target
from airlock.demo import SEED_MLFLOW
from airlock.drivers.process import ensure_platform_venv
from airlock.environment import open_environment
from airlock.http import ServerError, request_json, request_text

OLD, NEW = "2.16.2", "3.17.2"
TARGET = "mlflow_demo"
DAG_ID = f"airlock_upgrade__{TARGET}"
REPO = Path(__file__).resolve().parents[3]
PORT = int(os.environ.get("AIRLOCK_DEMO_AIRFLOW_PORT", "8089"))
PHASES = ("preflight", "backup_and_prepare", "compatibility", "staging_upgrade", "uat", "production_slot",
          "production_upgrade", "conclude")
SIGNING_KEY_ENV = "AIRFLOW_VAR_AIRLOCK_BACKUP_SIGNING_KEY"
DONE = {"success", "failed", "skipped", "upstream_failed", "removed"}
APPROVE_MODES = ("auto", "ui")


class DemoSettings:
    """APPROVE and KEEP from the environment (make demo APPROVE=ui KEEP=1), refused before anything starts."""

    def __init__(self, environ: dict[str, str]):
        self.approve = environ.get("APPROVE") or "auto"
        if self.approve not in APPROVE_MODES:
            raise SystemExit(f"APPROVE={self.approve!r}: expected one of {', '.join(APPROVE_MODES)} "
                             "(auto: the demo answers the gate; ui: you click Approve or Reject in the UI)")
        keep = environ.get("KEEP") or "0"
        if keep not in ("0", "1"):
            raise SystemExit(f"KEEP={keep!r}: expected 1 (leave Airflow and the servers running) or 0")
        self.keep = keep == "1"


def say(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)


def prepare_servers(data_dir: Path):
    """Fresh staging and production on the old version, seeded by the old client."""
    target = load_target(TARGET)
    envs = [open_environment(target, name) for name in ("staging", "production")]
    for env in envs:
        env.driver.stop()
    shutil.rmtree(data_dir, ignore_errors=True)
    for version in (OLD, NEW):
        say(f"MLflow {version}: virtualenv {ensure_platform_venv(envs[0].adapter, version)}")
    for env in envs:
        env.driver.start(OLD)
        python = env.driver.venv_path(OLD) / "bin" / "python"
        subprocess.run([str(python), str(SEED_MLFLOW), env.config.url], check=True, capture_output=True)
        counts = env.adapter.fingerprint().counts
        say(f"{env.name}: MLflow {env.adapter.server_version()} at {env.config.url}, seeded {counts}")
    return target, envs


def api_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def airflow_env(home: Path, port: int, users: str = "admin:admin") -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # standalone starts `airflow ...` subcommands by name
    api = api_url(port)
    return {**os.environ,
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": api,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": users,
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5"}


def start_airflow(home: Path, port: int = PORT, users: str = "admin:admin") -> subprocess.Popen:
    """`airflow standalone` (scheduler, triggerer, DAG processor, API server) on `port`, with the
    simple auth manager's `users` (name:role,…)."""
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "standalone.log", "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen([str(Path(sys.executable).with_name("airflow")), "standalone"], stdout=log,
                               stderr=subprocess.STDOUT, env=airflow_env(home, port, users), start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"airflow standalone exited ({process.returncode}); see {home / 'standalone.log'}")
        try:
            request_text(f"{api_url(port)}/api/v2/monitor/health", timeout=2)
            say(f"Airflow is up at {api_url(port)} (log: {home / 'standalone.log'})")
            return process
        except ServerError:
            time.sleep(2)
    raise RuntimeError(f"Airflow did not answer within 180 s; see {home / 'standalone.log'}")


def stop_airflow(process: subprocess.Popen) -> None:
    """airflow standalone stops cleanly only on SIGINT to itself; it then stops its children."""
    for signum, grace in ((signal.SIGINT, 45), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            break
        if signum == signal.SIGINT:
            process.send_signal(signum)
        else:
            os.killpg(process.pid, signum)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # any worker left behind in the group


PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


def password_of(home: Path, user: str = "admin") -> str:
    """The password airflow standalone generated for `user`."""
    return json.loads((home / PASSWORDS_FILE).read_text())[user]


class AirflowApi:
    """The REST calls a person's tooling would make, authenticated as `user` (admin by default)."""

    def __init__(self, home: Path, port: int = PORT, user: str = "admin"):
        self.url = api_url(port)
        token = request_json("POST", f"{self.url}/auth/token", {"username": user, "password": password_of(home, user)})
        self.headers = {"Authorization": f"Bearer {token['access_token']}"}

    def call(self, method: str, path: str, body: dict | None = None):
        return request_json(method, f"{self.url}/api/v2{path}", body, headers=self.headers)

    def read(self, path: str, patience: float = 300):
        """A GET that outlasts a busy or restarting API server: one poll that timed out must not end
        the demo and stop everything it started. Asked again while it does not answer or answers 5xx,
        for up to `patience` seconds; any other answer (a 4xx) is final."""
        deadline = time.monotonic() + patience
        while True:
            try:
                return self.call("GET", path)
            except ServerError as error:
                if (error.status is not None and error.status < 500) or time.monotonic() > deadline:
                    raise
                say(f"Airflow's API did not answer ({error}); asking again")
                time.sleep(2)


def add_api_connection(api: AirflowApi, home: Path) -> None:
    """The connection Airlock reaches Airflow's own API with (drain.airflow_api_conn_id), as an admin
    adds it once per deployment: preflight makes sure of the production slot's pool through it."""
    password = password_of(home)
    connection = {"connection_id": "airlock_airflow_api", "conn_type": "http", "host": "127.0.0.1", "port": PORT,
                  "login": "admin", "password": password, "description": "Airlock → this Airflow's REST API"}
    try:
        api.call("POST", "/connections", connection)
    except ServerError as error:
        if error.status != 409:
            raise
        api.call("PATCH", "/connections/airlock_airflow_api", connection)


def wait_for_dag(api: AirflowApi, dag_id: str = DAG_ID) -> None:
    """Until the DAG processor has parsed the DAG; then unpause it."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            api.call("GET", f"/dags/{dag_id}")
            api.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})
            return
        except ServerError:
            time.sleep(3)
    raise RuntimeError(f"{dag_id} was not parsed within 180 s; check `airflow dags list-import-errors`")


def follow_run(api: AirflowApi, run_id: str, approve: str = "auto", home: Path | None = None) -> str:
    """Print tasks and phases as they finish; answer the gate (or show a person where to); return the
    run's final state."""
    seen: dict[str, str] = {}
    phases_done: set[str] = set()
    answered = False
    while True:
        tis = api.read(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
        states = {ti["task_id"]: ti["state"] or "none" for ti in tis}
        for task_id, state in sorted(states.items()):
            if state in DONE and seen.get(task_id) != state:
                say(f"  {task_id}: {state}")
            seen[task_id] = state
        for phase in PHASES:
            members = [s for t, s in states.items() if t.startswith(phase + ".")]
            if phase not in phases_done and members and all(s in DONE for s in members):
                phases_done.add(phase)
                say(f"phase {phase} complete")
        if not answered and states.get("uat.approval") == "awaiting_input":
            if approve == "ui":
                show_gate(api, run_id, home)
            else:
                answer_gate(api, run_id)
            answered = True
        run = api.read(f"/dags/{DAG_ID}/dagRuns/{run_id}")
        if run["state"] in ("success", "failed"):
            return run["state"]
        time.sleep(2)


def show_gate(api: AirflowApi, run_id: str, home: Path | None) -> None:
    """APPROVE=ui: where the person answers, and the login to do it with."""
    password = password_of(home) if home else f"(see {PASSWORDS_FILE})"
    say("The approval gate is waiting for you. Open Airflow, log in, and click Approve or Reject:")
    say(f"    {api.url}/dags/{DAG_ID}/runs/{run_id}/required_actions  (this run's gate, uat.approval)")
    say(f"    {api.url}/required_actions  (Browse → Required Actions: every gate waiting)")
    say(f"    login: admin / {password}")
    say("Waiting for your answer (Ctrl-C stops the demo and everything it started).")


READING_SECONDS = 8
"""A person reads the body before answering. Answering within a second of the task parking races
Airflow 3.3's scheduler (it marks the gate FAILED: "state changed externally"); production then
stays untouched, but the upgrade stops."""


def answer_gate(api: AirflowApi, run_id: str) -> None:
    path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/uat.approval/-1/hitlDetails"
    detail = api.call("GET", path)
    say("The approval gate is waiting. Its body, as the approver sees it:")
    print("\n".join("    " + line for line in (detail.get("body") or "").splitlines()), flush=True)
    say(f"A person would click Approve in the UI: {api.url} → Browse → Required Actions.")
    say(f"This demo answers through the same REST endpoint instead: PATCH /api/v2{path}")
    time.sleep(READING_SECONDS)
    answer = api.call("PATCH", path, {"chosen_options": ["Approve"], "params_input": {}})
    say(f"Approved by {answer.get('responded_by_user', {}).get('name', 'admin')}")


def stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def print_where_to_look(api_url_: str, keep: bool) -> None:
    say(f"Upgrades page: {api_url_}/airlock/upgrades (in the UI: {api_url_}/plugin/airlock-upgrades, "
        "the Upgrades entry of the navigation)")
    if keep:
        say("KEEP=1: Airflow and both MLflow servers stay up; Ctrl-C stops them all.")


def wait_for_ctrl_c() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)


def main() -> int:
    settings = DemoSettings(dict(os.environ))
    signal.signal(signal.SIGTERM, stop_on_sigterm)  # a killed demo still stops what it started
    # Ctrl-C stops everything even where the demo was started in the background (a shell then starts
    # it with SIGINT ignored, and Python leaves an ignored SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    data_dir = Path(os.environ.setdefault("AIRLOCK_DATA_DIR", "/tmp/airlock-demo"))
    os.environ.pop("AIRLOCK_TARGETS_FILE", None)  # the embedded default targets file
    os.environ.setdefault(SIGNING_KEY_ENV, secrets.token_hex(32))  # signs this demo's backup manifests
    airflow = None
    envs = []
    try:
        target, envs = prepare_servers(data_dir)
        airflow = start_airflow(data_dir / "airflow-home")
        api = AirflowApi(data_dir / "airflow-home")
        add_api_connection(api, data_dir / "airflow-home")
        wait_for_dag(api)
        run = api.call("POST", f"/dags/{DAG_ID}/dagRuns",
                       {"logical_date": None, "conf": {"target_version": NEW, "watch_seconds": 10}})
        say(f"triggered {DAG_ID} run {run['dag_run_id']} with target_version={NEW}")
        state = follow_run(api, run["dag_run_id"], settings.approve, data_dir / "airflow-home")
        say(f"run finished: {state}")
        print((Path(target.log_dir) / upgrade_log.MARKDOWN).read_text(), flush=True)
        for env in envs:
            say(f"{env.name} now serves MLflow {env.adapter.server_version()}")
        say(f"demo took {time.monotonic() - started:.0f} s")
        print_where_to_look(api.url, settings.keep)
        if settings.keep:
            wait_for_ctrl_c()
        return 0 if state == "success" else 1
    finally:
        if airflow is not None:
            stop_airflow(airflow)
        for env in envs:
            env.driver.stop()
        say("stopped Airflow and both MLflow servers")


if __name__ == "__main__":
    sys.exit(main())
