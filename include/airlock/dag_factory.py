"""Builds one upgrade DAG per target: five phases as task groups, a gate, and finish-or-rollback.

The tasks are thin: each opens the environment it needs and calls one function of
`airlock.steps`. Nothing here touches a server or a database at parse time.
"""

from __future__ import annotations

import functools
import itertools
from datetime import datetime, timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param, TaskGroup, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from airlock import airflow_api, steps, upgrade_log
from airlock.airflow_api import AirflowApi, PausedRecord
from airlock.approval import approval_body, downtime_estimate
from airlock.backups import now_iso
from airlock.config import TargetConfig, load_targets
from airlock.environment import open_adapter, open_environment, open_store
from airlock.operators import (
    DrainDecisionOperator,
    DrainSensor,
    MigrationJobSensor,
    RdsSnapshotSensor,
    RollbackDecisionOperator,
    RolloutSensor,
    UpgradeApprovalOperator,
)
from airlock.versions import LATEST_PATCH, MAX_VERSION_LENGTH, TARGET_VERSION_PATTERN

RETRY = {"retries": 2, "retry_delay": timedelta(seconds=20)}
"""For tasks that only read or that are idempotent by construction."""
NO_RETRY = {"retries": 0}
"""For tasks that change a server: a failure goes straight to the rollback path instead."""
BACKOFF = {"retries": 4, "retry_delay": timedelta(seconds=10), "retry_exponential_backoff": 2.0,
           "max_retry_delay": timedelta(minutes=5)}
"""For the tasks that decide and roll back: idempotent, and the worst time to give up on one
transient error (an S3 blip, a reset from Kubernetes). A verdict (UpgradeError) is never retried."""
GOOD_OUTCOMES = ("upgraded", "nothing_to_do", "planned")


def timed(step):
    """Stamp a task's result with when it ran, for the per-phase durations of the upgrade log."""

    @functools.wraps(step)
    def wrapper(*args, **kwargs):
        started = now_iso()
        try:
            result = step(*args, **kwargs)
        except steps.UpgradeError as verdict:  # says what happened and what to do: no retry changes it
            raise AirflowFailException(str(verdict)) from None
        result = dict(result) if isinstance(result, dict) else {"value": result}
        return {**result, "_started_at": started, "_finished_at": now_iso()}

    return wrapper


def run_id() -> str:
    return get_current_context()["run_id"]


def approvers(target: TargetConfig) -> list[dict]:
    """Who may answer this target's gates; anyone else gets 403 from the API."""
    return [{"id": user, "name": user} for user in target.approvers]


def params(target: TargetConfig) -> dict[str, Param]:
    return {
        "target_version": Param(
            LATEST_PATCH, type="string", title="Target version",
            description=f"The {target.platform} release to upgrade to, e.g. 3.17.2, or 'latest-patch' for the "
                        "newest patch of the running minor release.",
            pattern=TARGET_VERSION_PATTERN, maxLength=MAX_VERSION_LENGTH, examples=[LATEST_PATCH]),
        "mode": Param(
            "upgrade", type="string", enum=["upgrade", "plan-only"], title="Mode",
            description="'plan-only' runs preflight, backups and compatibility checks, then stops before "
                        "touching any server."),
        "drain_timeout_minutes": Param(
            target.drain.timeout_minutes, type="number", minimum=0, maximum=7 * 24 * 60,
            title="Drain timeout (minutes)",
            description="How long to wait for running runs on each environment before asking on-call "
                        "to wait longer, proceed anyway or abort (nothing is stopped until they answer)."),
        "watch_seconds": Param(
            60, type="integer", minimum=0, maximum=24 * 3600, title="Post-upgrade watch (seconds)",
            description="How long production is watched after the upgrade; a failed check rolls it back."),
    }


def step_task(task_id: str, call, *inputs, retry: dict = NO_RETRY, **options):
    """A task that runs one step: `call` gets the task's inputs (upstream results) and its result
    is stamped with start and end times."""

    @task(task_id=task_id, **retry, **options)
    def run_step(*args):
        return timed(call)(*args)

    return run_step(*inputs)


