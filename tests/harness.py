"""Running the real upgrade DAG in tests: targets on MariaDB, real MLflow servers, a real gate answer.

The DAG runs under `dag.test()`; the approval gate is answered through Airflow's own REST endpoint
(`PATCH .../hitlDetails`, the one the UI uses), called in-process on the metadata DB the run uses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import platform_logins
import yaml
from airlock import upgrade_log
from airlock.config import load_target, load_targets
from airlock.databases.mysql import MysqlDatabase
from airlock.demo import SEED_MLFLOW, SEED_SEMATIC, SEED_ZENML
from airlock.environment import Environment, open_environment
from airlock.helm import HelmClient, HelmRelease, release_values
from airlock.http import request_json
from airlock.platforms.mlflow import MlflowAdapter
from services import new_database

OLD, NEW = "2.16.2", "3.17.2"
ENVS = ("staging", "production")
CONN_ID = "airlock_it_mysql"
KUBE_CONN_ID = "airlock_test_kube"
CHART = Path(__file__).resolve().parent / "charts" / "mlflow-lite"


@dataclass(frozen=True)
class Platform:
    """A platform as the integration tests run it: versions, database kind, server settings."""

    name: str
    old: str
    new: str
    database: str
    seed: Path
    server_env: dict[str, str] = field(default_factory=dict)


MLFLOW_JOBS_OFF = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"
"""MLflow 3 servers start a job runner by default (seven more processes, each importing mlflow: about
half a minute of CPU per start on these 2 cores); the tests switch it off except where they keep it
on (test_upgrade_mlflow's "happy" run), since no test is about MLflow's jobs."""

MLFLOW_NO_IDLE_CONNECTIONS = {"MLFLOW_SQLALCHEMYSTORE_POOLCLASS": "NullPool"}
"""Each MLflow server keeps 5 pooled connections open by default: the tests' thirty-odd servers at once
would fill the shared MariaDB's 151; with NullPool a server holds one only while it uses it."""

PLATFORMS = {
    "mlflow": Platform("mlflow", OLD, NEW, "mysql", SEED_MLFLOW, {MLFLOW_JOBS_OFF: "false",
                                                                   **MLFLOW_NO_IDLE_CONNECTIONS}),
    "zenml": Platform("zenml", "0.90.0", "0.98.0", "mysql", SEED_ZENML,
                      {"ZENML_SERVER_ALLOW_LOCAL_FILE_ACCESS": "true"}),
    "sematic": Platform("sematic", "0.39.1", "0.41.0", "sqlite", SEED_SEMATIC),
}


@dataclass
class Scenario:
    name: str
    root: Path
    ports: dict[str, int]
    platform: Platform = PLATFORMS["mlflow"]
    settings: dict = field(default_factory=dict)
    """Target settings merged over the defaults (drain, compatibility, ...)."""
    driver: str = "process"
    """process, or helm (the chart in tests/charts/mlflow-lite, on the test API server)."""
    start_timeout_seconds: float = 120
    kube_conn_id: str = KUBE_CONN_ID
    helm_settings: dict[str, dict] = field(default_factory=dict)
    """Per environment, Helm settings merged over the defaults (e.g. blue-green)."""
    environment_settings: dict[str, dict] = field(default_factory=dict)
    databases: dict[str, MysqlDatabase] = field(default_factory=dict)
    auth: str | None = None
    """Servers that require a login: "basic" (a user name and password) or "token" (a bearer token or
    API key); Airlock logs in through an Airflow connection per environment (tests/platform_logins.py)."""

    def database_entry(self, env: str) -> dict:
        if self.platform.database == "sqlite":
            return {"kind": "sqlite", "path": str(self.root / env / "server.sqlite3")}
        return {"kind": "mysql", "conn_id": CONN_ID, "database": self.databases[env].params.database}

    def target_entry(self) -> dict:
        envs = {}
        for env, port in self.ports.items():
            driver = {"kind": "process", "state_dir": str(self.root / env),
                      "start_timeout_seconds": self.start_timeout_seconds}
            if self.driver == "helm":
                driver = {**driver, "kind": "helm", "helm": self.helm_entry(env)}
            if self.platform.server_env:
                driver["env"] = dict(self.platform.server_env)
            login = {}
            if self.auth:
                settings = platform_logins.server_settings(self.platform.name, self.auth, self.root / env)
                driver = {**driver, "env": {**driver.get("env", {}), **settings.get("env", {})},
                          "args": settings.get("args", []), "secret_env": settings.get("secret_env", {})}
                login = {"auth": {"conn_id": platform_logins.conn_id_for(self.name, env)}}
            envs[env] = {"url": f"http://127.0.0.1:{port}", "driver": driver, "database": self.database_entry(env),
                         **login, **self.environment_settings.get(env, {})}
        return {"platform": self.platform.name, "approvers": ["admin"], "upgrade": {"allow_minor_skips": True},
                "backup": {"location": str(self.root / "backups")},
                "drain": DRAIN,
                "watch": {"interval_seconds": 1, "consecutive_failures": 2, "unhealthy_seconds": 3},
                "environments": envs, **self.settings}

    def helm_entry(self, env: str) -> dict:
        release = "mlflow"
        return {"release": release, "namespace": self.namespace(env), "chart": str(CHART), "deployment": release,
                "service": release, "migration_job": f"{release}-migrate", "kubernetes_conn_id": self.kube_conn_id,
                "timeout_seconds": 120, **self.helm_settings.get(env, {})}

    def namespace(self, env: str) -> str:
        return f"{self.name.replace('_', '-')}-{env}"

    def env(self, name: str, login: bool = True) -> Environment:
        """An environment as Airlock opens it; `login=False` before its login exists (the server is
        then checked only through its public health endpoint)."""
        target = load_target(self.name)
        if not login:
            target = replace(target, environments={**target.environments, name: replace(
                target.environment(name), auth_conn_id=None)})
        return open_environment(target, name, resolve=lambda config: self.databases[name])


DRAIN = {"timeout_minutes": 10, "poll_interval_seconds": 1, "stale_after_minutes": 60}
"""The scenarios' drain settings, unless a scenario gives its own."""


def write_targets(path: Path, scenarios: list[Scenario], fleets: dict | None = None) -> None:
    path.write_text(yaml.safe_dump({"targets": {s.name: s.target_entry() for s in scenarios},
                                    **({"fleets": fleets} if fleets else {})}))


def make_scenario(name: str, root: Path, staging_port: int, production_port: int, platform: str = "mlflow",
                  **settings) -> Scenario:
    scenario = Scenario(name, root / name, {"staging": staging_port, "production": production_port},
                        PLATFORMS[platform], **settings)
    if scenario.platform.database == "mysql":
        for env in scenario.ports:
            scenario.databases[env] = new_database(f"airlock_it_{name}_{env}"[:40])
    return scenario


def seed(scenario: Scenario, env_name: str) -> None:
    """Write data the way the platform's users do: with the old version's own client."""
    env = scenario.env(env_name)
    python = env.driver.venv_path(scenario.platform.old) / "bin" / "python"
    scratch = scenario.root / env_name / "client"
    scratch.mkdir(parents=True, exist_ok=True)
    argv = {"mlflow": [env.config.url], "zenml": [str(scenario.root / env_name / "team-artifacts")],
            "sematic": []}[scenario.platform.name]
    result = subprocess.run([str(python), str(scenario.platform.seed), *argv], capture_output=True, text=True,
                            cwd=scratch, env={**os.environ, **env.adapter.client_env(str(scratch)),
                                              **env.adapter.credential_env()})
    assert result.returncode == 0, f"seeding {env_name} of {scenario.name} failed:\n{result.stderr[-3000:]}"


@contextmanager
def seeded_production(scenario: Scenario, monkeypatch) -> Iterator[Environment]:
    """The scenario's production on the old version, seeded by its own client, with its targets file
    and database connection set for Airlock; stopped and its databases dropped afterwards."""
    from services import connection_uri_for_airflow

    targets = scenario.root.parent / "targets.yaml"
    write_targets(targets, [scenario])
    monkeypatch.setenv("AIRLOCK_TARGETS_FILE", str(targets))
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOCK_IT_MYSQL", connection_uri_for_airflow())
    env = scenario.env("production")
    env.driver.start(scenario.platform.old)
    seed(scenario, "production")
    try:
        yield env
    finally:
        env.driver.stop()
        for db in scenario.databases.values():
            db.drop()


def start_and_seed(scenario: Scenario) -> None:
    """Both environments on the old version, seeded by the old version's own client; the two at
    once, since most of it is waiting for a server to start."""
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda env_name: start_and_seed_one(scenario, env_name), ENVS))


