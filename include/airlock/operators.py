"""Airlock's operators; thin: the logic lives in steps, triggers and adapters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLBranchOperator
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from airlock.triggers import CheckFailed, PollTrigger, load_check


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
        try:
            result = load_check(self.check)(**self.check_kwargs())
        except CheckFailed:
            raise
        except Exception as error:
            self.log.warning("first look failed (%s); waiting on, with backoff", error)
            result = {"done": False}
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


class RecordsDecision:
    """Pushes who answered a gate, what, and when under XCom key "decision", whatever the answer:
    on Reject the stock ApprovalOperator skips downstream tasks without pushing its result, and
    the upgrade log must still say who decided."""

    def execute_complete(self, context, event: dict[str, Any]):
        if "error" not in event:
            responded_at = event.get("responded_at")
            context["ti"].xcom_push(key="decision", value={
                "chosen_options": list(event["chosen_options"]),
                "responded_by_user": event.get("responded_by_user"),
                "responded_at": responded_at.isoformat() if hasattr(responded_at, "isoformat") else responded_at,
            })
        return super().execute_complete(context, event)


class UpgradeApprovalOperator(RecordsDecision, ApprovalOperator):
    """The UAT gate between staging and production."""


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