def rds_snapshot_steps(target: TargetConfig, name: str, env) -> list:
    """For a database on RDS: a manual snapshot, and a deferrable wait until it is available."""
    rds = target.environment(name).database.rds
    if rds is None:
        return []
    return [step_task("rds_snapshot", lambda: steps.rds_snapshot(env(), run_id()), retry=RETRY),
            RdsSnapshotSensor(task_id="rds_snapshot_ready", aws_conn_id=rds.aws_conn_id, instance_id=rds.instance_id,
                              snapshot_id=f"{{{{ ti.xcom_pull(task_ids='{name}_upgrade.rds_snapshot')['snapshot'] }}}}",
                              timeout_minutes=rds.snapshot_timeout_minutes, poll_interval=30, **NO_RETRY)]


def drain_steps(target: TargetConfig, name: str) -> tuple[list, list]:
    """drain → (drained: go on | still running: ask on-call to wait longer, proceed or abort).
    Returns every task, and the tasks after which the environment may be stopped."""
    group, env_config = f"{name}_upgrade", target.environment(name)
    sensor = functools.partial(
        DrainSensor, platform=target.platform, url=env_config.url, environment=name,
        auth_conn_id=env_config.auth_conn_id,
        timeout_minutes="{{ params.drain_timeout_minutes }}", poll_interval=target.drain.poll_interval_seconds,
        stale_after_minutes=target.drain.stale_after_minutes, **NO_RETRY)
    drain = sensor(task_id="drain", ask_on_timeout=True)
    decision = DrainDecisionOperator(
        task_id="drain_decision", drain_task_id=f"{group}.drain", wait_task_id=f"{group}.wait_longer",
        proceed_task_id=f"{group}.proceed", abort_task_id=f"{group}.abort",
        subject=f"{target.name} {name}: runs still going after the drain timeout. Wait, proceed or abort?",
        body=DRAIN_DECISION_BODY.replace("GROUP", group).replace("ENV", name),
        assigned_users=approvers(target),
        response_timeout=timedelta(minutes=target.drain.decision_timeout_minutes), **NO_RETRY)
    wait_longer = sensor(task_id="wait_longer")

    def drain_outcome():
        pull = get_current_context()["ti"].xcom_pull
        return (pull(task_ids=f"{group}.drain") or {},
                pull(task_ids=f"{group}.drain_decision", key="decision"))

    proceed = step_task("proceed", lambda: steps.proceed_despite_runs(name, *drain_outcome()))
    abort = step_task("abort", lambda: steps.abort_upgrade(name, target.drain.decision_timeout_minutes,
                                                           *drain_outcome()))
    drain >> decision >> [wait_longer, proceed, abort]
    return [drain, decision, wait_longer, proceed, abort], [wait_longer, proceed]


DRAIN_DECISION_BODY = """**Runs still going on ENV** after
{{ ti.xcom_pull(task_ids='GROUP.drain')['timeout_minutes'] }} min:

{% for run in ti.xcom_pull(task_ids='GROUP.drain')['runs'] %}- {{ run }}
{% endfor %}
- **Wait longer**: wait the drain timeout again; if they are still going then, the upgrade fails with
  nothing stopped.
- **Proceed anyway**: stop the server now; the runs above WILL BE INTERRUPTED.
- **Abort**: stop the upgrade here; nothing was stopped. This is what happens if nobody answers.
"""


ROLLBACK_DECISION_BODY = """**Production failed its watch** after the upgrade to
{{ ti.xcom_pull(task_ids='preflight.plan')['to'] }} and still answers. A rollback restores the backup
taken before the migration ({{ ti.xcom_pull(task_ids='conclude.assess_rollback')['final_backup_id'] }}); what
was written since is kept in a post-upgrade backup set first, but it will NOT be in the restored database.

Written since the upgrade:
{% set assessed = ti.xcom_pull(task_ids='conclude.assess_rollback') %}{% if assessed['unknown'] %}
- unknown: {{ assessed['unknown'] }}
{% endif %}{% for t in assessed['tables'] %}- `{{ t['table'] }}`: {{ t['rows_before'] }} → {{ t['rows_now'] }} rows{{
' (a table of the new version)' if t['new_table'] else '' }}
{% else %}- no table has more or fewer rows
{% endfor %}{% if assessed['rewritten'] %}- changed with the same number of rows (rewritten by the migration, or
  rows updated): {{ assessed['rewritten'] | join(', ') }}
{% endif %}
- **Roll back**: the old version and the pre-upgrade data; the writes above are lost from the live database.
- **Keep the new version and investigate**: nothing is restored; the marker stays, so clearing this
  gate (`conclude.rollback_decision`) and answering Roll back still works later. This is what happens if
  nobody answers.
"""