def start_and_seed_one(scenario: Scenario, env_name: str) -> None:
    if scenario.auth:
        platform_logins.prepare(scenario.platform.name, scenario.auth, scenario.root / env_name)
    env = scenario.env(env_name, login=False)
    if scenario.platform.name == "sematic":  # its server does not create its schema
        (scenario.root / env_name).mkdir(parents=True, exist_ok=True)
        env.driver.launch_migration(scenario.platform.old)
    env.driver.start(scenario.platform.old)
    if scenario.auth:
        scratch = scenario.root / env_name / "admin"
        scratch.mkdir(parents=True, exist_ok=True)
        credential = platform_logins.create_login(
            scenario.platform.name, scenario.auth, env.config.url, env.driver.venv_path(scenario.platform.old),
            scratch, env.database.sqlalchemy_uri())
        platform_logins.set_connection(platform_logins.conn_id_for(scenario.name, env_name), credential)
        platform_logins.cheap_password_hashes(scenario.platform.name, scenario.auth, scenario.root / env_name)
    seed(scenario, env_name)


def release(scenario: Scenario, env: str) -> HelmRelease:
    return scenario.env(env).driver.release


def install_and_seed(scenario: Scenario, helm: HelmClient) -> None:
    """Each environment's release at revision 1 with the old image, its server seeded by the old client."""
    for env in ENVS:
        helm.upgrade(release(scenario, env), release_values(release(scenario, env), OLD), "install", install=True)
        scenario.env(env).adapter.wait_healthy(180)
        seed(scenario, env)


