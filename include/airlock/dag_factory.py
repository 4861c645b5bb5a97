"""Builds one upgrade DAG per target: five phases as task groups, a gate, and finish-or-rollback.

The tasks are thin: each opens the environment it needs and calls one function of
`airlock.steps`. Nothing here touches a server or a database at parse time.
"""

from __future__ import annotations

import functools
import itertools
from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, TaskGroup, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from airlock import steps, upgrade_log
from airlock.approval import approval_body
from airlock.backups import now_iso
from airlock.config import TargetConfig, load_targets
from airlock.environment import open_environment
from airlock.operators import DrainSensor, UpgradeApprovalOperator
from airlock.versions import LATEST_PATCH

RETRY = {"retries": 2, "retry_delay": timedelta(seconds=20)}
"""For tasks that only read or that are idempotent by construction."""
NO_RETRY = {"retries": 0}
"""For tasks that change a server: a failure goes straight to the rollback path instead."""
GOOD_OUTCOMES = ("upgraded", "nothing_to_do", "planned")


def timed(step):
    """Stamp a task's result with when it ran, for the per-phase durations of the upgrade log."""

    @functools.wraps(step)
    def wrapper(*args, **kwargs):
        started = now_iso()
        result = step(*args, **kwargs)
        result = dict(result) if isinstance(result, dict) else {"value": result}
        return {**result, "_started_at": started, "_finished_at": now_iso()}

    return wrapper


def run_id() -> str:
    return get_current_context()["run_id"]


def params(target: TargetConfig) -> dict[str, Param]:
    return {
        "target_version": Param(
            LATEST_PATCH, type="string", title="Target version",
            description=f"The {target.platform} release to upgrade to, e.g. 3.17.2, or 'latest-patch' for the "
                        "newest patch of the running minor release.",
            pattern=r"^(latest-patch|[0-9]+\.[0-9]+\.[0-9]+)$", examples=[LATEST_PATCH]),
        "mode": Param(
            "upgrade", type="string", enum=["upgrade", "plan-only"], title="Mode",
            description="'plan-only' runs preflight, backups and compatibility checks, then stops before "
                        "touching any server."),
        "drain_timeout_minutes": Param(
            target.drain.timeout_minutes, type="number", minimum=0, maximum=7 * 24 * 60,
            title="Drain timeout (minutes)",
            description="How long to wait for running runs on each environment before failing without "
                        "stopping anything."),
        "watch_seconds": Param(
            60, type="integer", minimum=0, maximum=24 * 3600, title="Post-upgrade watch (seconds)",
            description="How long production is watched after the upgrade; a failed check rolls it back."),
    }


def environment_steps(target: TargetConfig, name: str, plan) -> tuple[list, object]:
    """drain → stop → backup → migrate → start → health → smoke → fingerprint, for one environment."""

    def env():
        return open_environment(target, name)

    drain = DrainSensor(
        task_id="drain", platform=target.platform, url=target.environment(name).url, environment=name,
        timeout_minutes="{{ params.drain_timeout_minutes }}",
        poll_interval=target.drain.poll_interval_seconds,
        stale_after_minutes=target.drain.stale_after_minutes, **NO_RETRY)

    @task(task_id="stop", **NO_RETRY)
    @timed
    def stop(plan_: dict):
        return steps.freeze(env(), run_id(), plan_)

    @task(task_id="backup", **RETRY)
    @timed
    def final_backup():
        return steps.final_backup(env(), run_id())

    @task(task_id="migrate", **NO_RETRY)
    @timed
    def migrate():
        return steps.migrate(env(), run_id())

    @task(task_id="start", **NO_RETRY)
    @timed
    def start():
        return steps.start(env(), run_id())

    @task(task_id="health", **RETRY)
    @timed
    def health(plan_: dict):
        return steps.check_health(env(), plan_)

    @task(task_id="smoke", **RETRY)
    @timed
    def smoke():
        return steps.smoke(env())

    @task(task_id="fingerprint", **RETRY)
    @timed
    def fingerprint():
        return steps.verify_fingerprint(env(), run_id())

    chain = [drain, stop(plan), final_backup(), migrate(), start(), health(plan), smoke(), fingerprint()]
    for upstream, downstream in itertools.pairwise(chain):
        upstream >> downstream
    return chain, chain[-1]


