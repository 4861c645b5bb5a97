"""The building blocks of Airlock's DAGs: retry policies, a task that runs one step, the rollback task
the upgrade and the on-call rollback DAGs share."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, get_current_context

from airlock import steps
from airlock.config import TargetConfig
from airlock.operators import StepOperator

RETRY = {"retries": 2, "retry_delay": timedelta(seconds=20)}
"""For tasks that only read or that are idempotent by construction."""
NO_RETRY = {"retries": 0}
"""For tasks that change a server: a failure goes straight to the rollback path instead."""
BACKOFF = {"retries": 4, "retry_delay": timedelta(seconds=10), "retry_exponential_backoff": 2.0,
           "max_retry_delay": timedelta(minutes=5)}
"""For the tasks that decide and roll back: idempotent, and the worst time to give up on one
transient error (an S3 blip, a reset from Kubernetes). A verdict (UpgradeError) is never retried."""


def run_id() -> str:
    return get_current_context()["run_id"]


def approvers(target: TargetConfig) -> list[dict]:
    """Who may answer this target's gates; anyone else gets 403 from the API."""
    return [{"id": user, "name": user} for user in target.approvers]


def step_task(task_id: str, call, *inputs, retry: dict = NO_RETRY, **options):
    """A task that runs one step (StepOperator): `call` gets the task's inputs (upstream results);
    its waits go to the triggerer. Returns the task's result, for the tasks that take it as input."""
    return StepOperator(task_id=task_id, call=call, inputs=inputs, **retry, **options).output


def rollback_step(task_id: str, env, **options):
    """The rollback, the same in the upgrade DAG and in the on-call rollback DAG: from the marker, back
    up the database as it is, restore the marker's set, bring its version back, prove the fingerprint."""
    return step_task(task_id, lambda: steps.rollback(env(), run_id()), retry=BACKOFF, **options)


def run_type(dag_run) -> str:
    return str(getattr(dag_run.run_type, "value", dag_run.run_type))


def with_params(dag: DAG, params: dict) -> DAG:
    """Give a built DAG its params. Airflow deep-copies a DAG's params into each task as the task is
    made (most of a parse's time with many targets), yet a run merges the DAG's params with its
    task's own anyway: set once the tasks exist, they are copied never."""
    dag.params = params
    return dag


def dag_settings(tags: list[str], queue: str | None = None, **default_args) -> dict:
    """What every Airlock DAG shares: no catch-up, one run at a time, tagged, owned by airlock, no
    retry unless a task says so, and (for a target with one) its worker queue."""
    return {"start_date": datetime(2026, 1, 1), "catchup": False, "max_active_runs": 1, "tags": ["airlock", *tags],
            "default_args": {"owner": "airlock", **NO_RETRY, **({"queue": queue} if queue else {}), **default_args}}
