"""A whole upgrade on a distributed Airflow (the tests' topology, tests/distributed.py: CeleryExecutor with
two workers, a separate scheduler, dag-processor and triggerer, PostgreSQL and Redis), measured from its
task instances, on an MLflow 2.16.2 → 3.17.2 process target, or (`--driver helm`) a Helm release on a real
kube-apiserver whose Deployments and Jobs the tests' kubelet runs (tests/kubelet.py):

- orchestration overhead: the run's wall time against the work its tasks did (the sum of their running
  times, the waits left out): what scheduling, queueing through Redis and task start-up cost;
- worker slot-seconds while waiting: for each wait (both drains, the approval gate, the production slot,
  the post-upgrade watch of --watch-seconds; for Helm also the migration Jobs and the rollouts; and the
  production slot's hold, deferred beside the whole production phase), the time it was in
  state `running` (holding a worker slot) against the time it waited deferred or awaiting input,
  sampled every second. A training run keeps staging's drain waiting for --drain-seconds; a person
  answers the gate --gate-seconds after it opens;
- the steps that work, then wait (both environments' stop and start: the server stopping, the new one
  answering; for Helm the replicas gone; with --roll-back the rollback: the old server answering again):
  their running time is their work, their waits are deferred, shown side by side.

Last line: `overhead ratio X.Xx ((wall - waits)/work), N slot-seconds held while waiting W s`.

    .venv/bin/python bench/distributed_run.py [--driver process|helm] [--drain-seconds 30] [--gate-seconds 30]
                                              [--watch-seconds 30] [--roll-back]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from distributed import (  # noqa: E402
    API_PORT,
    SERVERS_QUEUE,
    DistributedAirflow,
    answer,
    task_instances,
    unpause_when_parsed,
)
from harness import (  # noqa: E402
    CONN_ID,
    ENVS,
    KUBE_CONN_ID,
    NEW,
    OLD,
    finish_run,
    install_and_seed,
    make_scenario,
    start_and_seed,
    start_training_run,
    stop_all,
    write_targets,
)
from services import connection_uri_for_airflow  # noqa: E402

DAG_ID = "airlock_upgrade__bench_distributed"
API_CONN_ID = "airlock_bench_airflow_api"
WAITS = ("staging_upgrade.drain", "uat.approval", "production_slot.held", "production_upgrade.drain",
         "production_upgrade.watch")
HOLD = "production_slot.hold"
"""Deferred beside the whole production phase (the platform's pool slot): not one more wait in the sequence."""
HELM_WAITS = tuple(f"{env}_upgrade.{wait}" for env in ENVS for wait in ("migration_job", "rollout"))
WAITING_STEPS = tuple(f"{env}_upgrade.{step}" for env in ENVS for step in ("stop", "start"))
ROLLBACK = "conclude.rollback_production"
WAITING_STATES = ("deferred", "awaiting_input")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", choices=("process", "helm"), default="process")
    parser.add_argument("--drain-seconds", type=float, default=30)
    parser.add_argument("--gate-seconds", type=float, default=30)
    parser.add_argument("--watch-seconds", type=int, default=30)
    parser.add_argument("--roll-back", action="store_true",
                        help="crash production's new server during the watch: it stays down, so the run rolls back "
                             "alone (its stop, restore, start and health waits are measured too; process driver)")
    args = parser.parse_args()
    if args.roll_back and args.driver != "process":
        parser.error("--roll-back crashes a local server: use it with --driver process")
    return args


def world(root: Path, driver: str, kube_api=None):
    """The target (process: servers on worker-a's queue; helm: releases on `kube_api`) and the
    topology, nothing started yet."""
    from airlock.drivers.process import ensure_platform_venv
    from airlock.platforms.mlflow import MlflowAdapter

    venvs = [ensure_platform_venv(MlflowAdapter("http://unused"), version) for version in (OLD, NEW)]
    password = secrets.token_hex(16)
    drain = {"drain": {"timeout_minutes": 10, "poll_interval_seconds": 2, "airflow_api_conn_id": API_CONN_ID}}
    scenario = (make_scenario("bench_distributed", root, 5274, 5275, settings={"queue": SERVERS_QUEUE, **drain})
                if driver == "process" else
                make_scenario("bench_distributed", root, 5274, 5275, driver="helm", settings=drain))
    targets = root / "targets.yaml"
    write_targets(targets, [scenario])
    connections = {f"AIRFLOW_CONN_{CONN_ID.upper()}": connection_uri_for_airflow(),
                   f"AIRFLOW_CONN_{API_CONN_ID.upper()}": json.dumps({  # preflight makes sure of the pool
                       "conn_type": "http", "host": "127.0.0.1", "port": API_PORT, "login": "admin",
                       "password": password})}
    if kube_api:
        connections[f"AIRFLOW_CONN_{KUBE_CONN_ID.upper()}"] = json.dumps(
            {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kube_api.kubeconfig)}})
    os.environ.update({"AIRLOCK_TARGETS_FILE": str(targets), **connections})
    airflow = DistributedAirflow(root / "airflow", passwords={"admin": password}, extra_env={
        "AIRLOCK_TARGETS_FILE": str(targets), "AIRLOCK_DATA_DIR": str(root / "data"),
        "AIRLOCK_VENV_ROOT": str(venvs[0].parent),
        "AIRFLOW_VAR_AIRLOCK_BACKUP_SIGNING_KEY": secrets.token_hex(32), **connections})
    return scenario, airflow


