"""Operating Airlock, on real MLflow servers (2.16.1 → 2.16.2): a patch upgrade as a schedule applies
it (the newest patch resolved from an air-gapped release file, the UAT gate passed without a human
because the target allows it for patches, a maintenance window that opens minutes after the run
starts), a run with nothing newer, and on-call rolling production back after the upgrade finished.

(The scheduler's own scheduled run, with nothing newer to apply, is in test_distributed.py.)
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from airlock import upgrade_log
from airlock.backups import read_manifest
from airlock.oncall import latest_final_backup
from airlock.stores.base import FINGERPRINT
from airlock.windows import DAYS
from conftest import platform_venvs
from harness import (
    CONN_ID,
    PLATFORMS,
    fingerprints,
    last_record,
    log_a_run,
    make_scenario,
    run_rollback,
    run_upgrade,
    served,
    start_and_seed,
    stop_all,
    task_states,
    write_targets,
    xcom,
)
from receivers import Inbox, Webhook, wait_for
from services import connection_uri_for_airflow

pytestmark = pytest.mark.integration
OLD_PATCH, NEW_PATCH = "2.16.1", "2.16.2"


def window_opening(at: datetime, minutes: int) -> dict:
    """A maintenance window (UTC) that opens at `at` (to the minute) and lasts `minutes`."""
    return {"days": [DAYS[at.weekday()]], "start": f"{at:%H:%M}",
            "end": f"{at + timedelta(minutes=minutes):%H:%M}", "timezone": "UTC"}


BASE_URL = "http://airflow.example.test:8080"
NOTIFY = {"email": {"conn_id": "airlock_it_smtp", "to": ["oncall@example.test"], "from": "airlock@example.test"},
          "webhook": {"conn_id": "airlock_it_hook"}}


@pytest.fixture(scope="module")
def told():
    """Where the target's notifications go: a local SMTP server and a webhook receiver."""
    inbox, hook = Inbox().start(), Webhook().start()
    yield inbox, hook
    inbox.stop()
    hook.stop()


def heard(told, subject: str) -> tuple[str, str]:
    """The e-mail's body and the webhook's text of the notification with this subject."""
    inbox, hook = told
    mails = wait_for(lambda: [body for s, body, _ in inbox.messages if s == subject])
    posts = [post["text"] for post in hook.posts if post["text"].startswith(f"*{subject}*")]
    assert len(mails) == len(posts) == 1, (subject, inbox.messages, hook.posts)
    return mails[0], posts[0]


NOTICE_HOURS = 0.01
"""The teams are told 36 s before production's upgrade may start (the guides ask for a week)."""


def teams_of(root) -> dict:
    """Two teams: churn pins a client that works with the patch, legacy one from MLflow 1."""
    for team, pin in (("churn", OLD_PATCH), ("legacy", "1.30.0")):
        (root / team).mkdir()
        (root / team / "requirements.txt").write_text(f"pandas>=2\nmlflow=={pin}\n")
    return {"notice_hours": NOTICE_HOURS, "members": {
        "churn": {"notify": {"email": {"conn_id": "airlock_it_smtp", "to": ["churn@example.test"]}},
                  "client_files": [str(root / "churn" / "requirements.txt")]},
        "legacy": {"notify": {"webhook": {"conn_id": "airlock_it_hook"}},
                   "client_files": [str(root / "legacy" / "requirements.txt")]}}}


@pytest.fixture(scope="module")
def world(tmp_path_factory, airflow_db, told):
    platform_venvs("mlflow", (OLD_PATCH, NEW_PATCH))
    root = tmp_path_factory.mktemp("schedules")
    releases = root / "mlflow-releases.txt"
    releases.write_text(f"# the site's mirror\n2.16.0\n{OLD_PATCH}\n{NEW_PATCH}\n2.17.0\n3.17.2\n")
    scenario = make_scenario("patchy", root, 5284, 5285, auth=None)
    scenario = replace(scenario, platform=replace(PLATFORMS["mlflow"], old=OLD_PATCH, new=NEW_PATCH), settings={
        "schedule": {"cron": "0 3 * * 1", "timezone": "Europe/Berlin"}, "auto_upgrade": "patch",
        "auto_approve": "patch", "releases": {"file": str(releases)}, "notify": NOTIFY,
        "teams": teams_of(root)})
    targets_file = root / "targets.yaml"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRLOCK_TARGETS_FILE", str(targets_file))
        patch.setenv("AIRFLOW_CONN_AIRLOCK_IT_SMTP", told[0].connection())
        patch.setenv("AIRFLOW_CONN_AIRLOCK_IT_HOOK", told[1].connection())
        patch.setenv("AIRFLOW__API__BASE_URL", BASE_URL)
        patch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", connection_uri_for_airflow())
        write_targets(targets_file, [scenario])
        yield scenario, targets_file
        stop_all(scenario)


