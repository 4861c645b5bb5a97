"""Builds one upgrade DAG per target, one function per phase, in the guides' order: preflight →
backup & preparation → compatibility → staging → acceptance → window → production (and its watch) →
conclude (finish, or roll back).

The tasks are thin: each opens the environment it needs and calls one function of
`airlock.steps`. Nothing here touches a server or a database at parse time.
"""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, Param, TaskGroup, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException
from airflow.timetables.trigger import CronTriggerTimetable

from airlock import oncall, steps, teams, upgrade_log
from airlock.airflow_api import PausedRecord
from airlock.approval import approval_body, auto_approval, downtime_estimate
from airlock.config import WATCH_MINUTES_MAX, TargetConfig, load_targets
from airlock.dag_environment import environment_steps, pause_steps, window_steps
from airlock.dag_shards import WHOLE, Shard
from airlock.dag_tasks import (
    BACKOFF,
    NO_RETRY,
    RETRY,
    approvers,
    dag_settings,
    rollback_step,
    run_id,
    run_type,
    step_task,
    with_params,
)
from airlock.environment import log_place, open_adapter, open_environment, open_store
from airlock.notify import gate_notifiers, tell_outcome
from airlock.operators import (
    MaintenanceWindowOperator,
    ProductionSlotOperator,
    RollbackDecisionOperator,
    SlotHeldSensor,
    UpgradeApprovalOperator,
    WatchOperator,
)
from airlock.production_slot import make_sure_of_pool
from airlock.versions import LATEST_PATCH, MAX_VERSION_LENGTH, TARGET_VERSION_PATTERN

GOOD_OUTCOMES = ("upgraded", "nothing_to_do", "planned")
log = logging.getLogger("airlock.what_now")


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
        "window_override": Param(
            "", type="string", maxLength=500, title="Go outside the maintenance windows: why",
            description="Leave empty to wait for each environment's maintenance window. A reason here starts "
                        "at once; the upgrade log records it and who triggered the run."),
        "watch_seconds": Param(
            round(target.watch.minutes * 60), type="integer", minimum=0, maximum=WATCH_MINUTES_MAX * 60,
            title="Post-upgrade watch (seconds)",
            description="How long production is watched after the upgrade, in the triggerer (default: the target's "
                        "watch.minutes). A failure that lasts is a verdict: on-call decides while the server "
                        "answers; a server that stays down is rolled back."),
    }


def what_now_callback(target: TargetConfig):
    """on_failure_callback: end a failed task's log with whether clearing it is safe and how to roll back."""

    def tell(context) -> None:
        task_id, run = context["ti"].task_id, context["run_id"]
        environment = ("staging" if task_id.startswith("staging_upgrade.") else
                       "production" if task_id.startswith(("window.", "production_upgrade.", "conclude.")) else None)
        try:
            marker = steps.run_marker(open_store(target, environment), run) if environment else None
        except Exception as error:  # the advice must not hide the failure it follows
            marker = None
            log.warning("could not read %s's marker for the advice below: %s", environment, error)
        log.warning(oncall.what_now(target.name, environment, task_id, marker, run))

    return tell


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


def preflight(target: TargetConfig, staging_env, production_env):
    """validate → plan → anything to do? (with nothing newer the run ends here: no backup, no gate) →
    the production slot's pool exists."""
    with TaskGroup("preflight"):
        validated = step_task("validate", lambda: steps.validate(
            target, [staging_env(), production_env()], get_current_context()["params"], run_id(),
            list(load_targets(target.source or None).values()),
            scheduled=run_type(get_current_context()["dag_run"]) == "scheduled"))
        planned = step_task("plan", lambda checked: steps.plan(
            target, staging_env(), production_env(), checked["requested"]), validated, retry=RETRY)

        @task.short_circuit(task_id="anything_to_do", ignore_downstream_trigger_rules=False, **NO_RETRY)
        def anything_to_do(plan_: dict) -> bool:
            if plan_["production"]["change"] == "none":
                print(f"nothing to do: {plan_['production']['description']} (releases from "
                      f"{plan_['release_source']}); no backup taken, no gate opened")
                return False
            return True

        pool = step_task("production_pool", lambda: make_sure_of_pool(
            target.production_pool, target.platform, target.drain.airflow_api_conn_id), retry=RETRY)
        go_on = anything_to_do(planned)
        go_on >> pool
        return planned, go_on, pool


