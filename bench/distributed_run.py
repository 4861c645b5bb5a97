"""A whole upgrade on a distributed Airflow (the tests' topology, tests/distributed.py: CeleryExecutor with
two workers, a separate scheduler, dag-processor and triggerer, PostgreSQL and Redis), measured from its
task instances, on an MLflow 2.16.2 → 3.17.2 process target:

- orchestration overhead: the run's wall time against the work its tasks did (the sum of their running
  times, the waits left out): what scheduling, queueing through Redis and task start-up cost;
- worker slot-seconds while waiting: for each wait (both drains, the approval gate), the time it was in
  state `running` (holding a worker slot) against the time it waited deferred or awaiting input,
  sampled every second. A training run keeps staging's drain waiting for --drain-seconds; a person
  answers the gate --gate-seconds after it opens.

Last line: `overhead ratio X.Xx ((wall - waits)/work), N slot-seconds held while waiting W s`.

    .venv/bin/python bench/distributed_run.py [--drain-seconds 30] [--gate-seconds 30]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from distributed import SERVERS_QUEUE, DistributedAirflow, answer, task_instances, unpause_when_parsed  # noqa: E402
from harness import (  # noqa: E402
    CONN_ID,
    NEW,
    OLD,
    finish_run,
    make_scenario,
    start_and_seed,
    start_training_run,
    stop_all,
    write_targets,
)
from services import connection_uri_for_airflow  # noqa: E402

DAG_ID = "airlock_upgrade__bench_distributed"
WAITS = ("staging_upgrade.drain", "uat.approval", "production_upgrade.drain")
WAITING_STATES = ("deferred", "awaiting_input")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drain-seconds", type=float, default=30)
    parser.add_argument("--gate-seconds", type=float, default=30)
    return parser.parse_args()


def world(root: Path):
    """The target (servers on worker-a's queue) and the topology, nothing started yet."""
    from airlock.drivers.process import ensure_platform_venv
    from airlock.platforms.mlflow import MlflowAdapter

    venvs = [ensure_platform_venv(MlflowAdapter("http://unused"), version) for version in (OLD, NEW)]
    scenario = make_scenario("bench_distributed", root, 5274, 5275, settings={
        "queue": SERVERS_QUEUE, "drain": {"timeout_minutes": 10, "poll_interval_seconds": 2}})
    targets = root / "targets.yaml"
    write_targets(targets, [scenario])
    connection = {f"AIRFLOW_CONN_{CONN_ID.upper()}": connection_uri_for_airflow()}
    os.environ.update({"AIRLOCK_TARGETS_FILE": str(targets), **connection})
    airflow = DistributedAirflow(root / "airflow", extra_env={
        "AIRLOCK_TARGETS_FILE": str(targets), "AIRLOCK_DATA_DIR": str(root / "data"),
        "AIRLOCK_VENV_ROOT": str(venvs[0].parent),
        "AIRFLOW_VAR_AIRLOCK_BACKUP_SIGNING_KEY": secrets.token_hex(32), **connection})
    return scenario, airflow


def follow(airflow: DistributedAirflow, run_id: str, finish_training, gate_seconds: float) -> dict[str, dict]:
    """Sample the run's task states every second until it ends: per wait, seconds spent running
    (a held slot) and seconds spent waiting deferred or for input."""
    spent = {task: {"running": 0.0, "waiting": 0.0} for task in WAITS}
    opened: dict[str, float] = {}
    last = time.monotonic()
    while airflow.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"] not in ("success", "failed"):
        time.sleep(1)
        now, states = time.monotonic(), {ti["task_id"]: ti["state"] for ti in task_instances(airflow, DAG_ID, run_id)}
        for task in WAITS:
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
        last = now
    return spent


def seconds(start: str | None, end: str | None) -> float:
    if not start or not end:
        return 0.0
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def report(airflow: DistributedAirflow, run_id: str, spent: dict[str, dict]) -> None:
    run = airflow.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
    tis = task_instances(airflow, DAG_ID, run_id)
    work = {ti["task_id"]: ti["duration"] or 0.0 for ti in tis if ti["task_id"] not in WAITS and ti["duration"]}
    wall, total_work = seconds(run["start_date"], run["end_date"]), sum(work.values())
    waited = sum(s["waiting"] for s in spent.values())
    held = sum(s["running"] for s in spent.values())
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
    print(f"overhead ratio {(wall - waited) / total_work:.1f}x ((wall - waits)/work), {held:.0f} slot-seconds "
          f"held while waiting {waited:.0f} s")


def main() -> None:
    args = arguments()
    root = Path(tempfile.mkdtemp(prefix="airlock-bench-distributed-"))
    scenario, airflow = world(root)
    airflow.start()
    try:
        start_and_seed(scenario)
        url = scenario.env("staging").config.url
        training, finished = start_training_run(scenario), []

        def finish_training(waited: float) -> None:
            if waited >= args.drain_seconds and not finished:
                finish_run(url, training)
                finished.append(training)

        unpause_when_parsed(airflow, DAG_ID)
        run_id = airflow.call("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {
            "target_version": NEW, "watch_seconds": 3}})["dag_run_id"]
        report(airflow, run_id, follow(airflow, run_id, finish_training, args.gate_seconds))
    finally:
        airflow.stop()
        stop_all(scenario)


if __name__ == "__main__":
    main()