def test_a_patch_is_auto_approved_and_staging_waits_for_its_window(world, told):
    scenario, targets_file = world
    start_and_seed(scenario)
    before = fingerprints(scenario)
    now = datetime.now(UTC)
    opens = (now + timedelta(minutes=3)).replace(second=0, microsecond=0)  # 2-3 min from now: after the
    # backups and the checks (about 20 s idle, past a minute on a loaded machine), so staging waits for it
    scenario.environment_settings = {
        "staging": {"maintenance": {"expected_minutes": 5, "windows": [window_opening(opens, 30)]}},
        "production": {"maintenance": {"expected_minutes": 5, "windows": [window_opening(now - timedelta(minutes=5),
                                                                                          120)]}}}
    write_targets(targets_file, [scenario])

    run, gate = run_upgrade("airlock_upgrade__patchy", targets_file, {"watch_seconds": 3}, answer=None)

    states = task_states(run)
    assert str(run.state) == "success", states
    assert served(scenario, "staging") == served(scenario, "production") == NEW_PATCH
    assert fingerprints(scenario) == before
    plan = xcom(run, "preflight.plan")
    assert (plan["from"], plan["to"], plan["production"]["change"]) == (OLD_PATCH, NEW_PATCH, "patch")
    assert plan["release_source"] == f"file {scenario.root.parent / 'mlflow-releases.txt'}"
    assert plan["newest_release"] == "3.17.2"  # what the Upgrades page counts "behind" from
    assert "uat.approval" not in gate.bodies  # no gate was opened for anybody to answer

    staging_window = xcom(run, "staging_upgrade.window")
    assert staging_window["starts"] == opens.isoformat(timespec="seconds")
    assert staging_window["waited_seconds"] >= 30, staging_window
    assert datetime.fromisoformat(xcom(run, "staging_upgrade.stop")["_started_at"]) >= opens
    announced = xcom(run, "notice.announce")
    assert announced["told"] == ["churn", "legacy"]
    earliest = datetime.fromisoformat(announced["announced_at"]) + timedelta(hours=NOTICE_HOURS)
    assert datetime.fromisoformat(announced["earliest"]) == earliest
    production_window = xcom(run, "window.production")  # open, but not before the teams' notice is over
    assert production_window["waited_seconds"] >= 20, production_window
    assert datetime.fromisoformat(xcom(run, "production_upgrade.stop")["_started_at"]) >= earliest

    record = last_record(scenario)
    assert (record["outcome"], record["from"], record["to"]) == ("upgraded", OLD_PATCH, NEW_PATCH)
    assert record["approver"] == f"auto-approved (patch upgrade {OLD_PATCH} → {NEW_PATCH}; the target says " \
                                 "auto_approve: patch)"
    assert record["windows"]["staging"]["waited_seconds"] == staging_window["waited_seconds"]
    assert record["windows"]["staging"]["expected_from"] == "the configured default (5 min)"
    mail, post = heard(told, f"[Airlock] patchy: upgrade UPGRADED ({OLD_PATCH} → {NEW_PATCH})")
    assert f"production upgraded {OLD_PATCH} → {NEW_PATCH}" in mail and run.run_id in mail
    assert f"production upgraded {OLD_PATCH} → {NEW_PATCH}" in post
    teams_were_told(told, scenario.root.parent, announced)


def teams_were_told(told, root, announced: dict) -> None:
    """Each team, on its own channel: the announcement (when, and what it must do), then, once
    production runs the patch, the exact client version it must move to, or that it need not."""
    inbox, hook = told
    before = f"[Airlock] patchy: mlflow will be upgraded {OLD_PATCH} → {NEW_PATCH} at {announced['starts']}"
    after = f"[Airlock] patchy: mlflow now runs {NEW_PATCH}: move your clients"
    churn = {subject: body for subject, body, to in inbox.messages if to == ["churn@example.test"]}
    assert set(churn) == {before, after}, inbox.messages
    assert f"- {root / 'churn' / 'requirements.txt'}: mlflow=={OLD_PATCH} (line 2) works with mlflow {NEW_PATCH}: " \
           "no need to move" in churn[after]
    legacy = [post["text"] for post in hook.posts if "legacy" in post["text"]]
    assert [text.split("\n")[0] for text in legacy] == [f"*{before}*", f"*{after}*"]
    assert f"- {root / 'legacy' / 'requirements.txt'}: mlflow==1.30.0 (line 2): " in legacy[1]
    assert f"move to mlflow=={NEW_PATCH}" in legacy[1]


