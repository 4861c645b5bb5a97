"""The upgrade DAG end to end on real MLflow 2.16.2 → 3.17.2 servers on MariaDB.

Each scenario has its own staging and production servers and databases. The gate is answered
through Airflow's REST endpoint. Assertions are about what a platform team cares about: the
version served, the data (fingerprints), production untouched, what the upgrade log says.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from airlock import steps
from airlock.backups import apply_retention, is_verified, load_backup, read_manifest
from airlock.drivers.process import port_open
from airlock.waits import run_waits
from harness import (
    CONN_ID,
    MLFLOW_NO_IDLE_CONNECTIONS,
    NEW,
    OLD,
    crash_server_while,
    fingerprints,
    last_record,
    log_a_run,
    make_scenario,
    run_upgrade,
    served,
    start_and_seed,
    stop_all,
    stop_servers,
    task_states,
    write_targets,
    xcom,
)
from platform_logins import conn_id_for
from services import TEST_PASSWORD, connection_uri_for_airflow, scratch_copies_on_its_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory, airflow_db, mlflow_venvs):
    root = tmp_path_factory.mktemp("upgrade")
    names = ["happy", "broken_staging", "rejected", "crash_after_upgrade", "rehearsal_fails", "pod_restart",
             "answers_but_broken", "wrong_login", "lossy_migration"]
    logins = {"happy": "basic", "rejected": "token", "wrong_login": "basic"}
    scenarios = {name: make_scenario(name, root, 5100 + 2 * i, 5101 + 2 * i, auth=logins.get(name))
                 for i, name in enumerate(names)}
    happy = scenarios["happy"]  # an MLflow 3 server as it starts by default: with its job runner's processes
    scenarios["happy"] = replace(happy, platform=replace(happy.platform, server_env=MLFLOW_NO_IDLE_CONNECTIONS))
    # long enough for the crashed server to come back (MLflow 3 starts in 5-15 s here), as a pod would
    scenarios["pod_restart"].settings["watch"] = {"interval_seconds": 1, "consecutive_failures": 2,
                                                  "unhealthy_seconds": 90}
    targets_file = root / "targets.yaml"
    write_targets(targets_file, list(scenarios.values()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRLOCK_TARGETS_FILE", str(targets_file))
        patch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", connection_uri_for_airflow())
        yield scenarios, targets_file
        stop_all(*scenarios.values())


@pytest.fixture(autouse=True)
def servers_stopped_after_each_test(world):
    """Each test starts and uses its own scenario's servers: stopped once it ends (their databases stay
    until the module's end), so the module never holds its eighteen servers at once (about 7 GB, with
    the happy run's job runners) beside the other sessions. Once, with all of them up, the kernel's
    OOM killer took the shared MariaDB and failed every session."""
    yield
    stop_servers(*world[0].values())


def secrets_leaked(run, scenario, captured: str) -> list[str]:
    """Places where the database password shows up: task output, XCom, Airlock's files."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    places = ["task output"] if TEST_PASSWORD in captured else []
    with create_session() as session:
        places += [f"xcom {row.task_id}" for row in session.query(XComModel).filter_by(run_id=run.run_id)
                   if TEST_PASSWORD in str(XComModel.deserialize_value(row))]
    for path in scenario.root.rglob("*"):
        if path.is_file() and path.suffix != ".zst" and TEST_PASSWORD.encode() in path.read_bytes():
            places.append(str(path))
    return places


def test_upgrade_reaches_both_environments_with_data_unchanged(world, capfd, caplog):
    scenarios, targets_file = world
    s = scenarios["happy"]
    start_and_seed(s)
    before = fingerprints(s)
    assert s.env("production").adapter.fingerprint().counts["runs"] == 6

    run, gate = run_upgrade("airlock_upgrade__happy", targets_file, {"target_version": NEW, "watch_seconds": 3})

    states = task_states(run)
    assert str(run.state) == "success", states
    assert gate.response["status"] == 200, gate.response
    assert "Estimated production downtime: about" in gate.body
    assert "migration (rehearsed on a copy of production)" in gate.body
    # The 3.17.2 client loaded the registered models (pyfunc, logged by 2.16.2) from upgraded staging.
    artifacts = xcom(run, "staging_upgrade.artifacts")
    assert (artifacts["client_version"], artifacts["checked"], artifacts["failed"]) == (NEW, 2, [])
    assert "2 of the 2 most recent artifacts load with the 3.17.2 client" in gate.body
    assert served(s, "staging") == served(s, "production") == NEW
    assert fingerprints(s) == before
    record = last_record(s)
    assert (record["outcome"], record["from"], record["to"], record["rolled_back"]) == ("upgraded", OLD, NEW, False)
    assert record["approver"]
    assert 0 < record["production_downtime_seconds"] < 300
    assert {"preflight", "backup_and_prepare", "staging_upgrade", "production_upgrade"} <= set(record["phase_seconds"])
    assert s.env("production").store.in_progress() is None
    assert s.env("staging").store.in_progress() is None
    markdown = (s.root / "backups" / "upgrade-log.md").read_text()
    assert f"| happy | {OLD} → {NEW} | upgraded | no |" in markdown
    out, err = capfd.readouterr()
    captured = out + err + caplog.text
    assert "production_upgrade.migrate" in captured  # the task output really was captured
    assert secrets_leaked(run, s, captured) == []