def stop_servers(*scenarios: Scenario) -> None:
    """Stop the servers (for Helm scenarios the test's kubelet stops them), all at once (each server
    takes a moment to exit)."""
    def stop(scenario: Scenario, env_name: str) -> None:
        if scenario.driver == "process":
            scenario.env(env_name, login=False).driver.stop()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda args: stop(*args), [(s, env) for s in scenarios for env in ENVS]))


def stop_all(*scenarios: Scenario) -> None:
    """Stop the servers and drop the databases."""
    stop_servers(*scenarios)
    for scenario in scenarios:
        for db in scenario.databases.values():
            db.drop()


class GateAnswerer(threading.Thread):
    """Plays on-call and the approver: answers each pending gate through the REST API, a few
    seconds after it appears (like a person reading it). `answers` maps a gate's task id to its
    answer (or to answers tried in turn until one is taken); the UAT approval ("uat.approval") gets
    `answer`."""

    READ_SECONDS = 3
    ERRORS_IN_A_ROW = 30
    """A look that fails (the metadata database locked, the API app busy) is tried again a second
    later; only this many failures in a row end the answerer (its errors say why)."""

    def __init__(self, dag_id: str, answer: str | None, answers: dict[str, str] | None = None,
                 timeout: float = 900):
        super().__init__(daemon=True)
        self.dag_id, self.timeout = dag_id, timeout
        self.answers = {**({"uat.approval": answer} if answer else {}), **(answers or {})}
        self.responses: dict[str, dict] = {}
        self.bodies: dict[str, str] = {}
        self.options: dict[str, list[str]] = {}
        self.tried: dict[str, list[tuple[str, int]]] = {}
        """Each answer given to a gate, with the API's status (a refused option, then the one taken)."""
        self.stop_event = threading.Event()
        self.errors: list[str] = []

    @property
    def response(self) -> dict | None:
        return self.responses.get("uat.approval")

    @property
    def body(self) -> str:
        return self.bodies.get("uat.approval", "")

    def run(self) -> None:
        deadline, first_seen, client, in_a_row = time.monotonic() + self.timeout, {}, None, 0
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            try:
                if any(self.due(task_id, first_seen) for task_id in self.pending_gates()):
                    client = client or self.api_client()
                    self.read_and_answer(client, first_seen)
                in_a_row = 0
            except Exception as error:  # a thread that died here would leave its run waiting on a gate for good
                in_a_row += 1
                self.errors.append(f"{type(error).__name__}: {error}")
                print(f"gate answerer of {self.dag_id}: {self.errors[-1]} ({in_a_row} in a row)", flush=True)
                if in_a_row >= self.ERRORS_IN_A_ROW:
                    raise
            time.sleep(1)

    def due(self, task_id: str, first_seen: dict[str, float]) -> bool:
        """A pending gate not read yet, or read long enough ago to answer now."""
        if task_id in self.responses:
            return False
        return task_id not in self.bodies or (
            task_id in self.answers and time.monotonic() - first_seen[task_id] >= self.READ_SECONDS)

    def pending_gates(self) -> list[str]:
        """The DAG's gates waiting for an answer, read straight from the metadata database: cheap enough
        to ask every second, where a request through the API app costs this process a good part of
        a core; the API is called when there is something to read or answer."""
        from airflow.models import TaskInstance
        from airflow.models.hitl import HITLDetail
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            return list(session.scalars(
                select(TaskInstance.task_id).join(HITLDetail, HITLDetail.ti_id == TaskInstance.id)
                .where(TaskInstance.dag_id == self.dag_id, HITLDetail.responded_at.is_(None))))

    @staticmethod
    def api_client():
        from airflow.api_fastapi.app import create_app
        from fastapi.testclient import TestClient

        return TestClient(create_app("core"))

    def read_and_answer(self, client, first_seen: dict[str, float]) -> None:
        """Through the REST API, as the UI does: read each pending gate, and answer the ones due."""
        pending = client.get(f"/api/v2/dags/{self.dag_id}/dagRuns/~/hitlDetails").json()
        for detail in pending.get("hitl_details", []):
            ti = detail["task_instance"]
            task_id = ti["task_id"]
            if detail.get("response_received") is not False or task_id in self.responses:
                continue
            self.bodies[task_id] = detail.get("body") or ""
            seen = first_seen.setdefault(task_id, time.monotonic())
            if task_id not in self.answers or time.monotonic() - seen < self.READ_SECONDS:
                continue
            self.options[task_id] = detail.get("options") or []
            given = self.answers[task_id]
            for option in given if isinstance(given, list) else [given]:  # in turn, until one is taken
                answer = client.patch(
                    f"/api/v2/dags/{self.dag_id}/dagRuns/{ti['dag_run_id']}/taskInstances/"
                    f"{task_id}/{ti['map_index']}/hitlDetails",
                    json={"chosen_options": [option], "params_input": {}})
                self.tried.setdefault(task_id, []).append((option, answer.status_code))
                if answer.status_code == 200:
                    break
            self.responses[task_id] = {"status": answer.status_code, "body": answer.json(), "task_id": task_id}


