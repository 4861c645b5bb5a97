"""Running the real upgrade DAG in tests: targets on MariaDB, real MLflow servers, a real gate answer.

The DAG runs under `dag.test()`; the approval gate is answered through Airflow's own REST endpoint
(`PATCH .../hitlDetails`, the one the UI uses), called in-process on the metadata DB the run uses.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from airlock.config import load_target
from airlock.databases.mysql import MysqlDatabase
from airlock.demo import SEED_MLFLOW
from airlock.environment import Environment, open_environment
from services import new_database

OLD, NEW = "2.16.2", "3.17.2"
CONN_ID = "airlock_it_mysql"


@dataclass
class Scenario:
    name: str
    root: Path
    ports: dict[str, int]
    databases: dict[str, MysqlDatabase] = field(default_factory=dict)

    def target_entry(self) -> dict:
        envs = {}
        for env, port in self.ports.items():
            envs[env] = {
                "url": f"http://127.0.0.1:{port}",
                "driver": {"kind": "process", "state_dir": str(self.root / env), "start_timeout_seconds": 120},
                "database": {"kind": "mysql", "conn_id": CONN_ID, "database": self.databases[env].params.database},
            }
        return {"platform": "mlflow", "approvers": ["admin"], "upgrade": {"allow_minor_skips": True},
                "backup": {"location": str(self.root / "backups")},
                "drain": {"timeout_minutes": 10, "poll_interval_seconds": 1, "stale_after_minutes": 60},
                "environments": envs}

    def env(self, name: str) -> Environment:
        target = load_target(self.name)
        return open_environment(target, name, resolve=lambda config: self.databases[name])


def write_targets(path: Path, scenarios: list[Scenario]) -> None:
    path.write_text(yaml.safe_dump({"targets": {s.name: s.target_entry() for s in scenarios}}))


def make_scenario(name: str, root: Path, staging_port: int, production_port: int) -> Scenario:
    scenario = Scenario(name, root / name, {"staging": staging_port, "production": production_port})
    for env in scenario.ports:
        scenario.databases[env] = new_database(f"airlock_it_{name}_{env}"[:40])
    return scenario


def start_and_seed(scenario: Scenario) -> None:
    """Both environments on the old version, seeded by the old version's own client."""
    for env_name in ("staging", "production"):
        env = scenario.env(env_name)
        env.driver.start(OLD)
        python = env.driver.venv_path(OLD) / "bin" / "python"
        subprocess.run([str(python), str(SEED_MLFLOW), env.config.url], check=True, capture_output=True)


def stop_all(scenario: Scenario) -> None:
    for env_name in ("staging", "production"):
        scenario.env(env_name).driver.stop()
    for db in scenario.databases.values():
        db.drop()


class GateAnswerer(threading.Thread):
    """Plays the approver: waits for the pending approval, answers it through the REST API."""

    def __init__(self, dag_id: str, answer: str | None, timeout: float = 900):
        super().__init__(daemon=True)
        self.dag_id, self.answer, self.timeout = dag_id, answer, timeout
        self.response: dict | None = None
        self.body = ""
        self.error: str | None = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        from airflow.api_fastapi.app import create_app
        from fastapi.testclient import TestClient

        client = TestClient(create_app("core"))
        deadline = time.monotonic() + self.timeout
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            pending = client.get(f"/api/v2/dags/{self.dag_id}/dagRuns/~/hitlDetails").json()
            waiting = [d for d in pending.get("hitl_details", []) if d.get("response_received") is False]
            if waiting:
                ti, self.body = waiting[0]["task_instance"], waiting[0].get("body") or ""
                answer = client.patch(
                    f"/api/v2/dags/{self.dag_id}/dagRuns/{ti['dag_run_id']}/taskInstances/"
                    f"{ti['task_id']}/{ti['map_index']}/hitlDetails",
                    json={"chosen_options": [self.answer], "params_input": {}})
                self.response = {"status": answer.status_code, "body": answer.json(), "task_id": ti["task_id"]}
                return
            time.sleep(1)
        self.error = "no pending approval appeared"


def run_upgrade(dag_id: str, targets_file: Path, conf: dict, answer: str | None = "Approve"):
    """Trigger the DAG like an operator would (with params) and answer its gate; return the run."""
    from airlock.dag_factory import build_upgrade_dags

    dag = build_upgrade_dags(str(targets_file))[dag_id]
    answerer = GateAnswerer(dag_id, answer)
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
