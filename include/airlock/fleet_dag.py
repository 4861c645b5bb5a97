"""A fleet DAG, `airlock_fleet__<fleet>`: its targets' upgrade DAGs triggered in waves and waited for
in the triggerer (no worker slot); a wave with a failure or a rollback stops the waves after it, and
the report says how each target ended and which were not started."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, BaseOperator, Param, TaskGroup, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from airlock import upgrade_log
from airlock.config import TargetConfig, load_fleets, load_targets
from airlock.config_operations import FleetConfig
from airlock.dag_shards import WHOLE, Shard
from airlock.dag_tasks import dag_settings
from airlock.environment import log_place
from airlock.versions import LATEST_PATCH, MAX_VERSION_LENGTH, TARGET_VERSION_PATTERN

POLL_SECONDS = 30


def child_run_id(fleet: str, run_id: str) -> str:
    """The run id each target's upgrade gets from this fleet run (the report looks it up by it)."""
    return f"fleet_{fleet}__{run_id}"


class PauseOperator(BaseOperator):
    """Waits `minutes` in the triggerer between two waves."""

    def __init__(self, *, minutes: float, **kwargs):
        super().__init__(**kwargs)
        self.minutes = minutes

    def execute(self, context):
        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

        self.defer(trigger=TimeDeltaTrigger(timedelta(minutes=self.minutes)), method_name="execute_complete")

    def execute_complete(self, context, event=None):
        return {"paused_minutes": self.minutes}


def build_fleet_dag(fleet: FleetConfig, source: str | None) -> DAG:
    """The fleet's DAG: wave after wave, each target's upgrade triggered and waited for, then the report."""
    # Imported here: it pulls in airflow.models (about 0.5 s), which a targets file without fleets,
    # the usual case, should not pay at every parse.
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

    with DAG(
        dag_id=fleet.dag_id,
        description=f"Upgrade {', '.join(fleet.targets)} in waves of {fleet.wave_size}",
        doc_md=__doc__,
        schedule=None,
        params={"target_version": Param(
            LATEST_PATCH, type="string", title="Target version", pattern=TARGET_VERSION_PATTERN,
            maxLength=MAX_VERSION_LENGTH, description="Given to every target's upgrade run.")},
        **dag_settings(["fleet", f"fleet:{fleet.name}"]),
    ) as dag:
        previous: list = []
        for number, wave in enumerate(fleet.waves, 1):
            with TaskGroup(f"wave_{number}"):
                started = ([PauseOperator(task_id="pause", minutes=fleet.pause_minutes)]
                           if previous and fleet.pause_minutes else [])
                upgrades = [TriggerDagRunOperator(
                    task_id=target, trigger_dag_id=f"airlock_upgrade__{target}",
                    trigger_run_id=child_run_id(fleet.name, "{{ run_id }}"),
                    conf={"target_version": "{{ params.target_version }}"}, wait_for_completion=True,
                    deferrable=True, poke_interval=POLL_SECONDS, allowed_states=["success"],
                    failed_states=["failed"], fail_when_dag_is_paused=True) for target in wave]
                for pause in started:
                    pause >> upgrades
            for upstream in previous:
                upstream >> (started or upgrades)
            previous = upgrades

        @task(task_id="report", trigger_rule="all_done")
        def report():
            context = get_current_context()
            targets, child = load_targets(source), child_run_id(fleet.name, context["run_id"])
            ended = {name: outcome_of(targets[name], child, started=context["ti"].xcom_pull(
                task_ids=f"wave_{number}.{name}", key="trigger_run_id") is not None)
                for number, wave in enumerate(fleet.waves, 1) for name in wave}
            lines = [f"wave {number}: " + ", ".join(f"{name} {ended[name]}" for name in wave)
                     for number, wave in enumerate(fleet.waves, 1)]
            print("\n".join(lines))
            not_started = [name for name, outcome in ended.items() if outcome == "not started"]
            if any(outcome != "upgraded" for outcome in ended.values()):
                raise AirflowFailException(f"fleet {fleet.name} stopped: {'; '.join(lines)}. Not started: "
                                           f"{', '.join(not_started) or 'none'}")
            return ended

        previous >> report()
    return dag


def outcome_of(target, run_id: str, started: bool) -> str:
    """How the target's upgrade run of this fleet run ended, from its upgrade log; a log that cannot be
    read, or a run that started and left no record, is said as such (see that run), never a traceback."""
    try:
        records = upgrade_log.read(log_place(target))
    except Exception as error:  # a store down must not hide how the other targets ended
        return f"unknown (its upgrade log could not be read: {str(error)[:200]})"
    record = next((r for r in records if r.get("run_id") == run_id), None)
    if record:
        return record["outcome"]
    return f"started, no record in its upgrade log (see its run {run_id})" if started else "not started"


def build_fleet_dags(targets: dict[str, TargetConfig], only: str | None = None, shard: Shard = WHOLE,
                     path: str | None = None) -> dict[str, DAG]:
    """Every fleet's DAG of the targets file at `path` (whose `targets` are read already), keyed by
    dag_id (only `only` when one is named; only the shard's)."""
    return {fleet.dag_id: build_fleet_dag(fleet, path) for fleet in load_fleets(path, set(targets)).values()
            if only in (None, fleet.dag_id) and shard.holds(fleet.name)}