def test_failed_staging_migration_rolls_staging_back_and_never_touches_production(world, capfd, caplog):
    scenarios, targets_file = world
    s = scenarios["broken_staging"]
    start_and_seed(s)
    staging_db = s.databases["staging"]
    with staging_db.connect() as conn:  # a table that a 3.x migration will try to create
        staging_db.query(conn, "CREATE TABLE webhooks (id INT PRIMARY KEY)")
    before = fingerprints(s)
    production_pid = s.env("production").driver.running_pid()
    staging_tables = staging_db.table_stats()

    run, gate = run_upgrade("airlock_upgrade__broken_staging", targets_file,
                            {"target_version": NEW, "watch_seconds": 3}, answer=None)

    states = task_states(run)
    assert str(run.state) == "failed"
    assert states["staging_upgrade.migrate"] == "failed", states
    assert states["staging_upgrade.rollback_staging"] == "success", states
    assert gate.response is None  # the gate was never reached
    assert served(s, "staging") == OLD
    assert staging_db.table_stats() == staging_tables  # the half-migrated schema is gone
    assert fingerprints(s) == before
    assert s.env("production").driver.running_pid() == production_pid  # never stopped
    assert served(s, "production") == OLD
    assert all(state in ("upstream_failed", "None", "skipped") for task, state in states.items()
               if task.startswith("production_upgrade.")), states
    assert last_record(s)["outcome"] == "staging_failed"
    assert s.env("staging").store.in_progress() is None
    # the failed task's log ends with what to do now: for staging, mid-upgrade, while the marker was there
    out, err = capfd.readouterr()
    told = out + err + caplog.text
    final = xcom(run, "staging_upgrade.backup")["backup_id"]
    assert "WHAT NOW" in told
    assert (f"- staging is mid-upgrade (marker of this run, {OLD} → {NEW}). Clearing staging_upgrade.migrate is "
            "safe: it continues from what the last try left.") in told
    assert "clear staging_upgrade.rollback_staging" in told
    assert ("trigger airlock_rollback__broken_staging with "
            f'{{"environment": "staging", "backup_id": "{final}"}}') in told


def test_a_migration_that_loses_a_row_is_caught_before_the_new_server_starts_and_staging_restored(world, capfd,
                                                                                                 caplog):
    scenarios, targets_file = world
    s = scenarios["lossy_migration"]
    start_and_seed(s)
    staging_db = s.databases["staging"]
    count_tags = "SELECT COUNT(*) FROM tags"
    with staging_db.connect() as conn:  # a migration with a bug: one of its steps deletes a run's tag
        tags_before = staging_db.query(conn, count_tags)[0][0]
        staging_db.query(conn, "CREATE TRIGGER loses_a_tag AFTER UPDATE ON alembic_version FOR EACH ROW "
                               "DELETE FROM tags WHERE `key` = 'git_sha' LIMIT 1")
    before = fingerprints(s)
    production_pid = s.env("production").driver.running_pid()

    run, gate = run_upgrade("airlock_upgrade__lossy_migration", targets_file,
                            {"target_version": NEW, "watch_seconds": 3}, answer=None)

    states = task_states(run)
    assert str(run.state) == "failed"
    assert states["staging_upgrade.migrate"] == "success", states  # the migration itself said nothing
    assert states["staging_upgrade.migrated_data"] == "failed", states
    assert states["staging_upgrade.start"] in ("upstream_failed", "None"), states  # 3.17.2 never ran on it
    assert states["staging_upgrade.rollback_staging"] == "success", states
    assert gate.response is None
    assert served(s, "staging") == OLD
    with staging_db.connect() as conn:
        assert staging_db.query(conn, count_tags)[0][0] == tags_before
    assert fingerprints(s) == before
    assert s.env("production").driver.running_pid() == production_pid  # never stopped
    assert last_record(s)["outcome"] == "staging_failed"
    out, err = capfd.readouterr()
    told = out + err + caplog.text
    final = xcom(run, "staging_upgrade.backup")["backup_id"]
    assert f"staging: the migration to {NEW} lost or changed data of the final backup {final}: " in told
    assert "tags" in told.split("lost or changed data", 1)[1].split("\n", 1)[0]  # the table it lost a row of
    assert "The new server was not started; the rollback restores that backup." in told


