"""Notifications through Airflow's SmtpNotifier and HttpNotifier, to a real local SMTP server and a
webhook receiver: what arrives, and that a channel that is down does not fail the task."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from airlock.config_operations import NotifyConfig
from airlock.notify import tell_outcome
from receivers import Inbox, Webhook, wait_for

RECORD = {"target": "team_a", "run_id": "manual__2026-11-27", "outcome": "staging_failed", "from": "2.16.2",
          "to": "3.17.2", "detail": "staging failed and was rolled back; production untouched"}
CONTEXT = {"dag": SimpleNamespace(dag_id="airlock_upgrade__team_a")}
CONFIG = NotifyConfig(email_conn_id="airlock_test_smtp", to=("oncall@example.test",),
                      from_email="airlock@example.test", webhook_conn_id="airlock_test_hook")


@pytest.fixture
def receivers(monkeypatch):
    inbox, hook = Inbox().start(), Webhook().start()
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOCK_TEST_SMTP", inbox.connection())
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOCK_TEST_HOOK", hook.connection())
    yield inbox, hook
    inbox.stop()
    hook.stop()


def test_a_failed_upgrade_is_told_by_mail_and_webhook_with_its_versions(receivers):
    inbox, hook = receivers
    tell_outcome(CONFIG, RECORD, CONTEXT)
    subject = "[Airlock] team_a: upgrade STAGING FAILED (2.16.2 → 3.17.2)"
    (mail_subject, body, recipients), = wait_for(lambda: inbox.messages)
    assert (mail_subject, recipients) == (subject, ["oncall@example.test"])
    assert "staging failed and was rolled back; production untouched" in body
    assert "Run manual__2026-11-27 of airlock_upgrade__team_a" in body
    (post,) = hook.posts
    assert post["text"].startswith(f"*{subject}*\nstaging failed and was rolled back")


def test_only_the_events_asked_for_are_told(receivers):
    _, hook = receivers
    quiet = NotifyConfig(webhook_conn_id="airlock_test_hook", events=frozenset({"finished"}))
    tell_outcome(quiet, RECORD, CONTEXT)
    tell_outcome(quiet, {**RECORD, "outcome": "nothing_to_do"}, CONTEXT)
    assert hook.posts == []
    tell_outcome(quiet, {**RECORD, "outcome": "upgraded"}, CONTEXT)
    assert [post["text"].split("\n")[0] for post in hook.posts] == [
        "*[Airlock] team_a: upgrade UPGRADED (2.16.2 → 3.17.2)*"]


def test_a_channel_that_is_down_is_logged_and_the_other_still_told(receivers, monkeypatch, caplog):
    _, hook = receivers
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOCK_TEST_SMTP_DOWN", Inbox().connection())  # nothing listens there
    down = NotifyConfig(email_conn_id="airlock_test_smtp_down", to=("oncall@example.test",),
                        webhook_conn_id="airlock_test_hook")
    tell_outcome(down, RECORD, CONTEXT)  # does not raise
    assert len(hook.posts) == 1
    assert "could not send '[Airlock] team_a: upgrade STAGING FAILED (2.16.2 → 3.17.2)' through e-mail " \
           "(airlock_test_smtp_down)" in caplog.text
