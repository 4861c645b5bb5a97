"""Airlock's operators; thin: the logic lives in steps, triggers and adapters."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLBranchOperator
from airflow.sdk import BaseOperator, get_current_context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airlock.backups import now_iso
from airlock.production_slot import HOLD_DAYS, WAIT_DAYS, in_process_run
from airlock.steps import UpgradeError
from airlock.triggers import HoldTrigger, PollTrigger, WaitUntilTrigger, WatchTrigger
from airlock.waits import CheckFailed, Wait, look_once


def first_look(check: str, kwargs: dict, what: str, log) -> dict:
    """The look a waiting task takes before it defers: a transient error is logged and waited on (the
    trigger looks again, backing off); a verdict (CheckFailed) is raised."""
    result = look_once(check, kwargs)
    if "transient_error" in result:
        log.warning("%s: first look failed (%s); waiting on, with backoff", what, result["transient_error"])
    return result


class StepOperator(BaseOperator):
    """Runs one step with its inputs (upstream results). A step that waits (a generator of Waits, see
    airlock.waits) has each wait checked once here; one not met yet defers the task to a PollTrigger
    (no worker slot held) and the step runs again from the start when it fires: steps are
    idempotent, so the rerun passes what is done. The result is stamped with when the step first
    started and when it finished, for the per-phase durations of the upgrade log."""

    template_fields = ("inputs",)
    ui_color = "#eef3e2"

    def __init__(self, *, call: Callable[..., Any], inputs: Sequence[Any] = (), **kwargs):
        super().__init__(**kwargs)
        self.call, self.inputs = call, list(inputs)

    def execute(self, context, event: dict | None = None, started: str | None = None, wait: dict | None = None):
        if event is not None and event["status"] != "done":
            awaited = Wait(**wait)
            raise awaited.reported(awaited.timed_out(event) if event["status"] == "timeout"
                                   else awaited.failed(event["message"]))
        started = started or now_iso()
        try:
            result = self.run_step(started)
        except UpgradeError as verdict:  # says what happened and what to do: no retry changes it
            raise AirflowFailException(str(verdict)) from None
        result = dict(result) if isinstance(result, dict) else {"value": result}
        return {**result, "_started_at": started, "_finished_at": now_iso()}

    def run_step(self, started: str) -> Any:
        outcome = self.call(*self.inputs)
        if not inspect.isgenerator(outcome):
            return outcome
        try:
            awaited = next(outcome)
            while True:
                awaited = outcome.send(self.check_once(awaited, started))
        except StopIteration as finished:
            return finished.value

    def check_once(self, wait: Wait, started: str) -> dict:
        """The check's result if the wait is met; otherwise defer (which ends this execution)."""
        try:
            result = first_look(wait.check, wait.kwargs, wait.what, self.log)
        except CheckFailed as verdict:
            raise wait.reported(wait.failed(str(verdict))) from None
        if result["done"]:
            return result
        deadline = datetime.now(UTC) + timedelta(seconds=wait.timeout_seconds)
        self.log.info("waiting (deferred, no worker slot held) for %s, until %s at the latest", wait.what,
                      deadline.isoformat(timespec="seconds"))
        self.defer(trigger=PollTrigger(wait.check, wait.kwargs, wait.poll_interval, deadline.isoformat()),
                   method_name="execute", kwargs={"started": started, "wait": dataclasses.asdict(wait)})
        raise AssertionError("unreachable: defer() raises")