def build_upgrade_dag(target: TargetConfig) -> DAG:
    """The upgrade DAG of one target."""
    with DAG(
        dag_id=target.dag_id,
        description=f"Upgrade {target.platform} target {target.name}: {target.description}",
        doc_md=(f"Airlock upgrade of **{target.name}** ({target.platform}). Targets file: `{target.source}`.\n\n"
                "Phases: preflight → backup_and_prepare → compatibility → staging_upgrade → uat → "
                "production_upgrade → conclude (finish or roll back)."),
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        params=params(target),
        tags=["airlock", f"platform:{target.platform}", f"target:{target.name}"],
        default_args={"owner": "airlock", **NO_RETRY},
    ) as dag:
        staging_env = functools.partial(open_environment, target, "staging")
        production_env = functools.partial(open_environment, target, "production")

        with TaskGroup("preflight"):
            @task(task_id="validate", **NO_RETRY)
            @timed
            def validate():
                context = get_current_context()
                return steps.validate(target, [staging_env(), production_env()], context["params"], run_id())

            @task(task_id="plan", **RETRY)
            @timed
            def plan(validated: dict):
                return steps.plan(target, staging_env(), production_env(), validated["requested"])

            planned = plan(validate())

        with TaskGroup("backup_and_prepare"):
            @task(task_id="health_staging", **RETRY)
            @timed
            def health_staging():
                return steps.health(staging_env())

            @task(task_id="health_production", **RETRY)
            @timed
            def health_production():
                return steps.health(production_env())

            @task(task_id="backup_staging", **RETRY)
            @timed
            def backup_staging(plan_: dict):
                return steps.backup(staging_env(), steps.PREPARE, run_id(), plan_["staging"]["current"])

            @task(task_id="backup_production", **RETRY)
            @timed
            def backup_production(plan_: dict):
                return steps.backup(production_env(), steps.PREPARE, run_id(), plan_["production"]["current"])

            @task(task_id="inventory", **RETRY)
            @timed
            def inventory():
                return steps.inventory([staging_env(), production_env()])

            checked = [health_staging(), health_production()]
            staging_backup, production_backup = backup_staging(planned), backup_production(planned)
            running = inventory()
            planned >> checked
            checked >> staging_backup
            checked >> production_backup
            checked >> running

        with TaskGroup("compatibility"):
            @task(task_id="prepare_versions", **RETRY)
            @timed
            def prepare_versions(plan_: dict):
                return steps.prepare_versions(production_env(), plan_)

            @task(task_id="client_compatibility", **RETRY)
            @timed
            def client_compatibility(plan_: dict):
                return steps.client_compatibility(plan_)

            @task.short_circuit(task_id="proceed", ignore_downstream_trigger_rules=False, **NO_RETRY)
            def proceed():
                return get_current_context()["params"]["mode"] == "upgrade"

            prepared_versions = prepare_versions(planned)
            go = proceed()
            [staging_backup, production_backup, running, prepared_versions,
             client_compatibility(planned)] >> go

        with TaskGroup("staging_upgrade"):
            staging_chain, staging_done = environment_steps(target, "staging", planned)

            @task(task_id="rollback_staging", trigger_rule="one_failed", **NO_RETRY)
            @timed
            def rollback_staging():
                return steps.rollback(staging_env(), run_id())

            @task(task_id="finish_staging", **NO_RETRY)
            @timed
            def finish_staging():
                return steps.finish(staging_env(), run_id())

            go >> staging_chain[0]
            staging_chain >> rollback_staging()
            staging_finished = finish_staging()
            staging_done >> staging_finished

        with TaskGroup("uat"):
            @task(task_id="summary", **RETRY)
            def summary(plan_: dict):
                pull = get_current_context()["ti"].xcom_pull
                staging = {**(pull(task_ids="staging_upgrade.health") or {}),
                           "smoke_run_id": (pull(task_ids="staging_upgrade.smoke") or {}).get("run_id"),
                           "fingerprint_equal": (pull(task_ids="staging_upgrade.fingerprint") or {})
                           .get("equal_to_pre_upgrade", False)}
                backups = {"staging (before upgrade)": pull(task_ids="staging_upgrade.backup") or {},
                           "production (phase 1)": pull(task_ids="backup_and_prepare.backup_production") or {}}
                return approval_body(target.name, plan_, staging, backups,
                                     pull(task_ids="backup_and_prepare.inventory") or {})

            approval = UpgradeApprovalOperator(
                task_id="approval",
                subject=f"Upgrade {target.name} production to "
                        "{{ ti.xcom_pull(task_ids='preflight.plan')['to'] }}?",
                body="{{ ti.xcom_pull(task_ids='uat.summary') }}",
                assigned_users=[{"id": user, "name": user} for user in target.approvers] or None,
                response_timeout=timedelta(days=3),
            )
            staging_finished >> summary(planned) >> approval

        with TaskGroup("production_upgrade"):
            production_chain, production_done = environment_steps(target, "production", planned)

            @task(task_id="watch", **NO_RETRY)
            @timed
            def watch(plan_: dict):
                seconds = float(get_current_context()["params"]["watch_seconds"])
                return steps.watch(production_env(), plan_, seconds)

            approval >> production_chain[0]
            watched = watch(planned)
            production_done >> watched

        with TaskGroup("conclude"):
            @task.branch(task_id="decide", trigger_rule="all_done", **NO_RETRY)
            def decide():
                ti = get_current_context()["ti"]
                if steps.marker_of_run(production_env(), run_id()) is None:
                    return "conclude.report"
                if ti.xcom_pull(task_ids="production_upgrade.watch"):
                    return "conclude.finish"
                return "conclude.rollback_production"

            @task(task_id="finish", **NO_RETRY)
            @timed
            def finish():
                return steps.finish(production_env(), run_id())

            @task(task_id="rollback_production", **NO_RETRY)
            @timed
            def rollback_production():
                return steps.rollback(production_env(), run_id())

            @task(task_id="report", trigger_rule="all_done", **NO_RETRY)
            def report():
                context = get_current_context()
                ti = context["ti"]
                results = {task_id: ti.xcom_pull(task_ids=task_id) for task_id in dag.task_ids}
                results["uat.approval"] = ti.xcom_pull(task_ids="uat.approval", key="decision")
                record = upgrade_log.build_record(target.name, context["run_id"],
                                                  context["dag_run"].start_date.isoformat(timespec="seconds"),
                                                  results)
                table = upgrade_log.append(target.backup_location, record)
                print(table.read_text())
                if record["outcome"] not in GOOD_OUTCOMES:
                    raise AirflowFailException(f"upgrade of {target.name} {record['outcome'].upper()}: "
                                               f"{record['detail']} (upgrade log: {table})")
                return record

            branch = decide()
            watched >> branch
            finished, rolled_back, reported = finish(), rollback_production(), report()
            branch >> [finished, rolled_back, reported]
            [finished, rolled_back] >> reported
    return dag


def build_upgrade_dags(path: str | None = None) -> dict[str, DAG]:
    """Every target's DAG, keyed by dag_id (for `globals().update(...)` in the DAG file)."""
    return {target.dag_id: build_upgrade_dag(target) for target in load_targets(path).values()}