def test_running_run_holds_the_drain_and_rejection_leaves_production_untouched(world):
    scenarios, targets_file = world
    s = scenarios["rejected"]
    start_and_seed(s)
    staging = s.env("staging").adapter  # the servers want a bearer token: a training job sends one too
    experiment = staging.experiments()[0]["experiment_id"]
    created = staging.request("POST", "/api/2.0/mlflow/runs/create",
                              {"experiment_id": experiment, "start_time": int(time.time() * 1000)})
    run_id = created["run"]["info"]["run_id"]
    finished_at: list[str] = []

    def finish_training_run():
        time.sleep(25)
        staging.request("POST", "/api/2.0/mlflow/runs/update",
                        {"run_id": run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)})
        finished_at.append(datetime.now(UTC).isoformat(timespec="seconds"))

    threading.Thread(target=finish_training_run, daemon=True).start()
    production_before = s.env("production").adapter.fingerprint().digest
    production_pid = s.env("production").driver.running_pid()

    run, gate = run_upgrade("airlock_upgrade__rejected", targets_file,
                            {"target_version": NEW, "watch_seconds": 3}, answer="Reject")

    states = task_states(run)
    assert gate.response["status"] == 200, gate.response
    # The drain held staging until the training run finished.
    stop_started = xcom(run, "staging_upgrade.stop")["_started_at"]
    assert finished_at and stop_started >= finished_at[0]
    assert served(s, "staging") == NEW
    # Rejected: production untouched, and the run says so instead of looking green.
    assert str(run.state) == "failed"
    assert states["conclude.report"] == "failed"
    assert all(states[t] == "skipped" for t in states if t.startswith("production_upgrade.")), states
    assert s.env("production").driver.running_pid() == production_pid
    assert served(s, "production") == OLD
    assert s.env("production").adapter.fingerprint().digest == production_before
    record = last_record(s)
    assert record["outcome"] == "rejected"
    assert "production untouched" in record["detail"]


def test_rehearsal_failure_stops_the_upgrade_before_any_server_is_touched(world):
    scenarios, targets_file = world
    s = scenarios["rehearsal_fails"]
    start_and_seed(s)
    production_db = s.databases["production"]
    with production_db.connect() as conn:  # production holds a table that a 3.x migration creates
        production_db.query(conn, "CREATE TABLE webhooks (id INT PRIMARY KEY)")
    pids = {env: s.env(env).driver.running_pid() for env in ("staging", "production")}
    before = fingerprints(s)

    run, gate = run_upgrade("airlock_upgrade__rehearsal_fails", targets_file,
                            {"target_version": NEW, "watch_seconds": 3}, answer=None)

    states = task_states(run)
    assert states["compatibility.rehearse_migration"] == "failed", states
    assert states["staging_upgrade.stop"] in ("upstream_failed", "skipped"), states
    assert gate.response is None
    assert {env: s.env(env).driver.running_pid() for env in pids} == pids  # nothing was stopped
    assert served(s, "staging") == served(s, "production") == OLD
    assert fingerprints(s) == before
    assert scratch_copies_on_its_server(production_db, "rehearsal") == []  # the rehearsal's copy is gone
    assert last_record(s)["outcome"] == "failed"