class PollSensor(BaseOperator):
    """Checks once; if not done, defers to a PollTrigger until done or `timeout_minutes` pass.

    Subclasses name the `check` function and provide check_kwargs() and timeout_message(event).
    """

    template_fields = ("timeout_minutes",)
    check: str

    def __init__(self, *, timeout_minutes: Any, poll_interval: float, **kwargs):
        super().__init__(**kwargs)
        self.timeout_minutes, self.poll_interval = timeout_minutes, poll_interval

    def on_done(self, event: dict) -> dict:
        return event

    def execute(self, context):
        result = first_look(self.check, self.check_kwargs(), self.task_id, self.log)
        if result["done"]:
            return self.on_done({**result, "polls": 1})
        deadline = datetime.now(UTC) + timedelta(minutes=float(self.timeout_minutes))
        self.log.info("waiting until %s at the latest", deadline.isoformat())
        self.defer(trigger=PollTrigger(self.check, self.check_kwargs(), self.poll_interval, deadline.isoformat()),
                   method_name="execute_complete")

    def execute_complete(self, context, event: dict):
        if event["status"] == "done":
            return self.on_done(event)
        if event["status"] == "timeout":
            raise AirflowException(self.timeout_message(event))
        raise AirflowException(f"{self.task_id}: {event['message']}")