def pause_steps(target: TargetConfig, name: str) -> tuple[list, list]:
    """Pause the environment's `pause_dags` before its drain; unpause them (whatever happened)
    after its upgrade. ([pause] or [], [unpause] or [])."""
    dag_ids = target.environment(name).pause_dags
    if not dag_ids:
        return [], []

    def api():
        return AirflowApi.from_connection(target.drain.airflow_api_conn_id)

    record = PausedRecord(target.name, name)
    return ([step_task(f"pause_dags_{name}", lambda: airflow_api.pause(api(), dag_ids, record), retry=RETRY)],
            [step_task(f"unpause_dags_{name}", lambda: airflow_api.unpause(api(), record), retry=RETRY,
                       trigger_rule="all_done")])


def helm_wait(target: TargetConfig, name: str, what: str) -> list:
    """For a Helm target: the deferrable wait for the migration Job, or for the rollout."""
    driver = target.environment(name).driver
    if driver.helm is None:
        return []
    helm, group = driver.helm, f"{name}_upgrade"
    common = {"environment": name, "conn_id": helm.kubernetes_conn_id, "namespace": helm.namespace,
              "poll_interval": 2, **NO_RETRY}
    if what == "migration":
        job = f"{{{{ ti.xcom_pull(task_ids='{group}.migrate')['job'] }}}}"
        return [MigrationJobSensor(task_id="migration_job", job=job, timeout_minutes=helm.timeout_seconds / 60,
                                   **common)]
    deployment = f"{{{{ ti.xcom_pull(task_ids='{group}.start')['deployment'] }}}}"
    version = f"{{{{ ti.xcom_pull(task_ids='preflight.plan')['{name}']['target'] }}}}"
    tag = helm.image_tag.replace("{version}", version)
    return [RolloutSensor(task_id="rollout", deployment=deployment, image_tag=tag,
                          timeout_minutes=driver.start_timeout_seconds / 60, **common)]


def switch_steps(target: TargetConfig, name: str, env, plan) -> list:
    """Blue-green Helm targets: point the Service at the new release once it passes its checks."""
    helm = target.environment(name).driver.helm
    if helm is None or helm.method != "blue-green":
        return []
    return [step_task("switch", lambda plan_: steps.switch(env(), plan_), plan)]


