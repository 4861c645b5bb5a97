"""One environment's upgrade in the DAG: (window →) pause DAGs → drain (+ decision) → backup (still serving) →
stop → final backup (the one before adopted when nothing changed since) → (RDS snapshot) → migrate (+ the
Job's wait) → migrated data → start (+ the rollout's wait) → (switch) → health → smoke → fingerprint
(→ artifacts, on staging)."""

from __future__ import annotations

import functools
import itertools
from datetime import UTC, datetime, timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException

from airlock import airflow_api, steps
from airlock.airflow_api import AirflowApi, PausedRecord
from airlock.config import TargetConfig
from airlock.dag_tasks import NO_RETRY, RETRY, approvers, run_id, run_type, step_task
from airlock.environment import log_place, open_environment
from airlock.notify import gate_notifiers
from airlock.operators import (
    DrainDecisionOperator,
    DrainSensor,
    MaintenanceWindowOperator,
    MigrationJobSensor,
    RdsSnapshotSensor,
    RolloutSensor,
)


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
        assigned_users=approvers(target), notifiers=gate_notifiers(target.notify, "decision", target.name),
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
{% set required = ((ti.xcom_pull(task_ids='preflight.plan') or {}).get('release_notes') or {}).get('drain_required')
%}{% if required %}- **Proceed anyway is not offered** for this hop: {{ required }} (its release notes).
{% else %}- **Proceed anyway**: stop the server now; the runs above WILL BE INTERRUPTED.
{% endif %}- **Abort**: stop the upgrade here; nothing was stopped. This is what happens if nobody answers.
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


def rehearsed_seconds() -> float | None:
    """How long the rehearsal's migration took on a copy: what the real one's progress lines expect."""
    rehearsal = get_current_context()["ti"].xcom_pull(task_ids="compatibility.rehearse_migration") or {}
    return rehearsal.get("migration_seconds")


def helm_wait(target: TargetConfig, name: str, what: str) -> list:
    """For a Helm target: the deferrable wait for the migration Job, or for the rollout."""
    driver = target.environment(name).driver
    if driver.helm is None:
        return []
    helm, group = driver.helm, f"{name}_upgrade"
    common = {"environment": name, "conn_id": helm.kubernetes_conn_id, "namespace": helm.namespace,
              "poll_interval": 2, **NO_RETRY}
    if what == "migration":
        if helm.migration == "hook":
            return []  # helm upgrade runs the chart's hook and waits for it, in the start step
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


def migrated_data_steps(target: TargetConfig, name: str, env, at_start: bool) -> list:
    """The migrated database against the final backup: before the start, or, where the chart's hook
    migrates inside `helm upgrade`, right after the rollout."""
    if at_start != target.environment(name).driver.migrates_at_start:
        return []
    return [step_task("migrated_data", lambda: steps.verify_migrated_data(env(), run_id()), retry=RETRY)]


def artifact_store_steps(target: TargetConfig, name: str, env) -> list:
    """With an artifact store configured: none of its artifacts deleted or changed by the upgrade."""
    if target.environment(name).artifacts is None:
        return []
    return [step_task("artifact_store", lambda: steps.verify_artifact_store(env(), run_id()), retry=RETRY)]


def environment_steps(target: TargetConfig, name: str, plan) -> list:
    """drain (+ decision) → backup (serving) → stop → backup → migrate → migrated data → start → health → smoke
    → fingerprint (→ the artifact store unchanged) (→ artifact loading with the new client, on staging), for one
    environment."""

    def env():
        return open_environment(target, name)

    drain_tasks, ready = drain_steps(target, name)
    # The join has only the two ways forward upstream: after an abort both are skipped and so is
    # everything after it. (A trigger rule on `stop` itself would count the plan, its XCom input.)
    drained = EmptyOperator(task_id="drained", trigger_rule="none_failed_min_one_success")
    ready >> drained
    chain = [
        drained,
        step_task("backup_before_stop", lambda plan_: steps.backup_before_stop(env(), run_id(), plan_), plan,
                  retry=RETRY),
        step_task("stop", lambda plan_: steps.freeze(env(), run_id(), plan_), plan),
        step_task("backup", lambda: steps.final_backup(env(), run_id()), retry=RETRY),
        *rds_snapshot_steps(target, name, env),
        step_task("migrate", lambda: steps.migrate(env(), run_id(), rehearsed_seconds())),
        *helm_wait(target, name, "migration"),
        *migrated_data_steps(target, name, env, at_start=False),
        step_task("start", lambda: steps.start(env(), run_id())),
        *helm_wait(target, name, "rollout"),
        *migrated_data_steps(target, name, env, at_start=True),
        *switch_steps(target, name, env, plan),
        step_task("health", lambda plan_: steps.check_health(env(), plan_), plan, retry=RETRY),
        step_task("smoke", lambda: steps.smoke(env()), retry=RETRY),
        step_task("fingerprint", lambda: steps.verify_fingerprint(env(), run_id()), retry=RETRY),
        *artifact_store_steps(target, name, env),
    ]
    if name == "staging":
        chain.append(step_task("artifacts", lambda plan_: steps.check_artifacts(env(), plan_), plan, retry=RETRY))
    for upstream, downstream in itertools.pairwise(chain):
        upstream >> downstream
    return [*drain_tasks, *chain]


def window_steps(target: TargetConfig, name: str, task_id: str) -> list:
    """For an environment with maintenance windows: the deferred wait for one its upgrade fits in."""
    if target.environment(name).maintenance is None:
        return []

    def decide(context) -> dict:
        dag_run = context["dag_run"]
        who = getattr(dag_run, "triggering_user_name", None) or f"the {run_type(dag_run)} run's trigger"
        announced = (context["ti"].xcom_pull(task_ids="notice.announce") if name == "production" else None) or {}
        now = max(datetime.now(UTC), datetime.fromisoformat(announced.get("earliest") or "1970-01-01T00:00:00+00:00"))
        try:  # production starts no sooner than the notice the teams were given
            return steps.maintenance_slot(target, name, log_place(target), now,
                                          str(context["params"].get("window_override") or ""), who)
        except steps.UpgradeError as verdict:
            raise AirflowFailException(str(verdict)) from None

    return [MaintenanceWindowOperator(task_id=task_id, decide=decide, **RETRY)]