def test_with_nothing_newer_the_run_ends_at_once_with_no_backup_and_no_gate(world):
    scenario, targets_file = world
    assert served(scenario, "production") == NEW_PATCH  # the newest patch of 2.16 in the release file
    backups = scenario.root / "backups"
    sets_before = sorted(p.name for p in backups.rglob("manifest.json"))

    run, gate = run_upgrade("airlock_upgrade__patchy", targets_file, {"watch_seconds": 3}, answer=None)

    states = task_states(run)
    assert str(run.state) == "success", states
    assert states["preflight.anything_to_do"] == "success"
    untouched = [task for task in states if task.startswith(("backup_and_prepare.", "compatibility.", "uat.",
                                                            "staging_upgrade.", "window.", "production_upgrade."))]
    assert {states[task] for task in untouched} == {"skipped"}, states
    assert sorted(p.name for p in backups.rglob("manifest.json")) == sets_before  # no backup taken
    assert gate.bodies == {}
    record = last_record(scenario)
    assert (record["outcome"], record["run_id"]) == ("nothing_to_do", run.run_id)
    assert record["detail"] == f"already at {NEW_PATCH}: nothing to upgrade"


def test_on_call_rolls_production_back_to_the_final_backup_of_the_finished_upgrade(world, told):
    """After the upgrade finished (no marker left), the rollback DAG restores the set taken just
    before production's migration: 2.16.1 serves again, with exactly that set's data; a run logged
    since is shown at the gate as lost and is kept in the backup taken before the restore."""
    scenario, targets_file = world
    production = scenario.env("production")
    assert production.store.in_progress() is None
    final = latest_final_backup(production, upgrade_log.read(scenario.root / "backups"))
    recorded = production.store.read_json(final, FINGERPRINT)["fingerprint"]["digest"]
    runs_in_set = read_manifest(production.store, final).tables["runs"]["rows"]
    log_a_run(production.config.url)  # written after the upgrade: what a rollback loses

    run, gate = run_rollback("patchy", targets_file, {"environment": "production"})

    states = task_states(run)
    assert str(run.state) == "success", states
    assert served(scenario, "production") == OLD_PATCH
    assert production.adapter.fingerprint().digest == recorded  # the set's data, proven
    body = gate.bodies["confirm"]
    assert f"{NEW_PATCH} → {OLD_PATCH}" in body
    assert f"backup set: `{final}`" in body
    assert f"`runs` {runs_in_set}" in body
    # what would be lost, by table: the user's run and the production smoke test's, both since the set
    assert f"- `runs`: {runs_in_set} → {runs_in_set + 2} rows" in body
    assert "the data fingerprint recorded" in body
    rolled_back = xcom(run, "rollback")
    assert rolled_back["fingerprint_equal"] is True
    kept = rolled_back["post_upgrade_backup"]["backup_id"]  # the database as it was, before the restore
    assert read_manifest(production.store, kept).tables["runs"]["rows"] == runs_in_set + 2
    assert production.store.in_progress() is None
    record = last_record(scenario)
    confirmed_by = xcom(run, "confirm", key="decision")["responded_by_user"]["name"]
    assert (record["kind"], record["outcome"], record["from"], record["to"], record["approver"]) == (
        "rollback", "rolled_back", NEW_PATCH, OLD_PATCH, confirmed_by)
    assert kept in record["detail"]
    link = f"{BASE_URL}/dags/airlock_rollback__patchy/runs/{run.run_id}/tasks/confirm/required_actions?map_index=-1"
    mail, post = heard(told, f"[Airlock] patchy: Roll back patchy production to {OLD_PATCH}?")
    assert link in mail and link in post
    assert "Waiting for: admin." in mail
    heard(told, f"[Airlock] patchy: rollback ROLLED BACK ({NEW_PATCH} → {OLD_PATCH})")