def backup_and_prepare(target: TargetConfig, planned, go_on, staging_env, production_env) -> list:
    """health → verified backups of both environments, and the inventory of running runs."""
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
        go_on >> checked
        for health_check in checked:
            health_check >> prepared
    return prepared


def compatibility(target: TargetConfig, planned, go_on, prepared: list, production_env):
    """The new version's venv, a rehearsal of the migration on a copy, the teams' clients; then
    stop here in plan-only mode."""
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
        go_on >> [versions_ready, clients]
        [*prepared, rehearsal, clients] >> go
    return go


def staging_upgrade(target: TargetConfig, planned, go, staging_env):
    """(window →) pause DAGs → the environment's upgrade → finish, or roll back → unpause DAGs."""
    with TaskGroup("staging_upgrade"):
        window = window_steps(target, "staging", "window")
        pause_staging, unpause_staging = pause_steps(target, "staging")
        staging_chain = environment_steps(target, "staging", planned)
        first = [*pause_staging, staging_chain[0]]
        if window:
            go >> window[0] >> first
        else:
            go >> first
        pause_staging >> staging_chain[0]
        staging_rollback = rollback_step("rollback_staging", staging_env, trigger_rule="one_failed")
        staging_chain >> staging_rollback
        staging_finished = step_task("finish_staging", lambda: steps.finish(staging_env(), run_id()))
        staging_chain[-1] >> staging_finished
        for unpause in unpause_staging:
            [staging_finished, staging_rollback] >> unpause
    return staging_finished, [staging_rollback, *unpause_staging]


def acceptance(target: TargetConfig, planned, staging_finished):
    """The UAT gate: what staging went through, for an approver (a patch may pass alone, if allowed)."""
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
            assigned_users=approvers(target), notifiers=gate_notifiers(target.notify, "approval", target.name),
            defaults=["Reject"],  # nobody answering never upgrades production
            response_timeout=timedelta(minutes=target.approval_timeout_minutes),
            auto_approval=lambda context: auto_approval(
                target.auto_approve, context["ti"].xcom_pull(task_ids="preflight.plan")),
        )
        staging_finished >> summary(planned) >> approval
    return approval


def team_notice(target: TargetConfig, planned, approval):
    """When the target names teams: tell them when production's upgrade is planned, at least
    teams.notice_hours ahead; without a maintenance window, wait out the notice (deferred). The task
    production follows."""
    if not target.teams.members:
        return approval
    with TaskGroup("notice"):
        announced = step_task("announce", lambda plan_: teams.announce(
            target, plan_, datetime.now(UTC), steps.expected_upgrade(target, "production", log_place(target))[0],
            open_adapter(target, "production"), get_current_context(), log_place(target),
            get_current_context()["run_id"]), planned, retry=RETRY)
        approval >> announced
        if not target.teams.notice_hours or target.environment("production").maintenance is not None:
            return announced  # the window's decision starts production no sooner than the notice allows
        over = MaintenanceWindowOperator(task_id="notice_over", decide=lambda context: teams.notice_slot(
            context["ti"].xcom_pull(task_ids="notice.announce")), **RETRY)
        announced >> over
    return over


def maintenance_window(target: TargetConfig, approval):
    """Production's maintenance window, waited for in the triggerer; the task production follows."""
    if target.environment("production").maintenance is None:
        return approval
    with TaskGroup("window"):
        (opened,) = window_steps(target, "production", "production")
    approval >> opened
    return opened


def production_slot(target: TargetConfig, ready):
    """A slot of the platform's pool, held from here to the run's end (airlock.production_slot);
    production starts once it is held. Without a pool (production_pool: none), production follows."""
    if target.production_pool is None:
        return ready
    with TaskGroup("production_slot"):
        hold = ProductionSlotOperator(task_id="hold", pool=target.production_pool, pool_slots=1, **NO_RETRY)
        held = SlotHeldSensor(task_id="held", production_pool=target.production_pool, platform=target.platform,
                              **NO_RETRY)
    ready >> [hold, held]
    return held


def production_upgrade(target: TargetConfig, planned, ready, production_env):
    """pause DAGs → the environment's upgrade → the watch."""
    with TaskGroup("production_upgrade"):
        pause_production, unpause_production = pause_steps(target, "production")
        production_chain = environment_steps(target, "production", planned)
        ready >> [*pause_production, production_chain[0]]
        pause_production >> production_chain[0]
        watched = watch_step(target)
        production_chain[-1] >> watched
    return production_chain, watched, unpause_production