def run_upgrade(dag_id: str, targets_file: Path, conf: dict, answer: str | None = "Approve",
                answers: dict[str, str] | None = None):
    """Trigger the DAG like an operator would (with params) and answer its gates; return the run."""
    from airlock.dag_factory import build_upgrade_dags

    return run_dag(build_upgrade_dags(load_targets(str(targets_file)))[dag_id], conf, answer, answers)


def run_rollback(target: str, targets_file: Path, conf: dict, answer: str | None = "Approve"):
    """Trigger on-call's rollback DAG and answer its confirmation; return the run and the answerer."""
    from airlock.rollback_dag import build_rollback_dags

    dag = build_rollback_dags(load_targets(str(targets_file)))[f"airlock_rollback__{target}"]
    return run_dag(dag, conf, None, {"confirm": answer} if answer else None)


def run_dag(dag, conf: dict, answer: str | None, answers: dict[str, str] | None):
    """Run a DAG under dag.test() while a GateAnswerer answers its gates."""
    dag_id = dag.dag_id
    answerer = GateAnswerer(dag_id, answer, answers)
    answerer.start()
    try:
        run = dag.test(run_conf=conf)
    finally:
        answerer.stop_event.set()
        answerer.join(timeout=10)
    return run, answerer


def task_states(run) -> dict[str, str]:
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        dag_run = session.query(DagRun).filter_by(dag_id=run.dag_id, run_id=run.run_id).one()
        return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances(session=session)}