def test_write_during_the_watch_then_a_crash_rolls_back_and_keeps_the_write(world):
    """The new version serves, a user logs a run, the server crashes and stays down: rolled back
    without asking (nothing answers), the old data exactly, and the run written since the upgrade
    kept in a verified post-upgrade backup that the report names."""
    scenarios, targets_file = world
    s = scenarios["crash_after_upgrade"]
    start_and_seed(s)
    before = fingerprints(s)
    production = s.env("production")
    production_tables = s.databases["production"].table_stats()
    written: list[str] = []
    crashed = crash_server_while("airlock_upgrade__crash_after_upgrade", "production_upgrade.watch",
                                 production.driver.running_pid,
                                 before=lambda: written.append(log_a_run(production.config.url)))
    run, gate = run_upgrade("airlock_upgrade__crash_after_upgrade", targets_file,
                            {"target_version": NEW, "watch_seconds": 60}, answer="Approve")

    states = task_states(run)
    assert crashed and written, "the production server was never written to and crashed"
    assert gate.response["status"] == 200
    assert states["production_upgrade.migrate"] == "success", states
    assert states["production_upgrade.watch"] == "failed", states
    assert "conclude.rollback_decision" not in gate.bodies  # nothing answered: nobody was asked
    assert states["conclude.rollback_production"] == "success", states
    assert str(run.state) == "failed"  # a rollback is never a green run
    assert served(s, "production") == OLD
    assert s.databases["production"].table_stats() == production_tables  # the migrated schema is gone
    assert fingerprints(s)["production"] == before["production"]
    assert served(s, "staging") == NEW
    kept = xcom(run, "conclude.rollback_production")["post_upgrade_backup"]
    assert is_verified(production.store, kept["backup_id"])
    copy = s.databases["production"].scratch("check")  # the run logged on 3.17.2 is in the kept set
    try:
        load_backup(copy, production.store, read_manifest(production.store, kept["backup_id"]))
        with copy.connect() as conn:
            assert copy.query(conn, "SELECT run_uuid FROM runs WHERE run_uuid = %s", (written[0],)) == [(written[0],)]
    finally:
        copy.drop()
    runs = next(t for t in kept["written_since_upgrade"] if t["table"] == "runs")
    assert runs["rows_now"] > runs["rows_before"] == production_tables["runs"]["rows"]
    record = last_record(s)
    assert (record["outcome"], record["rolled_back"]) == ("rolled_back", True)
    assert kept["backup_id"] in record["detail"]
    assert record["production_downtime_seconds"] > 0
    assert production.store.in_progress() is None
    # retention keeps it (it is younger than keep_days), even beyond keep_last
    assert kept["backup_id"] in apply_retention(production.store, keep_last=0, keep_days=30)["kept"]


