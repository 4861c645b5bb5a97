"""Telling people: a gate waiting for them (with its link), and how an upgrade or a rollback ended,
through Airflow's own notifiers (SmtpNotifier, HttpNotifier to a Slack-compatible webhook), with the
secrets in the target's connections. A notification that cannot be sent is logged, never fatal:
an SMTP outage must not stop an upgrade half-way."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

from airlock.config_operations import NotifyConfig

log = logging.getLogger("airlock.notify")

OUTCOME_EVENTS = {"upgraded": "finished", "rolled_back": "rolled_back", "nothing_to_do": None, "planned": None,
                  "cancelled": None}
"""The event an outcome is told as; every other outcome is a failure."""


class AirlockNotifier(BaseNotifier):
    """One event, sent through each channel the target configured; `message(context)` gives the
    subject and the text."""

    def __init__(self, config: NotifyConfig, message: Callable[[Any], tuple[str, str]]):
        super().__init__()
        self.config, self.message = config, message

    def notify(self, context) -> None:
        subject, text = self.message(context)
        for name, channel in channels(self.config, subject, text):
            try:
                channel.notify(context)
                log.info("told %s: %s", name, subject)
            except Exception as error:
                log.warning("could not send %r through %s (%s); the upgrade goes on", subject, name, error)


def channels(config: NotifyConfig, subject: str, text: str) -> list[tuple[str, BaseNotifier]]:
    from airflow.providers.http.notifications.http import HttpNotifier
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    found = []
    if config.email_conn_id:
        html = "<pre>" + text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") + "</pre>"
        found.append((f"e-mail ({config.email_conn_id})", SmtpNotifier(
            to=list(config.to), from_email=config.from_email, subject=subject, html_content=html,
            smtp_conn_id=config.email_conn_id)))
    if config.webhook_conn_id:
        found.append((f"webhook ({config.webhook_conn_id})", HttpNotifier(
            http_conn_id=config.webhook_conn_id, method="POST", json={"text": f"*{subject}*\n{text}"})))
    return found


def gate_link(context) -> str:
    """The gate's page in the Airflow UI (Required Actions), from [api] base_url."""
    try:
        return context["task"].generate_link_to_ui_from_context(context=context)
    except ValueError as error:
        return f"(no link: {error}; set [api] base_url)"


def gate_notifiers(config: NotifyConfig, event: str, target: str) -> list[BaseNotifier]:
    """For a gate's `notifiers`: told when the gate starts waiting, with its subject and link."""
    if not config.wants(event):
        return []

    def message(context) -> tuple[str, str]:
        task = context["task"]
        who = ", ".join(user["name"] for user in task.assigned_users or []) or "any user"
        return (f"[Airlock] {target}: {task.subject}",
                f"{task.subject}\nWaiting for: {who}. Answer here: {gate_link(context)}\n"
                f"Run {context['run_id']} of {context['dag'].dag_id}")

    return [AirlockNotifier(config, message)]


def tell_outcome(config: NotifyConfig, record: dict, context) -> None:
    """After the report: a finished upgrade, a rollback, or a failure (with what the log says)."""
    event = OUTCOME_EVENTS.get(record["outcome"], "failed")
    if event is None or not config.wants(event):
        return
    kind = "rollback" if record.get("kind") == "rollback" else "upgrade"
    subject = (f"[Airlock] {record['target']}: {kind} {record['outcome'].upper().replace('_', ' ')} "
               f"({record.get('from') or '?'} → {record.get('to') or '?'})")
    text = f"{record['detail']}\nRun {record['run_id']} of {context['dag'].dag_id}"
    AirlockNotifier(config, lambda _: (subject, text)).notify(context)