class DrainSensor(PollSensor):
    """Wait until no active run is left on an environment. On timeout, either fail listing the
    runs (`ask_on_timeout=False`) or hand them to the drain decision (`ask_on_timeout=True`)."""

    check = "airlock.triggers:drain_check"
    ui_color = "#fdf2d0"

    def __init__(self, *, platform: str, url: str, environment: str, stale_after_minutes: float,
                 ask_on_timeout: bool = False, auth_conn_id: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.platform, self.url, self.environment = platform, url, environment
        self.stale_after_minutes, self.ask_on_timeout = stale_after_minutes, ask_on_timeout
        self.auth_conn_id = auth_conn_id

    def check_kwargs(self) -> dict[str, Any]:
        return {"platform": self.platform, "url": self.url, "stale_after_minutes": self.stale_after_minutes,
                "auth_conn_id": self.auth_conn_id, "environment": self.environment}

    def on_done(self, event: dict) -> dict:
        stale = [run["description"] for run in event["runs"] if run["stale"]]
        for description in stale:
            self.log.warning("%s: not waiting for %s", self.environment, description)
        return {"drained": True, "polls": event["polls"], "stale_runs_ignored": stale, "runs": [],
                "timeout_minutes": float(self.timeout_minutes)}

    def execute_complete(self, context, event: dict):
        if event["status"] == "timeout" and self.ask_on_timeout:
            self.log.warning(self.timeout_message(event))
            return {"drained": False, "polls": event["polls"], "timeout_minutes": float(self.timeout_minutes),
                    "runs": [run["description"] for run in event["runs"]]}
        return super().execute_complete(context, event)

    def timeout_message(self, event: dict) -> str:
        listing = "\n  - ".join(run["description"] for run in event["runs"])
        return (f"{self.environment}: {len(event['runs'])} run(s) still going after {self.timeout_minutes} min; "
                f"nothing was stopped. Wait for them or stop them, then clear this task:\n  - {listing}")


class MigrationJobSensor(PollSensor):
    """Wait for a Helm target's migration Job; its logs go into the task log, and a failed Job fails
    the task before the release is changed."""

    check = "airlock.drivers.helm:job_check"
    template_fields = ("timeout_minutes", "job")

    def __init__(self, *, environment: str, conn_id: str, namespace: str, job: str, **kwargs):
        super().__init__(**kwargs)
        self.environment, self.conn_id, self.namespace, self.job = environment, conn_id, namespace, job

    def check_kwargs(self) -> dict[str, Any]:
        return {"conn_id": self.conn_id, "namespace": self.namespace, "name": self.job}

    def on_done(self, event: dict) -> dict:
        from airlock.drivers.helm import finished_job

        return finished_job(self.environment, event)

    def timeout_message(self, event: dict) -> str:
        return (f"{self.environment}: migration job {self.namespace}/{self.job} still running after "
                f"{self.timeout_minutes} min; the release was not changed. Look at the job, then clear this task "
                "to wait again, or let the rollback run.")


class RolloutSensor(PollSensor):
    """Wait until every replica of a Helm target's server Deployment runs the new version."""

    check = "airlock.drivers.helm:rollout_check"
    template_fields = ("timeout_minutes", "image_tag", "deployment")

    def __init__(self, *, environment: str, conn_id: str, namespace: str, deployment: str, image_tag: str,
                 **kwargs):
        super().__init__(**kwargs)
        self.environment, self.conn_id, self.namespace = environment, conn_id, namespace
        self.deployment, self.image_tag = deployment, image_tag

    def check_kwargs(self) -> dict[str, Any]:
        return {"conn_id": self.conn_id, "namespace": self.namespace, "deployment": self.deployment,
                "image_tag": self.image_tag}

    def timeout_message(self, event: dict) -> str:
        return (f"{self.environment}: deployment {self.namespace}/{self.deployment} not rolled out with "
                f"image {self.image_tag} after {self.timeout_minutes} min ({event.get('rollout')}); the rollback "
                "restores the database and rolls the release back to its recorded revision.")


class RdsSnapshotSensor(PollSensor):
    """Wait until an RDS snapshot is available (taken with the server stopped, before migrating)."""

    check = "airlock.triggers:snapshot_check"
    template_fields = ("timeout_minutes", "snapshot_id")

    def __init__(self, *, aws_conn_id: str, instance_id: str, snapshot_id: str, **kwargs):
        super().__init__(**kwargs)
        self.aws_conn_id, self.instance_id, self.snapshot_id = aws_conn_id, instance_id, snapshot_id

    def check_kwargs(self) -> dict[str, Any]:
        return {"aws_conn_id": self.aws_conn_id, "instance_id": self.instance_id, "snapshot_id": self.snapshot_id}

    def timeout_message(self, event: dict) -> str:
        return (f"RDS snapshot {self.snapshot_id} of {self.instance_id} still {event['status']} after "
                f"{self.timeout_minutes} min; the server stays stopped and nothing was migrated. Clear this task "
                "to wait again, or roll back.")


class ProductionSlotOperator(BaseOperator):
    """Holds a slot of the platform's pool (this task's `pool`) by staying deferred until every other
    task of the run has ended (airlock.production_slot); the trigger ends the task itself. Under
    dag.test() no pool is enforced and a hold would wait for itself: it ends at once, saying so."""

    ui_color = "#ede7f6"

    def execute(self, context):
        if in_process_run():
            self.log.info("the DAG runs in one process (dag.test / airflow dags test): no pool is enforced, no slot "
                          "to hold")
            return {"held": False, "pool": self.pool}
        deadline = datetime.now(UTC) + timedelta(days=HOLD_DAYS)
        self.log.info("holding a slot of pool %s (deferred) until the rest of this run has ended", self.pool)
        self.defer(trigger=HoldTrigger("airlock.production_slot:run_over",
                                       {"dag_id": self.dag_id, "run_id": context["run_id"]}, 5,
                                       deadline.isoformat()),
                   method_name="execute_complete")

    def execute_complete(self, context, event: dict):
        """Not called: HoldTrigger ends the task in the triggerer."""
        return event


class SlotHeldSensor(PollSensor):
    """Production starts once this run holds a slot of the platform's pool: waits (deferred) while
    another production upgrade of the platform holds it."""

    check = "airlock.production_slot:slot_held"
    ui_color = "#ede7f6"

    def __init__(self, *, production_pool: str, platform: str, **kwargs):
        super().__init__(timeout_minutes=WAIT_DAYS * 24 * 60, poll_interval=5, **kwargs)
        self.production_pool, self.platform = production_pool, platform

    def check_kwargs(self) -> dict[str, Any]:
        return {"dag_id": self.dag_id, "run_id": get_current_context()["run_id"], "pool": self.production_pool}

    def execute(self, context):
        if in_process_run():
            return {"held": False, "pool": self.production_pool, "reason": "one process: no pool enforced"}
        return super().execute(context)

    def on_done(self, event: dict) -> dict:
        return {"held": True, "pool": self.production_pool, "polls": event["polls"]}

    def timeout_message(self, event: dict) -> str:
        return (f"no slot of pool {self.production_pool} within {WAIT_DAYS} days (the hold is {event.get('holder')}):"
                f" other production upgrades of {self.platform} hold them (Admin → Pools shows which tasks). "
                "Nothing of production was touched; clear production_slot to wait again.")


class WatchOperator(BaseOperator):
    """The post-upgrade watch, deferred to the triggerer for its whole length (minutes to days): health,
    version served and, less often, the smoke test, judged over a window. A verdict fails the task,
    and the conclude phase decides (ask while the server answers; roll back alone when it is down)."""

    template_fields = ("seconds", "version")
    ui_color = "#e8f5e9"

    def __init__(self, *, platform: str, url: str, environment: str, auth_conn_id: str | None, version: str,
                 seconds: Any, interval: float, smoke_interval: float, consecutive_failures: int,
                 unhealthy_seconds: float, **kwargs):
        super().__init__(**kwargs)
        self.probe = {"platform": platform, "url": url, "environment": environment, "auth_conn_id": auth_conn_id}
        self.version, self.seconds, self.interval, self.smoke_interval = version, seconds, interval, smoke_interval
        self.consecutive_failures, self.unhealthy_seconds = consecutive_failures, unhealthy_seconds

    def execute(self, context):
        seconds = float(self.seconds)
        self.log.info("watching %s for %g s in the triggerer (no worker slot held)", self.probe["environment"],
                      seconds)
        self.defer(trigger=WatchTrigger({**self.probe, "version": self.version}, seconds, self.interval,
                                        self.smoke_interval, self.consecutive_failures, self.unhealthy_seconds),
                   method_name="execute_complete")

    def execute_complete(self, context, event: dict):
        if event["status"] != "passed":
            raise AirflowFailException(f"{event['message']}. The rollback path takes over: a server that still "
                                       "answers is not rolled back without asking you (conclude.rollback_decision)")
        return {key: event[key] for key in ("probes", "seconds", "smoke_tests", "recovered_after_seconds")}


class MaintenanceWindowOperator(BaseOperator):
    """Waits for the environment's maintenance window (or the end of the teams' notice) in the
    triggerer (no worker slot held), then decides again (the windows or the upgrade log may have
    changed while it waited). `decide` (context → a slot: {environment, starts, …}) does the
    arithmetic; this operator only waits."""

    ui_color = "#e3ecfa"

    def __init__(self, *, decide: Callable[[Any], dict], **kwargs):
        super().__init__(**kwargs)
        self.decide = decide

    def execute(self, context, event: dict | None = None):
        now = datetime.now(UTC)
        slot = self.decide(context)
        starts = datetime.fromisoformat(slot["starts"])
        since = datetime.fromisoformat(event["since"]) if event else now
        if starts <= now + timedelta(seconds=1):
            waited = round((now - since).total_seconds(), 1)
            self.log.info("%s: %s%s: going on", slot["environment"],
                          "the wait is over" if "waiting_for" in slot else "inside a maintenance window",
                          f" after waiting {waited:g} s" if waited else "")
            return {**slot, "waited_seconds": waited, "went_at": now.isoformat(timespec="seconds")}
        why = slot.get("waiting_for") or (f"when a window opens that the expected {slot['expected_minutes']} min "
                                          f"fit in ({slot['expected_from']}); it closes at {slot['closes']}")
        self.log.info("%s: waiting (deferred, no worker slot held) until %s, %s", slot["environment"],
                      slot["starts"], why)
        self.defer(trigger=WaitUntilTrigger(starts.isoformat(), since.isoformat()), method_name="execute")


class RecordsDecision:
    """Pushes who answered a gate, what, and when under XCom key "decision", whatever the answer:
    on Reject the stock ApprovalOperator skips downstream tasks without pushing its result, and
    the upgrade log must still say who decided. It also says from when to when the gate waited
    (`_started_at`, `_finished_at`), so the run's timeline shows a long gate."""

    def execute(self, context):
        context["ti"].xcom_push(key="asked_at", value=now_iso())
        return super().execute(context)

    def execute_complete(self, context, event: dict[str, Any]):
        if "error" not in event:
            responded_at = event.get("responded_at")
            responded = responded_at.isoformat() if hasattr(responded_at, "isoformat") else responded_at
            ti = context["ti"]
            ti.xcom_push(key="decision", value={
                "chosen_options": list(event["chosen_options"]),
                "responded_by_user": event.get("responded_by_user"),
                "responded_at": responded,
                "_started_at": ti.xcom_pull(task_ids=ti.task_id, key="asked_at") or responded,
                "_finished_at": now_iso(),
            })
        return super().execute_complete(context, event)


class UpgradeApprovalOperator(RecordsDecision, ApprovalOperator):
    """The UAT gate between staging and production. `auto_approval` (context → a reason, or None)
    lets a patch upgrade through without asking when the target says auto_approve: patch; the
    decision recorded then says it was auto-approved, and why."""

    def __init__(self, *, auto_approval: Callable[[Any], str | None], **kwargs):
        super().__init__(**kwargs)
        self.auto_approval = auto_approval

    def execute(self, context):
        reason = self.auto_approval(context)
        if reason is None:
            return super().execute(context)
        self.log.info("auto-approved without asking: %s", reason)
        now = now_iso()
        decision = {"chosen_options": ["Approve"], "responded_by_user": None, "auto_approved": reason,
                    "responded_at": now, "_started_at": now, "_finished_at": now}
        context["ti"].xcom_push(key="decision", value=decision)
        return decision


class RollbackConfirmOperator(RecordsDecision, ApprovalOperator):
    """On-call confirms a rollback from a backup set after reading exactly what it does."""


class DrainDecisionOperator(RecordsDecision, HITLBranchOperator):
    """After the drain: goes straight on when the environment drained; otherwise asks on-call to
    wait longer, proceed anyway (interrupting the runs listed in the body) or abort. Nobody
    answering within `response_timeout` means abort (the operator's default option)."""

    WAIT, PROCEED, ABORT = "Wait longer", "Proceed anyway", "Abort"

    def __init__(self, *, drain_task_id: str, wait_task_id: str, proceed_task_id: str, abort_task_id: str,
                 **kwargs):
        super().__init__(options=[self.WAIT, self.PROCEED, self.ABORT], defaults=[self.ABORT],
                         options_mapping={self.WAIT: wait_task_id, self.PROCEED: proceed_task_id,
                                          self.ABORT: abort_task_id}, **kwargs)
        self.drain_task_id = drain_task_id

    def execute(self, context):
        drained = context["ti"].xcom_pull(task_ids=self.drain_task_id) or {}
        if drained.get("drained"):
            self.log.info("drained: nothing to ask")
            return self.do_branch(context=context, branches_to_execute=[self.options_mapping[self.PROCEED]])
        required = ((context["ti"].xcom_pull(task_ids="preflight.plan") or {}).get("release_notes") or {}).get(
            "drain_required")
        if required:  # the hop's notes say runs fail or the release is reinstalled: never proceed past runs
            self.log.warning("Proceed anyway is not offered for this hop: %s", required)
            self.options = [option for option in self.options if option != self.PROCEED]
        return super().execute(context)


class RollbackDecisionOperator(RecordsDecision, HITLBranchOperator):
    """After a failed watch: a server that no longer answers is rolled back without asking; one that
    still answers is not, because a rollback loses what was written since the upgrade (listed in the
    body). Nobody answering within `response_timeout` keeps the new version (nothing is lost)."""

    ROLL_BACK, KEEP = "Roll back (lose the writes listed)", "Keep the new version and investigate"

    def __init__(self, *, assess_task_id: str, rollback_task_id: str, keep_task_id: str, **kwargs):
        super().__init__(options=[self.ROLL_BACK, self.KEEP], defaults=[self.KEEP],
                         options_mapping={self.ROLL_BACK: rollback_task_id, self.KEEP: keep_task_id}, **kwargs)
        self.assess_task_id = assess_task_id

    def execute(self, context):
        assessed = context["ti"].xcom_pull(task_ids=self.assess_task_id) or {}
        if not assessed.get("answering", True):
            self.log.warning("the server does not answer at all: rolling back without asking (what it wrote is "
                             "kept in the post-upgrade backup first)")
            return self.do_branch(context=context, branches_to_execute=[self.options_mapping[self.ROLL_BACK]])
        return super().execute(context)