def test_a_server_that_comes_back_within_the_tolerance_is_not_rolled_back(world):
    """One failed probe is not a verdict: the server crashes and comes back (a pod restarting)."""
    scenarios, targets_file = world
    s = scenarios["pod_restart"]
    start_and_seed(s)
    production = s.env("production")
    restarted: list[dict] = []

    def restart_like_a_pod():
        """Once the killed process's workers have let go of the port, start the same version again (the
        process that started them may still be exiting: the start waits for it)."""
        deadline = time.monotonic() + 30
        while port_open(production.config.host, production.config.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        restarted.append(production.driver.start(NEW))

    crashed = crash_server_while("airlock_upgrade__pod_restart", "production_upgrade.watch",
                                 production.driver.running_pid, after=restart_like_a_pod)
    run, _ = run_upgrade("airlock_upgrade__pod_restart", targets_file, {"target_version": NEW, "watch_seconds": 20})

    states = task_states(run)
    assert crashed and restarted, "the server was not crashed and restarted"
    assert str(run.state) == "success", states
    assert xcom(run, "production_upgrade.watch")["recovered_after_seconds"], "the crash was never seen"
    assert states["conclude.rollback_production"] == "skipped", states
    assert served(s, "production") == NEW
    assert last_record(s)["outcome"] == "upgraded"


class Unhealthy(http.server.BaseHTTPRequestHandler):
    """A server that answers, but only 503 (a new version whose database connection broke)."""

    def do_GET(self):
        self.send_response(503)
        self.end_headers()
        self.wfile.write(b"unavailable")

    def log_message(self, *args):
        pass


def test_a_broken_server_that_still_answers_is_not_rolled_back_without_a_human(world):
    """After the upgrade a user logs a run; then production answers only 503. The gate shows what a
    rollback would lose; nobody-or-Keep leaves the new version and its data alone, marker kept."""
    scenarios, targets_file = world
    s = scenarios["answers_but_broken"]
    start_and_seed(s)
    production = s.env("production")
    runs_before = s.databases["production"].table_stats()["runs"]["rows"]
    stand_ins: list[http.server.HTTPServer] = []

    def answer_503():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the killed server's workers let go of the port
            try:
                server = http.server.HTTPServer((production.config.host, production.config.port), Unhealthy)
                break
            except OSError:
                time.sleep(0.05)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        stand_ins.append(server)

    crashed = crash_server_while("airlock_upgrade__answers_but_broken", "production_upgrade.watch",
                                 production.driver.running_pid, before=lambda: log_a_run(production.config.url),
                                 after=answer_503)
    try:
        run, gates = run_upgrade("airlock_upgrade__answers_but_broken", targets_file,
                                 {"target_version": NEW, "watch_seconds": 30}, answer="Approve",
                                 answers={"conclude.rollback_decision": "Keep the new version and investigate"})
    finally:
        for server in stand_ins:
            server.shutdown()
            server.server_close()

    states = task_states(run)
    assert crashed and stand_ins
    assert states["conclude.rollback_decision"] == "success", states
    body = gates.bodies["conclude.rollback_decision"]
    # the user's run and the smoke test's run; tables the migration rewrote are listed apart
    assert f"`runs`: {runs_before} → {runs_before + 2} rows" in body, body
    assert "changed with the same number of rows" in body and "`alembic_version`" not in body, body
    assert states["conclude.keep_new_version"] == "success", states
    assert states["conclude.rollback_production"] == "skipped", states
    assert str(run.state) == "failed"  # kept, but on-call must look
    marker = production.store.in_progress()
    assert marker and marker["run_id"] == run.run_id  # a rollback is still one clear away
    assert s.databases["production"].table_stats()["runs"]["rows"] == runs_before + 2  # nothing restored
    record = last_record(s)
    assert record["outcome"] == "kept_after_failed_watch"
    assert "clear conclude.rollback_decision" in record["detail"]
    # on-call decides later to roll back: the write is kept first, the old version serves the old data
    rolled_back = run_waits(steps.rollback(production, run.run_id))
    assert rolled_back["version"] == OLD and served(s, "production") == OLD
    assert rolled_back["post_upgrade_backup"]["written_since_upgrade"]


def test_a_wrong_or_missing_login_stops_the_run_at_preflight_naming_environment_and_connection(world, capfd):
    scenarios, targets_file = world
    s = scenarios["wrong_login"]
    start_and_seed(s)
    before = {env: (s.env(env).driver.running_pid(), served(s, env)) for env in ("staging", "production")}
    production_conn = conn_id_for(s.name, "production")
    variable = f"AIRFLOW_CONN_{production_conn.upper()}"
    good = os.environ[variable]
    unauthenticated = targets_file.with_name("targets-no-login.yaml")
    write_targets(unauthenticated, [replace(s, auth=None)])
    cases = {
        "wrong password": (targets_file, {variable: json.dumps({**json.loads(good), "password": "not-it"})},
                           [f"production: mlflow at {s.env('production', login=False).config.url} refused the user "
                            f"name and password of Airflow connection {production_conn!r}", "HTTP 401"]),
        "no such connection": (targets_file, {variable: None},
                               [f"Airflow connection {production_conn!r} (environments.production.auth.conn_id) "
                                "does not exist"]),
        "no login configured": (unauthenticated, {},
                                ["requires a login (HTTP 401) and this environment has none: set its auth.conn_id"]),
    }
    try:
        for case, (file, connections, expected) in cases.items():
            with pytest.MonkeyPatch.context() as patch:
                for name, value in connections.items():
                    patch.delenv(name) if value is None else patch.setenv(name, value)
                capfd.readouterr()
                run, _ = run_upgrade("airlock_upgrade__wrong_login", file, {"target_version": NEW}, answer=None)
                out, err = capfd.readouterr()
            states = task_states(run)
            assert str(run.state) == "failed", case
            assert states["preflight.validate"] == "failed", (case, states)
            worked = [task for task, state in states.items() if state == "success"
                      and not task.startswith(("preflight.", "conclude.")) and "rollback" not in task]
            assert worked == [], (case, worked)  # a rollback task finds nothing to roll back
            for text in [*expected, "Nothing was touched"]:
                assert text in out + err, (case, text)
            assert not (s.root / "backups" / "wrong_login").exists(), case  # no backup, no marker
            assert {env: (s.env(env).driver.running_pid(), served(s, env))
                    for env in ("staging", "production")} == before, case
    finally:
        os.environ[variable] = good