@contextlib.contextmanager
def kubernetes(driver: str):
    """For --driver helm: a real kube-apiserver (shared/envtest), nothing for a process target."""
    if driver != "helm":
        yield None
        return
    from kube import envtest_assets, start_api_server

    assets = envtest_assets()
    if assets is None:
        raise SystemExit("--driver helm needs kube-apiserver and etcd: run ../shared/envtest/build.sh")
    server = start_api_server(assets)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def helm_releases(scenario, kube_api):
    """The releases' namespaces, the kubelet that runs them, and both releases installed and seeded."""
    from airlock.helm import SdkHelm
    from kubelet import ProcessKubelet
    from kubernetes import client, config

    admin = client.CoreV1Api(config.new_client_from_config(config_file=str(kube_api.kubeconfig)))
    for env in ENVS:
        admin.create_namespace({"metadata": {"name": scenario.namespace(env)}})
    kubelet = ProcessKubelet(kube_api, {scenario.namespace(env): scenario.env(env) for env in ENVS})
    kubelet.start()
    try:
        install_and_seed(scenario, SdkHelm(str(kube_api.kubeconfig)))
        yield kubelet
    finally:
        kubelet.stop()


def follow(airflow: DistributedAirflow, run_id: str, finish_training, gate_seconds: float,
           waits: tuple[str, ...], on_watch) -> dict[str, dict]:
    """Sample the run's task states every second until it ends: per wait, seconds spent running
    (a held slot) and seconds spent waiting deferred or for input. `on_watch` runs once when the
    post-upgrade watch is first seen deferred."""
    spent = {task: {"running": 0.0, "waiting": 0.0} for task in waits}
    opened: dict[str, float] = {}
    last = time.monotonic()
    while airflow.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"] not in ("success", "failed"):
        time.sleep(1)
        now, states = time.monotonic(), {ti["task_id"]: ti["state"] for ti in task_instances(airflow, DAG_ID, run_id)}
        for task in waits:
            state = states.get(task)
            if state == "running":
                spent[task]["running"] += now - last
            elif state in WAITING_STATES:
                spent[task]["waiting"] += now - last
                opened.setdefault(task, now)
        if "staging_upgrade.drain" in opened:
            finish_training(now - opened["staging_upgrade.drain"])
        if states.get("uat.approval") == "awaiting_input" and now - opened["uat.approval"] >= gate_seconds:
            answer(airflow, DAG_ID, run_id, "uat.approval", "Approve")
        if "production_upgrade.watch" in opened and on_watch:
            on_watch()
            on_watch = None
        last = now
    return spent


