"""A distributed Airflow, started by the tests: PostgreSQL as the metadata database, Redis as the Celery
broker, and `airflow api-server`, `scheduler`, `dag-processor`, `triggerer` and two `celery worker`
processes, each with its own AIRFLOW_HOME, HOME and working directory (no local directory shared), as
on separate machines. `COMPONENTS` and `EXECUTOR_SETTINGS` are also what docker-compose.yaml runs
(tests/test_compose.py holds the two together).
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from airlock.drivers.process import port_open
from airlock.http import ServerError, request_json, request_text

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
COMPONENTS = {
    "api-server": ["api-server"],
    "scheduler": ["scheduler"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer"],
    "worker": ["celery", "worker"],
}
"""`airflow <arguments>` of each component (the official image's entrypoint is `airflow`)."""
EXECUTOR_SETTINGS = {
    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
    "AIRFLOW__CELERY__BROKER_URL": "redis://{redis}/0",
    "AIRFLOW__CELERY__RESULT_BACKEND": "db+postgresql+psycopg2://{postgres}",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://{postgres}",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://{api}/execution/",
}
"""The settings that make it a Celery deployment; `{…}` are each deployment's addresses."""
WORKERS = ("worker-a", "worker-b")
SERVERS_QUEUE = "airlock-servers-a"
"""The queue of the machine a process target's servers live on: only worker-a takes it."""
WORKER_QUEUES = {"worker-a": f"default,{SERVERS_QUEUE}", "worker-b": "default"}
USERS = ("admin", "bob")
"""Both Airflow admins; only admin approves the targets' upgrades (bob is refused at the gate)."""
DATABASE = "airlock_distributed_airflow"
API_PORT, REDIS_PORT, LOG_PORTS = 5270, 5271, {"worker-a": 5272, "worker-b": 5273}


@dataclass
class DistributedAirflow:
    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    """What every component sees besides Airflow's settings (targets file, connections, variables)."""
    dags_folder: Path = REPO / "dags"
    passwords: dict[str, str] = field(default_factory=dict)
    """Users' passwords set in advance (e.g. for a connection to this Airflow's API); others are generated."""
    remote_logs: tuple[str, str] | None = None
    """(s3://bucket/prefix, AWS connection id): task logs go there, as on a cluster, where the API server
    cannot reach a worker's log server by its hostname."""
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self):
        self.secrets = {"AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                        "AIRFLOW__CORE__FERNET_KEY": fernet_key()}

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{API_PORT}"

    def settings(self) -> dict[str, str]:
        addresses = {"redis": f"127.0.0.1:{REDIS_PORT}", "postgres": f"postgres@127.0.0.1:5432/{DATABASE}",
                     "api": f"127.0.0.1:{API_PORT}"}
        return {**{name: value.format(**addresses) for name, value in EXECUTOR_SETTINGS.items()}, **self.secrets,
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "distributed_hostname.hostname",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{user}:admin" for user in USERS),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.root / "passwords.json"),
                "AIRFLOW__API__PORT": str(API_PORT), "AIRFLOW__API__BASE_URL": self.api_url,
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                # parsed once: the targets file is written before the start, and a re-parse every 30 s
                # (the default) takes CPU that the tests' servers need on a 2-core machine
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
                "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO / "include")]), **self.logging()}

    def logging(self) -> dict[str, str]:
        if self.remote_logs is None:
            return {}
        folder, conn_id = self.remote_logs
        return {"AIRFLOW__LOGGING__REMOTE_LOGGING": "True", "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": folder,
                "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": conn_id}

    def env_of(self, name: str) -> dict[str, str]:
        """A component's environment: its own home, as if on its own machine."""
        home = self.root / name
        (home / "airflow").mkdir(parents=True, exist_ok=True)
        worker = {"AIRLOCK_TEST_HOSTNAME": name,
                  "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(LOG_PORTS[name])} if name in WORKERS else {}
        return {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "LANG": "C.UTF-8",
                "HOME": str(home), "AIRFLOW_HOME": str(home / "airflow"), **self.settings(), **worker,
                **self.extra_env}

    def argv_of(self, name: str) -> list[str]:
        component = "worker" if name in WORKERS else name
        extra = ["--celery-hostname", f"{name}@%h", "--queues", WORKER_QUEUES[name]] if name in WORKERS else []
        return [str(Path(sys.executable).with_name("airflow")), *COMPONENTS[component], *extra]

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Every component up, or none: a failed start stops what it started (a Redis or a worker left
        behind would take the next run's tasks)."""
        taken = [port for port in (API_PORT, REDIS_PORT, *LOG_PORTS.values()) if port_open("127.0.0.1", port)]
        assert not taken, (f"ports {taken} are in use: a distributed Airflow left by an earlier run? Stop it "
                           "(its Redis shows as `redis-server 127.0.0.1:5271`) and run again")
        try:
            self.start_all()
        except BaseException:
            self.stop()
            raise

    def start_all(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        if self.passwords:
            (self.root / "passwords.json").write_text(json.dumps(self.passwords))
        fresh_database()
        self.processes["redis"] = subprocess.Popen(
            ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root)], stdout=self.log("redis"), stderr=subprocess.STDOUT, start_new_session=True)
        migrate = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
                                 env=self.env_of("init"), cwd=self.root, capture_output=True, text=True)
        assert migrate.returncode == 0, migrate.stderr[-3000:]
        for name in ("api-server", "scheduler", "dag-processor", "triggerer", *WORKERS):
            self.start_component(name)
        self.wait_until_ready()

    def log(self, name: str):
        return open(self.root / f"{name}.log", "ab")  # lives as long as the process

    def start_component(self, name: str) -> None:
        cwd = self.root / name
        cwd.mkdir(parents=True, exist_ok=True)
        self.processes[name] = subprocess.Popen(self.argv_of(name), env=self.env_of(name), cwd=cwd,
                                                stdout=self.log(name), stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def kill(self, name: str) -> None:
        """SIGKILL a component and everything it started, as a crashed machine would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait(timeout=30)

    def wait_until_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [name for name, process in self.processes.items() if process.poll() is not None]
            assert not dead, f"{dead} exited; see {self.root}/<name>.log"
            try:
                request_text(f"{self.api_url}/api/v2/monitor/health", timeout=2)
                if len(self.workers_seen()) == len(WORKERS):
                    return
            except ServerError:
                pass
            time.sleep(2)
        raise AssertionError(f"the distributed Airflow did not come up within {timeout:.0f} s; logs in {self.root}")

    def workers_seen(self) -> list[str]:
        """Celery workers that answer a ping through the broker."""
        result = subprocess.run(
            [str(Path(sys.executable).with_name("celery")), "--app",
             "airflow.providers.celery.executors.celery_executor.app", "inspect", "ping", "--timeout", "3"],
            env=self.env_of("init"), capture_output=True, text=True, cwd=self.root)
        return [name for name in WORKERS if f"{name}@" in result.stdout]

    def stop(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)

    # -- REST ------------------------------------------------------------------------------------
    def token(self, user: str = "admin") -> str:
        passwords = json.loads((self.root / "passwords.json").read_text())
        return request_json("POST", f"{self.api_url}/auth/token",
                            {"username": user, "password": passwords[user]})["access_token"]

    def call(self, method: str, path: str, body: dict | None = None, user: str = "admin"):
        return request_json(method, f"{self.api_url}/api/v2{path}", body,
                            headers={"Authorization": f"Bearer {self.token(user)}"})


def fresh_database() -> None:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=5)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        cursor.execute(f"CREATE DATABASE {DATABASE}")
    conn.close()


def fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


@dataclass
class Follow:
    """A run to follow to its end: the gates to answer (`answers`: task id → option, like a person
    who reads the body first) and what to do once a task is first seen in a state (`on`: (task id,
    state) → action, each done once: a fault injected at the right moment). `seen` keeps every
    (task id, state) it saw (every 2 s: a state held for less may be missed)."""

    dag_id: str
    run_id: str
    answers: dict[str, str] = field(default_factory=dict)
    on: dict[tuple[str, str], Callable[[], object]] = field(default_factory=dict)
    first_seen: dict[str, float] = field(default_factory=dict)
    done: set = field(default_factory=set)
    seen: set = field(default_factory=set)
    now: dict[str, str | None] = field(default_factory=dict)

    def where(self) -> str:
        """Where an unfinished run stands: its tasks neither done nor yet to start, by state."""
        going = {task: state for task, state in self.now.items() if state not in ("success", "skipped", None)}
        return f"{self.dag_id} run {self.run_id} at {going or 'no task started'}"

    def step(self, airflow: DistributedAirflow, read_seconds: float) -> dict | None:
        """The finished run, or None after acting on what its tasks show now."""
        run = airflow.call("GET", f"/dags/{self.dag_id}/dagRuns/{self.run_id}")
        if run["state"] in ("success", "failed"):
            return run
        tis = task_instances(airflow, self.dag_id, self.run_id)
        self.now = {ti["task_id"]: ti["state"] for ti in tis}
        for task_id, state in ((ti["task_id"], ti["state"]) for ti in tis):
            seen = (task_id, state)
            self.seen.add(seen)
            if seen in self.on and seen not in self.done:
                self.done.add(seen)
                self.on[seen]()
            waiting = state == "awaiting_input" and task_id in self.answers and task_id not in self.done
            if waiting and time.monotonic() - self.first_seen.setdefault(task_id, time.monotonic()) >= read_seconds:
                answer(airflow, self.dag_id, self.run_id, task_id, self.answers[task_id])
                self.done.add(task_id)
        return None


def follow_runs(airflow: DistributedAirflow, runs: dict[str, Follow], timeout: float,
                read_seconds: float = 8, stalled: float = 600) -> dict[str, dict]:
    """Follow several runs at once to their ends; each finished run by name. They fail when they
    are not done within `timeout`, or sooner when no task of theirs changed state for `stalled`
    seconds (a hang, told apart from a machine that is merely slow), saying where each one stands."""
    start = progress = time.monotonic()
    finished: dict[str, dict] = {}
    seen = 0
    while (now := time.monotonic()) - start < timeout and now - progress < stalled:
        for name, follow in runs.items():
            if name not in finished and (run := follow.step(airflow, read_seconds)):
                finished[name] = run
        if len(finished) == len(runs):
            return finished
        if (seen_now := sum(len(follow.seen) for follow in runs.values()) + len(finished)) > seen:
            seen, progress = seen_now, time.monotonic()
        time.sleep(2)
    why = (f"no task changed state for {stalled:.0f} s" if time.monotonic() - progress >= stalled
           else f"not done within {timeout:.0f} s")
    left = "; ".join(follow.where() for name, follow in runs.items() if name not in finished)
    raise AssertionError(f"{why}: {left}")


def wait_for_state(airflow: DistributedAirflow, dag_id: str, run_id: str, timeout: float,
                   answers: dict[str, str] | None = None, read_seconds: float = 8,
                   on: dict[tuple[str, str], Callable[[], object]] | None = None) -> dict:
    """Follow one run to its end (see Follow and follow_runs); the finished run."""
    return follow_runs(airflow, {"run": Follow(dag_id, run_id, answers or {}, on or {})}, timeout,
                       read_seconds)["run"]


def answer(airflow: DistributedAirflow, dag_id: str, run_id: str, task_id: str, option: str,
           user: str = "admin") -> None:
    airflow.call("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails",
                 {"chosen_options": [option], "params_input": {}}, user=user)


def task_instances(airflow: DistributedAirflow, dag_id: str, run_id: str) -> list[dict]:
    return airflow.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=200")["task_instances"]


def unpause_when_parsed(airflow: DistributedAirflow, dag_id: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            airflow.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})
            return
        except ServerError:
            time.sleep(3)
    raise AssertionError(f"{dag_id} was not parsed within {timeout:.0f} s")