def environment_steps(target: TargetConfig, name: str, plan) -> list:
    """drain (+ decision) → stop → backup → migrate → start → health → smoke → fingerprint (→ artifact
    loading with the new client, on staging), for one environment."""

    def env():
        return open_environment(target, name)

    drain_tasks, ready = drain_steps(target, name)
    # The join has only the two ways forward upstream: after an abort both are skipped and so is
    # everything after it. (A trigger rule on `stop` itself would count the plan, its XCom input.)
    drained = EmptyOperator(task_id="drained", trigger_rule="none_failed_min_one_success")
    ready >> drained
    chain = [
        drained,
        step_task("stop", lambda plan_: steps.freeze(env(), run_id(), plan_), plan),
        step_task("backup", lambda: steps.final_backup(env(), run_id()), retry=RETRY),
        *rds_snapshot_steps(target, name, env),
        step_task("migrate", lambda: steps.migrate(env(), run_id())),
        *helm_wait(target, name, "migration"),
        step_task("start", lambda: steps.start(env(), run_id())),
        *helm_wait(target, name, "rollout"),
        *switch_steps(target, name, env, plan),
        step_task("health", lambda plan_: steps.check_health(env(), plan_), plan, retry=RETRY),
        step_task("smoke", lambda: steps.smoke(env()), retry=RETRY),
        step_task("fingerprint", lambda: steps.verify_fingerprint(env(), run_id()), retry=RETRY),
    ]
    if name == "staging":
        chain.append(step_task("artifacts", lambda plan_: steps.check_artifacts(env(), plan_), plan, retry=RETRY))
    for upstream, downstream in itertools.pairwise(chain):
        upstream >> downstream
    return [*drain_tasks, *chain]


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
        default_args={"owner": "airlock", **NO_RETRY, **({"queue": target.queue} if target.queue else {})},
    ) as dag:
        staging_env = functools.partial(open_environment, target, "staging")
        production_env = functools.partial(open_environment, target, "production")

        with TaskGroup("preflight"):
            validated = step_task("validate", lambda: steps.validate(
                target, [staging_env(), production_env()], get_current_context()["params"], run_id(),
                list(load_targets(target.source or None).values())))
            planned = step_task("plan", lambda checked: steps.plan(
                target, staging_env(), production_env(), checked["requested"]), validated, retry=RETRY)

        with TaskGroup("backup_and_prepare"):
            checked = [step_task("health_staging", lambda: steps.health(staging_env()), retry=RETRY),
                       step_task("health_production", lambda: steps.health(production_env()), retry=RETRY)]
            prepared = [
                step_task("backup_staging", lambda plan_: steps.backup(
                    staging_env(), steps.PREPARE, run_id(), plan_["staging"]["current"]), planned, retry=RETRY),
                step_task("backup_production", lambda plan_: steps.backup(
                    production_env(), steps.PREPARE, run_id(), plan_["production"]["current"]), planned,
                    retry=RETRY),
                step_task("inventory", lambda: steps.inventory([staging_env(), production_env()]), retry=RETRY),
            ]
            planned >> checked
            for health_check in checked:
                health_check >> prepared

        with TaskGroup("compatibility"):
            @task.short_circuit(task_id="proceed", ignore_downstream_trigger_rules=False, **NO_RETRY)
            def proceed():
                return get_current_context()["params"]["mode"] == "upgrade"

            go = proceed()
            versions_ready = step_task("prepare_versions", lambda plan_: steps.prepare_versions(
                production_env(), plan_), planned, retry=RETRY)
            rehearsal = step_task("rehearse_migration", lambda plan_: steps.rehearse_migration(
                production_env(), run_id(), plan_), planned, retry=RETRY)
            [prepared[1], versions_ready] >> rehearsal
            clients = step_task("client_compatibility", lambda plan_: steps.client_compatibility(
                target, open_adapter(target, "production"), plan_), planned, retry=RETRY)
            [*prepared, rehearsal, clients] >> go

        with TaskGroup("staging_upgrade"):
            pause_staging, unpause_staging = pause_steps(target, "staging")
            staging_chain = environment_steps(target, "staging", planned)
            go >> [*pause_staging, staging_chain[0]]
            pause_staging >> staging_chain[0]
            staging_rollback = step_task("rollback_staging", lambda: steps.rollback(staging_env(), run_id()),
                                         retry=BACKOFF, trigger_rule="one_failed")
            staging_chain >> staging_rollback
            staging_finished = step_task("finish_staging", lambda: steps.finish(staging_env(), run_id()))
            staging_chain[-1] >> staging_finished
            for unpause in unpause_staging:
                [staging_finished, staging_rollback] >> unpause

        with TaskGroup("uat"):
            @task(task_id="summary", **RETRY)
            def summary(plan_: dict):
                pull = get_current_context()["ti"].xcom_pull
                staging = {**(pull(task_ids="staging_upgrade.health") or {}),
                           "smoke": pull(task_ids="staging_upgrade.smoke") or {},
                           "fingerprint_equal": (pull(task_ids="staging_upgrade.fingerprint") or {})
                           .get("equal_to_pre_upgrade", False)}
                backups = {"staging (before upgrade)": pull(task_ids="staging_upgrade.backup") or {},
                           "production (phase 1)": pull(task_ids="backup_and_prepare.backup_production") or {}}
                return approval_body(target.name, plan_, staging, backups,
                                     pull(task_ids="backup_and_prepare.inventory") or {},
                                     downtime_estimate(pull(task_ids="compatibility.rehearse_migration"),
                                                       pull(task_ids="staging_upgrade.start")),
                                     pull(task_ids="compatibility.client_compatibility"),
                                     pull(task_ids="staging_upgrade.artifacts"))

            approval = UpgradeApprovalOperator(
                task_id="approval",
                subject=f"Upgrade {target.name} production to "
                        "{{ ti.xcom_pull(task_ids='preflight.plan')['to'] }}?",
                body="{{ ti.xcom_pull(task_ids='uat.summary') }}",
                assigned_users=approvers(target),
                defaults=["Reject"],  # nobody answering never upgrades production
                response_timeout=timedelta(minutes=target.approval_timeout_minutes),
            )
            staging_finished >> summary(planned) >> approval

        with TaskGroup("production_upgrade"):
            pause_production, unpause_production = pause_steps(target, "production")
            production_chain = environment_steps(target, "production", planned)
            approval >> [*pause_production, production_chain[0]]
            pause_production >> production_chain[0]
            watched = step_task("watch", lambda plan_: steps.watch(
                production_env(), plan_, float(get_current_context()["params"]["watch_seconds"])), planned)
            production_chain[-1] >> watched

        with TaskGroup("conclude"):
            @task.branch(task_id="decide", trigger_rule="all_done", **BACKOFF)
            def decide():
                ti = get_current_context()["ti"]
                if steps.run_marker(open_store(target, "production"), run_id()) is None:
                    return "conclude.report"
                if ti.xcom_pull(task_ids="production_upgrade.watch"):
                    return "conclude.finish"
                return "conclude.assess_rollback"

            @task(task_id="report", trigger_rule="all_done", **NO_RETRY)
            def report():
                context = get_current_context()
                ti = context["ti"]
                results = {task_id: ti.xcom_pull(task_ids=task_id) for task_id in dag.task_ids}
                for gate in ("uat.approval", "staging_upgrade.drain_decision", "production_upgrade.drain_decision",
                             "conclude.rollback_decision"):
                    results[gate] = ti.xcom_pull(task_ids=gate, key="decision")
                stores = {name: open_store(target, name) for name in ("staging", "production")}
                results["_half_upgraded"] = {name: store.marker_location() for name, store in stores.items()
                                             if steps.run_marker(store, run_id()) is not None}
                record = upgrade_log.build_record(target.name, context["run_id"],
                                                  context["dag_run"].start_date.isoformat(timespec="seconds"),
                                                  results)
                place = target.log_dir or stores["production"]  # an S3 target keeps it in its store
                where, table = upgrade_log.append(place, record)
                print(table)
                still_paused = {name: PausedRecord(target.name, name).read() for name in ("staging", "production")
                                if target.environment(name).pause_dags}
                paused_note = (f"; DAGs that Airlock paused are STILL PAUSED: {still_paused}: clear the "
                               "unpause_dags task(s) or unpause them in the UI") if any(still_paused.values()) else ""
                if record["outcome"] not in GOOD_OUTCOMES or paused_note:
                    raise AirflowFailException(f"upgrade of {target.name} {record['outcome'].upper()}: "
                                               f"{record['detail']}{paused_note} (upgrade log: {where})")
                return record

            finished = step_task("finish", lambda: steps.finish(production_env(), run_id()), retry=BACKOFF)
            assessed = step_task("assess_rollback", lambda: steps.assess_rollback(production_env(), run_id()),
                                 retry=RETRY)
            rollback_decision = RollbackDecisionOperator(
                task_id="rollback_decision", assess_task_id="conclude.assess_rollback",
                rollback_task_id="conclude.rollback_production", keep_task_id="conclude.keep_new_version",
                subject=f"{target.name} production failed its watch after the upgrade. Roll back or keep it?",
                body=ROLLBACK_DECISION_BODY,
                assigned_users=approvers(target),
                response_timeout=timedelta(minutes=target.watch.decision_timeout_minutes), **NO_RETRY)
            rolled_back = step_task("rollback_production", lambda: steps.rollback(production_env(), run_id()),
                                    retry=BACKOFF)
            kept = step_task("keep_new_version", lambda: steps.keep_new_version(
                production_env(), run_id(),
                get_current_context()["ti"].xcom_pull(task_ids="conclude.rollback_decision", key="decision")))
            reported = report()
            branch = decide()
            [*production_chain, watched] >> branch  # a production abort ends here too (all_done)
            retention = step_task("retention", lambda: steps.retention([staging_env(), production_env()]),
                                  retry=RETRY, trigger_rule="all_done")
            branch >> [finished, assessed, reported]
            assessed >> rollback_decision >> [rolled_back, kept]
            [finished, rolled_back, kept] >> retention >> reported
            followed_up = step_task("follow_ups", lambda plan_: steps.follow_ups(production_env(), plan_), planned,
                                    retry=RETRY)
            finished >> followed_up >> reported
            for unpause in unpause_production:
                [finished, rolled_back, kept] >> unpause >> retention
            # the report is the only leaf: it decides the run's state
            [staging_rollback, *unpause_staging] >> reported
    return dag


def build_upgrade_dags(path: str | None = None) -> dict[str, DAG]:
    """Every target's DAG, keyed by dag_id (for `globals().update(...)` in the DAG file)."""
    return {target.dag_id: build_upgrade_dag(target) for target in load_targets(path).values()}