def seconds(start: str | None, end: str | None) -> float:
    if not start or not end:
        return 0.0
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def report(airflow: DistributedAirflow, run_id: str, spent: dict[str, dict]) -> None:
    run = airflow.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
    tis = task_instances(airflow, DAG_ID, run_id)
    steps = {task: spent.pop(task) for task in (*WAITING_STEPS, ROLLBACK) if task in spent}
    hold = spent.pop(HOLD)
    work = {ti["task_id"]: ti["duration"] or 0.0 for ti in tis
            if ti["task_id"] not in spent and ti["task_id"] != HOLD and ti["duration"]}
    wall, total_work = seconds(run["start_date"], run["end_date"]), sum(work.values())
    waited = sum(s["waiting"] for s in [*spent.values(), *steps.values()])
    held = sum(s["running"] for s in spent.values()) + hold["running"]
    print(f"run {run_id}: {run['state']}, {len(tis)} task instances")
    print("the ten longest tasks (work):")
    for task, took in sorted(work.items(), key=lambda item: -item[1])[:10]:
        print(f"  {took:7.1f} s  {task}")
    print(f"wall time                {wall:7.1f} s")
    print(f"work (sum of tasks)      {total_work:7.1f} s")
    print(f"waits (deferred/input)   {waited:7.1f} s")
    print(f"overhead (wall - work - waits) {wall - total_work - waited:7.1f} s")
    for task, s in spent.items():
        print(f"  {task:28} held a worker slot {s['running']:5.1f} s, waited without one {s['waiting']:6.1f} s")
    print(f"  {HOLD:28} held a worker slot {hold['running']:5.1f} s, held the pool's slot deferred "
          f"{hold['waiting']:6.1f} s (beside the production phase)")
    print("steps that work, then hand their wait over (running = their work):")
    for task, s in steps.items():
        if not (s["running"] or s["waiting"]):
            continue  # not run (the rollback of a run that did not roll back)
        print(f"  {task:28} ran {s['running']:5.1f} s, waited deferred {s['waiting']:6.1f} s")
    print(f"overhead ratio {(wall - waited) / total_work:.1f}x ((wall - waits)/work), {held:.0f} slot-seconds "
          f"held while waiting {waited:.0f} s")


def main() -> None:
    args = arguments()
    root = Path(tempfile.mkdtemp(prefix="airlock-bench-distributed-"))
    with kubernetes(args.driver) as kube_api:
        scenario, airflow = world(root, args.driver, kube_api)
        airflow.start()
        try:
            with helm_releases(scenario, kube_api) if kube_api else contextlib.nullcontext():
                if not kube_api:
                    start_and_seed(scenario)
                measure(airflow, scenario, args,
                        WAITS + (HELM_WAITS if kube_api else ()) + WAITING_STEPS + (ROLLBACK, HOLD))
        finally:
            airflow.stop()
            stop_all(scenario)


def measure(airflow: DistributedAirflow, scenario, args: argparse.Namespace, waits: tuple[str, ...]) -> None:
    """One upgrade run, a training run holding staging's drain, the gate answered after a while."""
    url = scenario.env("staging").config.url
    training, finished = start_training_run(scenario), []

    def finish_training(waited: float) -> None:
        if waited >= args.drain_seconds and not finished:
            finish_run(url, training)
            finished.append(training)

    def crash_production() -> None:
        production = scenario.env("production")
        os.killpg(production.driver.running_pid(), signal.SIGKILL)
        print("production's new server crashed during the watch: the run rolls back", flush=True)

    unpause_when_parsed(airflow, DAG_ID)
    run_id = airflow.call("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {
        "target_version": NEW, "watch_seconds": args.watch_seconds}})["dag_run_id"]
    report(airflow, run_id, follow(airflow, run_id, finish_training, args.gate_seconds, waits,
                                   crash_production if args.roll_back else None))


if __name__ == "__main__":
    main()
