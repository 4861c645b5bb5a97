"""Steps on a real MLflow on MariaDB, where the order of events matters: a re-run after a rollback
(every stop gets its own final backup), a write just before the stop (the fingerprint describes the
final backup), and a migration running past its bound."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from airlock import steps
from airlock.waits import run_waits
from harness import NEW, OLD, log_a_run, make_scenario, seeded_production

pytestmark = pytest.mark.integration
RUN = "manual__rerun"
PLAN = {"from": OLD, "to": NEW, "production": {"change": "major", "current": OLD, "target": NEW}}


@pytest.fixture
def production(tmp_path, mlflow_venvs, monkeypatch):
    with seeded_production(make_scenario("rerun", tmp_path, 5220, 5221), monkeypatch) as env:
        yield env


def upgrade_then_roll_back(env) -> dict:
    """stop → final backup → migrate → start the new version → roll back (what a failed run does)."""
    run_waits(steps.freeze(env, RUN, PLAN))
    final = steps.final_backup(env, RUN)
    steps.migrate(env, RUN)
    run_waits(steps.start(env, RUN))
    assert env.adapter.server_version() == NEW
    rolled_back = run_waits(steps.rollback(env, RUN))
    assert rolled_back["version"] == OLD and env.adapter.server_version() == OLD
    return final


def test_a_rerun_after_a_rollback_backs_up_again_and_loses_nothing_written_in_between(production):
    env = production
    steps.backup(env, steps.PREPARE, RUN, OLD)
    first = upgrade_then_roll_back(env)
    written = log_a_run(env.config.url)  # a user works on the old version after the first rollback
    with_new_run = env.adapter.fingerprint()

    second = upgrade_then_roll_back(env)  # on-call clears the run from `stop`

    assert second["backup_id"] != first["backup_id"]
    assert steps.read_manifest(env.store, second["backup_id"]).tables["runs"]["rows"] == \
        steps.read_manifest(env.store, first["backup_id"]).tables["runs"]["rows"] + 1
    assert env.adapter.fingerprint().digest == with_new_run.digest  # the run logged in between is there
    assert with_new_run.counts["runs"] == env.adapter.fingerprint().counts["runs"]
    assert written


def tables_named(refusal: str) -> list[str]:
    """The tables a refused adoption names: "… changed since backup … was taken (at least in tables a, b)"."""
    return refusal.split("(at least in tables ")[1].split(")")[0].split(", ")


def test_the_final_backup_adopts_the_serving_backup_when_nothing_was_written_after_it(production, caplog):
    """A run logged after phase 1 is in the backup taken while the drained server still serves; with
    nothing written after that, the final backup adopts its files (no dump or restore while the server
    is down), and the rollback restores exactly the data of before the upgrade from them."""
    caplog.set_level(logging.INFO)
    env = production
    steps.backup(env, steps.PREPARE, RUN, OLD)
    log_a_run(env.config.url)
    serving = steps.backup_before_stop(env, RUN, PLAN)
    assert serving["adopted_from"] is None  # the run logged since phase 1: dumped, and its result says why
    assert "runs" in tables_named(serving["not_adopted"]), serving
    before = env.adapter.fingerprint()

    run_waits(steps.freeze(env, RUN, PLAN))
    final = steps.final_backup(env, RUN)

    assert final["adopted_from"] == serving["backup_id"] and final["fingerprint_describes_backup"]
    assert final["not_adopted"] is None  # the serving set's reason is not inherited with its files
    proof = f"still holds exactly backup {serving['backup_id']}'s data"  # a progress line while the server is down
    assert any(proof in record.getMessage() for record in caplog.records), caplog.text
    assert serving["backup_id"] not in env.store.backup_ids()  # the final set holds its files: one copy kept
    steps.migrate(env, RUN)
    assert steps.verify_migrated_data(env, RUN)["equal_to_final_backup"]
    run_waits(steps.start(env, RUN))
    log_a_run(env.config.url)  # on the new version: not in the restored data
    assert run_waits(steps.rollback(env, RUN))["fingerprint_equal"]
    assert env.adapter.fingerprint().digest == before.digest


def test_a_write_after_the_serving_backup_is_dumped_in_the_final_backup_and_never_lost(production, caplog):
    """The serving backup adopts phase 1 (nothing changed), then a run is logged before the stop (a
    client after "Proceed anyway"): the final backup cannot adopt, says which tables changed since
    which backup (it now dumps with the server down), dumps, and keeps that run."""
    caplog.set_level(logging.INFO)
    env = production
    steps.backup(env, steps.PREPARE, RUN, OLD)
    serving = steps.backup_before_stop(env, RUN, PLAN)
    assert serving["adopted_from"] == steps.backup_id_for("production", steps.PREPARE, RUN)
    written = log_a_run(env.config.url)

    run_waits(steps.freeze(env, RUN, PLAN))
    final = steps.final_backup(env, RUN)

    assert final["adopted_from"] is None
    said = [record.getMessage() for record in caplog.records]
    refused = [line for line in said if serving["backup_id"] in line and "changed since" in line]
    assert refused and "runs" in tables_named(refused[0]), said
    assert serving["backup_id"] in final["not_adopted"] and "runs" in tables_named(final["not_adopted"]), final
    warned = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any(final["backup_id"] in line and "dumped and verified instead" in line for line in warned), warned
    assert steps.read_manifest(env.store, final["backup_id"]).tables["runs"]["rows"] == \
        steps.read_manifest(env.store, serving["backup_id"]).tables["runs"]["rows"] + 1
    steps.migrate(env, RUN)
    run_waits(steps.start(env, RUN))
    assert run_waits(steps.rollback(env, RUN))["fingerprint_equal"]
    experiments = [experiment["experiment_id"] for experiment in env.adapter.experiments()]
    assert written in {run["info"]["run_id"] for run in env.adapter.runs(experiments)}


def test_a_rollback_run_again_after_its_wait_restores_once_and_keeps_its_first_post_upgrade_set(production):
    """In the DAG a rollback defers while the old version comes up, and runs again from its start when
    the wait ends. That second run must not restore the database again (what was written since would
    be lost), nor take the post-upgrade set again from a database already restored."""
    env = production
    steps.backup(env, steps.PREPARE, RUN, OLD)
    run_waits(steps.freeze(env, RUN, PLAN))
    steps.final_backup(env, RUN)
    steps.migrate(env, RUN)
    run_waits(steps.start(env, RUN))
    log_a_run(env.config.url)  # written on the new version: the post-upgrade set keeps it
    first_try = steps.rollback(env, RUN)
    wait = next(first_try)  # database restored, the old version starting: here the task defers
    first_try.close()
    assert wait.check == "airlock.triggers:serving_check" and OLD in wait.what
    kept = env.store.in_progress()["post_upgrade"]
    assert kept["written_since_upgrade"]
    with env.database.connect() as conn:
        conn.cursor().execute("CREATE TABLE airlock_written_after_the_restore (id INT)")

    rolled_back = run_waits(steps.rollback(env, RUN))

    assert "airlock_written_after_the_restore" in env.database.table_stats()  # not restored a second time
    assert rolled_back["post_upgrade_backup"] == kept and rolled_back["version"] == OLD
    assert rolled_back["fingerprint_equal"] is True and env.store.in_progress() is None


def test_a_write_just_before_the_stop_is_described_by_the_fingerprint(production):
    """A client writes while the fingerprint's statistics are read, and again after the fingerprint and
    before the server stopped (after "Proceed anyway", a UI user, a client retrying): the first makes
    the API reads around the pass differ, so both are read again; the final backup holds the second, so
    Airlock takes the fingerprint again, and the healthy upgrade is proven equal, not changed."""
    env = production
    steps.backup(env, steps.PREPARE, RUN, OLD)
    real_stop, real_stats, written = env.driver.stop, env.database.table_stats, []
    runs_before = env.adapter.fingerprint().counts["runs"]

    def write_during_the_statistics(*args, **kwargs):  # the fingerprint's one statistics pass
        if not written:
            written.append(log_a_run(env.config.url))
        return real_stats(*args, **kwargs)

    def write_then_stop(state=None):
        if len(written) == 1:
            written.append(log_a_run(env.config.url))
        return real_stop(state)

    env.driver.stop, env.database.table_stats = write_then_stop, write_during_the_statistics
    run_waits(steps.freeze(env, RUN, PLAN))
    frozen = env.store.in_progress()
    assert frozen["fingerprint"]["counts"]["runs"] == runs_before + 1  # the write during the pass is in both
    assert frozen["fingerprint_tables"]["runs"]["rows"] == runs_before + 1
    env.database.table_stats = real_stats
    final = steps.final_backup(env, RUN)
    assert len(written) == 2 and final["fingerprint_describes_backup"]
    marker = env.store.in_progress()
    assert marker["fingerprint_tables"] == steps.read_manifest(env.store, final["backup_id"]).tables
    steps.migrate(env, RUN)
    run_waits(steps.start(env, RUN))
    assert steps.verify_fingerprint(env, RUN)["equal_to_pre_upgrade"]
    assert env.adapter.fingerprint().counts["runs"] == marker["fingerprint"]["counts"]["runs"]
    assert run_waits(steps.rollback(env, RUN))["fingerprint_equal"]


def test_writes_that_never_stop_leave_the_old_version_serving_and_the_environment_free(production):
    """A client keeps writing after the drain: the first final backup differs from the fingerprint,
    the old version is started to take it again, and the writes go on. The run gives up with the old
    version serving every write, the marker gone (a new run can start) and a message saying so."""
    env = production
    steps.backup(env, steps.PREPARE, RUN, OLD)
    real_stop, real_restore, writing = env.driver.stop, env.driver.restore, threading.Event()
    written: list[str] = []

    def keep_writing():
        while not writing.is_set():  # as fast as a client can: every fingerprint read overlaps a write
            written.append(log_a_run(env.config.url))

    def write_then_stop(state=None):
        if not written:
            written.append(log_a_run(env.config.url))
        return real_stop(state)

    def restore_then_keep_writing(*args):
        result = yield from real_restore(*args)  # the old version answers again
        threading.Thread(target=keep_writing, daemon=True).start()
        return result

    env.driver.stop, env.driver.restore = write_then_stop, restore_then_keep_writing
    run_waits(steps.freeze(env, RUN, PLAN))
    try:
        with pytest.raises(steps.UpgradeError, match=r"2\.16\.2 was started again and serves; nothing was "
                                                     r"migrated, and this run let go of the environment"):
            steps.final_backup(env, RUN)
    finally:
        writing.set()
        time.sleep(0.5)
    assert env.adapter.server_version() == OLD and env.driver.running_pid()
    assert env.store.in_progress() is None
    adapter = env.adapter  # every write landed and is served (the fingerprint reads only the newest runs)
    served = {run["info"]["run_id"] for run in adapter.runs([e["experiment_id"] for e in adapter.user_experiments()])}
    assert len(written) > 1 and set(written) <= served and len(served) >= 6 + len(written)
    assert steps.marker_of_run(env, RUN) is None


def test_a_migration_that_runs_past_its_bound_is_stopped_and_says_so(production):
    """Every wait has a bound: a migration still running after driver.migration_timeout_seconds is
    stopped, and the error says what that means (the rollback restores the database)."""
    from dataclasses import replace

    from airlock.drivers.process import DriverError, ProcessDriver

    env = production
    bounded = ProcessDriver(replace(env.config, driver=replace(env.config.driver, migration_timeout_seconds=1)),
                            env.adapter, env.database)
    copy = env.database.scratch("bound")
    copy.recreate({})
    try:
        started = time.monotonic()
        with pytest.raises(DriverError, match=r"did not finish within 1 s .* the rollback restores it"):
            bounded.migrate(NEW, database=copy)
        assert time.monotonic() - started < 30
    finally:
        copy.drop()


def test_a_start_that_never_answers_in_the_dag_is_stopped_and_its_log_ends_the_error(production):
    """In the DAG a start's wait runs in the triggerer; when it times out the task resumes on the
    worker, which stops the server that never answered and ends the error with its log's last lines
    (what on-call reads first), as a start outside the DAG does."""
    import dataclasses
    from dataclasses import replace

    from airlock.drivers.process import ProcessDriver
    from airlock.operators import StepOperator
    from airlock.waits import WaitFailed

    env = production
    env.driver.stop()
    slow = ProcessDriver(replace(env.config, driver=replace(env.config.driver, start_timeout_seconds=1)),
                         env.adapter, env.database)
    launch = slow.launch(NEW)
    wait = next(launch)  # spawned; the task would defer here, and the trigger times out
    pid = slow.running_pid()
    assert pid, "the new version's server was not started"
    task = StepOperator(task_id="start", call=lambda: None)
    with pytest.raises(WaitFailed) as failed:
        task.execute({}, event={"status": "timeout", "polls": 2}, started="2026-11-27T00:00:00Z",
                     wait=dataclasses.asdict(wait))
    message = str(failed.value)
    assert message.startswith(f"production: mlflow {NEW} answering at ")
    assert "not within 1 s" in message
    assert f"The server was stopped (SIGTERM to its process group {pid})" in message
    assert f"--- last lines of {slow.log_file} ---" in message
    deadline = time.monotonic() + 30
    while (slow.running_pid() or in_group(pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert slow.running_pid() is None, "the server that never answered is still running"
    assert not in_group(pid), f"processes the server spawned (e.g. gunicorn's workers) outlived it: {in_group(pid)}"


def in_group(pgid: int) -> list[int]:
    """The live processes of a process group (zombies, which hold nothing, left out)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, _ppid, group = stat.rsplit(")", 1)[1].split()[:3]
            if int(group) == pgid and state != "Z":
                members.append(int(entry.name))
    return members