def watch_step(target: TargetConfig) -> WatchOperator:
    """Production watched for `watch_seconds` (default: the target's watch.minutes) in the triggerer."""
    production, watch = target.environment("production"), target.watch
    return WatchOperator(
        task_id="watch", platform=target.platform, url=production.url, environment="production",
        auth_conn_id=production.auth_conn_id, version="{{ ti.xcom_pull(task_ids='preflight.plan')['to'] }}",
        seconds="{{ params.watch_seconds }}", interval=watch.interval_seconds,
        smoke_interval=watch.smoke_interval_seconds, consecutive_failures=watch.consecutive_failures,
        unhealthy_seconds=watch.unhealthy_seconds, **NO_RETRY)


def conclude(dag: DAG, target: TargetConfig, planned, production, staging_leaves: list, staging_env,
             production_env) -> None:
    """finish, or (ask and) roll back; retention; the upgrade log's record, which decides the run's state."""
    production_chain, watched, unpause_production = production
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
            tell_outcome(target.notify, record, context)
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
            assigned_users=approvers(target), notifiers=gate_notifiers(target.notify, "decision", target.name),
            response_timeout=timedelta(minutes=target.watch.decision_timeout_minutes), **NO_RETRY)
        rolled_back = rollback_step("rollback_production", production_env)
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
        if target.teams.members:
            told = step_task("tell_teams", lambda plan_: {"told": teams.tell_each(
                target, lambda team: teams.upgraded(target, plan_, team, open_adapter(target, "production")),
                get_current_context())}, planned, retry=NO_RETRY)
            finished >> told >> reported
        for unpause in unpause_production:
            [finished, rolled_back, kept] >> unpause >> retention
        staging_leaves >> reported  # the report is the only leaf: it decides the run's state


def build_upgrade_dag(target: TargetConfig) -> DAG:
    """The upgrade DAG of one target, phase by phase as the vendors' guides order them."""
    schedule = (CronTriggerTimetable(target.schedule.cron, timezone=target.schedule.timezone)
                if target.schedule else None)
    with DAG(
        dag_id=target.dag_id,
        description=f"Upgrade {target.platform} target {target.name}: {target.description}",
        doc_md=(f"Airlock upgrade of **{target.name}** ({target.platform}). Targets file: `{target.source}`.\n\n"
                "Phases: preflight → backup_and_prepare → compatibility → staging_upgrade → uat → "
                "window → production_upgrade → conclude (finish or roll back)."
                + (f"\n\nScheduled: `{target.schedule.cron}` ({target.schedule.timezone}), applying the newest "
                   "patch release." if target.schedule else "")),
        schedule=schedule,
        **dag_settings([f"platform:{target.platform}", f"target:{target.name}"], target.queue,
                       on_failure_callback=what_now_callback(target)),
    ) as dag:
        staging_env = functools.partial(open_environment, target, "staging")
        production_env = functools.partial(open_environment, target, "production")
        planned, go_on, pool = preflight(target, staging_env, production_env)
        prepared = backup_and_prepare(target, planned, go_on, staging_env, production_env)
        go = compatibility(target, planned, go_on, prepared, production_env)
        staging_finished, staging_leaves = staging_upgrade(target, planned, go, staging_env)
        approval = acceptance(target, planned, staging_finished)
        ready = production_slot(target, maintenance_window(target, team_notice(target, planned, approval)))
        pool >> ready
        production = production_upgrade(target, planned, ready, production_env)
        conclude(dag, target, planned, production, staging_leaves, staging_env, production_env)
    return with_params(dag, params(target))


def build_upgrade_dags(targets: dict[str, TargetConfig], only: str | None = None,
                       shard: Shard = WHOLE) -> dict[str, DAG]:
    """Every target's DAG, keyed by dag_id (for `globals().update(...)` in the DAG file); only the
    DAG `only` when one is named (a worker parsing the file to run one of its tasks); only the
    shard's targets in a DAG file that is one shard of several (airlock/dag_shards.py)."""
    return {target.dag_id: build_upgrade_dag(target) for target in targets.values()
            if only in (None, target.dag_id) and shard.holds(target.name)}
