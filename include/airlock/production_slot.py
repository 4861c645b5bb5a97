"""The platform's production slot: an Airflow pool (`airlock_<platform>` by default, one slot) caps
how many production upgrades of one platform run at once, whatever target or fleet started them.

Pools cap task instances, not runs: a pool on production's own tasks would let two targets' phases
interleave (one's drain, then the other's, and both servers down at once). So a run takes the slot
with one task, `production_slot.hold`, that stays deferred (a pool with include_deferred counts it)
from the start of its production phase until every other task of the run has ended, and production
starts only once that task holds the slot (`production_slot.held`)."""

from __future__ import annotations

from typing import Any

from airlock.http import ServerError
from airlock.waits import CheckFailed

HOLD, HELD = "production_slot.hold", "production_slot.held"
ENDED = {"success", "failed", "skipped", "upstream_failed", "removed"}
HOLD_DAYS = 60
"""The longest a run holds its slot: past any watch (days at most); the hold then ends on its own."""
WAIT_DAYS = 14
"""The longest a production phase waits for a slot (deferred): another upgrade's watch may last days."""


def task_states(dag_id: str, run_id: str) -> dict[str, str]:
    """Every task's state in one run, asked of Airflow's execution API (works on a worker and in the
    triggerer)."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    states = RuntimeTaskInstance.get_task_states(dag_id=dag_id, run_ids=[run_id]).get(run_id, {})
    return {task_id: str(getattr(state, "value", state)) for task_id, state in states.items()}


def run_over(dag_id: str, run_id: str) -> dict[str, Any]:
    """Done when every task of the run but the holder has ended: the slot is free again."""
    going = sorted(task for task, state in task_states(dag_id, run_id).items() if task != HOLD and state not in ENDED)
    return {"done": not going, "still_going": going[:5]}


def slot_held(dag_id: str, run_id: str, pool: str) -> dict[str, Any]:
    """Done once the holder has the slot (deferred in the pool); a holder that ended without it is a
    verdict."""
    state = task_states(dag_id, run_id).get(HOLD)
    if state in ENDED - {"success"}:
        raise CheckFailed(f"{HOLD} ended {state} without a slot of pool {pool}: production was not started")
    return {"done": state in ("deferred", "success"), "holder": state}


def in_process_run() -> bool:
    """True under dag.test() / `airflow dags test`, which run a DAG's tasks one by one in one process:
    no pool is enforced there, and a hold deferred until the run ends would wait forever."""
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.supervisor import InProcessSupervisorComms

    return isinstance(getattr(task_runner, "SUPERVISOR_COMMS", None), InProcessSupervisorComms)


def ensure_pool(api, name: str, platform: str) -> dict[str, Any]:
    """The pool exists and counts deferred tasks (else the held slot would not count): created with
    one slot when missing, never changed when it exists (raise its slots in Admin → Pools to let
    more upgrades of the platform run at once)."""
    try:
        pool = api.pool(name)
    except ServerError as error:
        if error.status != 404:
            raise
        pool = api.create_pool(name, 1, f"Airlock: production upgrades of {platform} running at once",
                               include_deferred=True)
        return {"pool": name, "slots": pool["slots"], "created": True}
    if not pool.get("include_deferred"):
        raise ValueError(f"Airflow pool {name} does not count deferred tasks, so the slot a production upgrade "
                         "holds while it waits would not count: turn on 'include deferred' for it (Admin → Pools) "
                         "or name another pool in production_pool. Nothing was touched.")
    return {"pool": name, "slots": pool["slots"], "created": False}


def make_sure_of_pool(name: str | None, platform: str, api_conn_id: str) -> dict[str, Any]:
    """Preflight: the pool this target's production takes a slot of exists (created when missing),
    through the Airflow API connection; what stops it says what to do, before anything is touched."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    from airlock.airflow_api import AirflowApi
    from airlock.steps import UpgradeError

    if name is None:
        return {"pool": None, "reason": "production_pool: none (this target's production runs beside any other)"}
    if in_process_run():
        return {"pool": name, "checked": False, "reason": "the DAG runs in one process: no pool is enforced"}
    try:
        api = AirflowApi.from_connection(api_conn_id)
    except AirflowNotFoundException:
        raise UpgradeError(
            f"production_pool {name}: Airlock makes sure the pool exists through the Airflow API connection "
            f"{api_conn_id!r} (drain.airflow_api_conn_id: the API's URL and a user that may read and create pools), "
            f"which does not exist. Add it, or create the pool yourself (`airflow pools set {name} 1 "
            f"'Airlock {platform} production' --include-deferred`) and add the connection, or set production_pool: "
            "none. Nothing was touched.") from None
    try:
        return ensure_pool(api, name, platform)
    except ValueError as error:
        raise UpgradeError(str(error)) from None