def task_state(dag_id: str, task_id: str) -> str | None:
    """The state of a task of the DAG's latest run, read while the run is going."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=dag_id, task_id=task_id).first()
        return str(ti.state) if ti and ti.state else None


def xcom(run, task_id: str, key: str = "return_value"):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id=run.dag_id, run_id=run.run_id, task_id=task_id,
                                                 key=key).one_or_none()
        return XComModel.deserialize_value(row) if row else None


def fingerprints(scenario: Scenario) -> dict[str, str]:
    return {env: scenario.env(env).adapter.fingerprint().digest for env in ("staging", "production")}


def served(scenario: Scenario, env: str) -> str:
    return scenario.env(env).adapter.server_version()


def last_record(scenario: Scenario) -> dict:
    return upgrade_log.read(scenario.root / "backups")[-1]


WATCHING_STATES = ("running", "deferred", "queued")
"""A task at work, or waiting in its trigger (which dag.test() runs inline, showing the task as queued)."""


def crash_server_while(dag_id: str, task_id: str, pid_of: Callable[[], int | None],
                       before: Callable[[], object] = lambda: None,
                       after: Callable[[], object] = lambda: None) -> list[int]:
    """Kill a server (SIGKILL, as a crash would) once `task_id` is running or waiting in a trigger
    (dag.test() shows a task whose trigger it runs inline as queued); `pid_of` finds its process then.
    `before` runs just before the kill (a user writing), `after` just after (a pod restarting,
    something else taking the port). The returned list gets the pid when it happened."""
    crashed: list[int] = []

    def crash():
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not crashed:
            if task_state(dag_id, task_id) in WATCHING_STATES:
                before()
                pid = pid_of()
                os.killpg(pid, signal.SIGKILL)
                crashed.append(pid)
                after()
            time.sleep(0.5)

    threading.Thread(target=crash, daemon=True).start()
    return crashed


def start_training_run(scenario: Scenario) -> str:
    """A run that is still going on staging: the drain must not stop the server under it."""
    url = scenario.env("staging").config.url
    experiment = request_json("POST", f"{url}/api/2.0/mlflow/experiments/search",
                              {"max_results": 10})["experiments"][0]["experiment_id"]
    return request_json("POST", f"{url}/api/2.0/mlflow/runs/create",
                        {"experiment_id": experiment, "start_time": int(time.time() * 1000),
                         "run_name": "nightly-retrain"})["run"]["info"]["run_id"]


def run_status(scenario: Scenario, run_id: str) -> str:
    url = scenario.env("staging").config.url
    return request_json("GET", f"{url}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]["info"]["status"]


def finish_run(url: str, run_id: str) -> None:
    request_json("POST", f"{url}/api/2.0/mlflow/runs/update", {"run_id": run_id, "status": "FINISHED"})


TEAM_DAG_FILE = """
from datetime import datetime
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

for dag_id in ("team_training", "team_backfill"):
    with DAG(dag_id, schedule="@daily", start_date=datetime(2026, 1, 1), catchup=False):
        EmptyOperator(task_id="train")
"""
"""A team's DAGs, which an upgrade pauses while its server is down (team_backfill: paused by its team)."""


def log_a_run(url: str) -> str:
    """A data scientist logging a run with a metric (through the REST API any client uses)."""
    adapter = MlflowAdapter(url)
    experiment_id = adapter.experiments()[0]["experiment_id"]
    run = request_json("POST", f"{url}/api/2.0/mlflow/runs/create",
                       {"experiment_id": experiment_id, "start_time": int(time.time() * 1000)})["run"]["info"]
    request_json("POST", f"{url}/api/2.0/mlflow/runs/log-metric",
                 {"run_id": run["run_id"], "key": "after_upgrade", "value": 0.93, "timestamp": 1, "step": 0})
    return run["run_id"]
