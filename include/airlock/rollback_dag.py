"""The on-call rollback DAG of one target, `airlock_rollback__<target>`: for when an upgrade has
finished and production (or staging) must go back all the same.

plan (which set, what it means) → confirm (a person reads exactly that) → arm (the marker the
upgrade's rollback works from) → rollback (the upgrade DAG's own task: back up the database as it is,
restore the set, bring its version back, prove the fingerprint) → report (the upgrade log).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from airlock import oncall, upgrade_log
from airlock.config import ENVIRONMENTS, TargetConfig
from airlock.dag_shards import WHOLE, Shard
from airlock.dag_tasks import (
    NO_RETRY,
    RETRY,
    approvers,
    dag_settings,
    rollback_step,
    run_id,
    step_task,
    with_params,
)
from airlock.environment import log_place, open_environment
from airlock.notify import gate_notifiers, tell_outcome
from airlock.operators import RollbackConfirmOperator

BACKUP_ID_PATTERN = r"^$|^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$"

CONFIRM_BODY = """**Roll back {{ plan.environment }} of TARGET**: {{ plan.version_now }} → {{ plan.restores_version }}

- backup set: `{{ plan.backup_id }}` ({{ plan.purpose }} backup of run `{{ plan.taken_by_run }}`), at
  {{ plan.location }}
- taken {{ plan.taken_at }}, {{ plan.age_hours }} h ago; {{ plan.bytes }} bytes
- rows per table in it: {% for table, rows in plan.rows.items() %}`{{ table }}` {{ rows }}{{
  ', ' if not loop.last }}{% endfor %}
- checked after the restore: the served version, and {% if plan.fingerprint %}the data fingerprint recorded
  with the set{% else %}no fingerprint (none was recorded with this set; its table checksums are proven at the
  restore){% endif %}

**What would be lost** (written since the set was taken; kept in a backup of the database as it is, taken
first, but NOT in the restored database):
{% if plan.lost_unknown %}- unknown: {{ plan.lost_unknown }}
{% endif %}{% for t in plan.lost %}- `{{ t.table }}`: {{ t.rows_before }} → {{ t.rows_now }} rows{{
' (a table of the newer version)' if t.new_table else '' }}
{% else %}{% if not plan.lost_unknown %}- nothing: no table changed since
{% endif %}{% endfor %}
{% if plan.artifacts %}
**The artifact store** ({{ plan.artifacts.location or 'see below' }}): {% if plan.artifacts.unknown %}unknown: {{
plan.artifacts.unknown }}{% else %}{{ plan.artifacts.deleted | length }} deleted and {{ plan.artifacts.changed | length
}} changed artifacts are put back from the set{% for key in (plan.artifacts.deleted + plan.artifacts.changed)[:20] %}{{
': ' if loop.first else ', ' }}`{{ key }}`{% endfor %}; the {{ plan.artifacts.added }} added since stay{% endif %}
{% endif %}
**Approve** stops the server and restores; **Reject** (or no answer) leaves everything as it is.
"""


def params() -> dict[str, Param]:
    return {
        "environment": Param("production", type="string", enum=list(ENVIRONMENTS), title="Environment",
                             description="The environment to roll back."),
        "backup_id": Param("", type="string", pattern=BACKUP_ID_PATTERN, maxLength=201, title="Backup set",
                           description="The set to restore; empty: the final backup of the last upgrade of that "
                                       "environment (taken with the server stopped, before the migration)."),
    }


def build_rollback_dag(target: TargetConfig) -> DAG:
    """The on-call rollback DAG of one target."""
    with DAG(
        dag_id=f"airlock_rollback__{target.name}",
        description=f"Roll back {target.platform} target {target.name} from a backup set, after an upgrade",
        doc_md=__doc__,
        schedule=None,
        **dag_settings(["rollback", f"platform:{target.platform}", f"target:{target.name}"], target.queue),
    ) as dag:
        def environment() -> str:
            return get_current_context()["params"]["environment"]

        def env():
            return open_environment(target, environment())

        planned = step_task("plan", lambda: oncall.rollback_plan(
            env(), get_current_context()["params"]["backup_id"], upgrade_log.read(log_place(target))), retry=RETRY)
        confirm = RollbackConfirmOperator(
            task_id="confirm",
            subject=f"Roll back {target.name} {{{{ params.environment }}}} to "
                    "{{ ti.xcom_pull(task_ids='plan')['restores_version'] }}?",
            body="{% set plan = ti.xcom_pull(task_ids='plan') %}" + CONFIRM_BODY.replace("TARGET", target.name),
            assigned_users=approvers(target), defaults=["Reject"],
            notifiers=gate_notifiers(target.notify, "decision", target.name),
            response_timeout=timedelta(minutes=target.watch.decision_timeout_minutes))
        armed = step_task("arm", lambda plan_: oncall.arm_rollback(env(), run_id(), plan_), planned, retry=RETRY)
        rolled_back = rollback_step("rollback", env)

        @task(task_id="report", trigger_rule="all_done", **NO_RETRY)
        def report():
            context = get_current_context()
            pull = context["ti"].xcom_pull
            record = upgrade_log.rollback_record(
                target.name, context["run_id"], context["dag_run"].start_date.isoformat(timespec="seconds"),
                pull(task_ids="plan"), pull(task_ids="confirm", key="decision"), pull(task_ids="rollback"),
                pull(task_ids="arm"))
            where, _ = upgrade_log.append(log_place(target), record)
            tell_outcome(target.notify, record, context)
            if record["outcome"] != "rolled_back":
                raise AirflowFailException(f"rollback of {target.name} {record['outcome'].upper()}: {record['detail']} "
                                           f"(upgrade log: {where})")
            return record

        planned >> confirm >> armed >> rolled_back >> report()
    return with_params(dag, params())


def build_rollback_dags(targets: dict[str, TargetConfig], only: str | None = None,
                        shard: Shard = WHOLE) -> dict[str, DAG]:
    """Every target's rollback DAG, keyed by dag_id (only `only` when one is named; only the shard's)."""
    return {f"airlock_rollback__{target.name}": build_rollback_dag(target) for target in targets.values()
            if only in (None, f"airlock_rollback__{target.name}") and shard.holds(target.name)}
