"""Airlock's operators; thin: the logic lives in steps, triggers and adapters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from airlock.triggers import DrainTrigger, blocking_runs


class DrainSensor(BaseOperator):
    """Wait, deferred, until no active run is left on an environment; fail listing them on timeout."""

    template_fields = ("timeout_minutes",)
    ui_color = "#fdf2d0"

    def __init__(self, *, platform: str, url: str, environment: str, timeout_minutes: Any,
                 poll_interval: float, stale_after_minutes: float, **kwargs):
        super().__init__(**kwargs)
        self.platform, self.url, self.environment = platform, url, environment
        self.timeout_minutes, self.poll_interval = timeout_minutes, poll_interval
        self.stale_after_minutes = stale_after_minutes

    def execute(self, context):
        runs = blocking_runs(self.platform, self.url, self.stale_after_minutes)
        if not [run for run in runs if not run["stale"]]:
            return self.drained(runs, polls=1)
        deadline = datetime.now(UTC) + timedelta(minutes=float(self.timeout_minutes))
        self.log.info("%s: waiting for %d run(s) until %s", self.environment, len(runs), deadline.isoformat())
        self.defer(trigger=DrainTrigger(self.platform, self.url, self.stale_after_minutes, self.poll_interval,
                                        deadline.isoformat()),
                   method_name="execute_complete")

    def execute_complete(self, context, event: dict):
        if event["status"] == "drained":
            return self.drained(event["runs"], event["polls"])
        if event["status"] == "timeout":
            listing = "\n  - ".join(run["description"] for run in event["runs"])
            raise AirflowException(
                f"{self.environment}: {len(event['runs'])} run(s) still going after {self.timeout_minutes} "
                f"min; nothing was stopped. Wait for them or stop them, then clear this task:\n  - {listing}")
        raise AirflowException(f"{self.environment}: could not read running runs: {event['message']}")

    def drained(self, runs: list[dict], polls: int) -> dict:
        stale = [run["description"] for run in runs if run["stale"]]
        for description in stale:
            self.log.warning("%s: not waiting for %s", self.environment, description)
        return {"drained": True, "polls": polls, "stale_runs_ignored": stale}


class UpgradeApprovalOperator(ApprovalOperator):
    """The UAT gate. Records the decision under XCom key "decision" whatever it is: on Reject the
    stock operator skips downstream tasks without pushing its result, and the upgrade log must
    still say who rejected and when."""

    def execute_complete(self, context, event: dict[str, Any]):
        if "error" not in event:
            responded_at = event.get("responded_at")
            context["ti"].xcom_push(key="decision", value={
                "chosen_options": list(event["chosen_options"]),
                "responded_by_user": event.get("responded_by_user"),
                "responded_at": responded_at.isoformat() if hasattr(responded_at, "isoformat") else responded_at,
            })
        return super().execute_complete(context, event)
