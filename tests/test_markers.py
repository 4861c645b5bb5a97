"""The in-progress marker is taken exclusively (local files and S3 on moto), and a stale pid file
never makes Airlock signal a process it did not start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest
from airlock.stores.base import MarkerTaken
from airlock.stores.local import LocalBackupStore
from airlock.stores.s3 import S3BackupStore
from test_s3_store import BUCKET, s3_client  # noqa: F401 (fixture)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalBackupStore(tmp_path / "backups", "t", "production")
    client = request.getfixturevalue("s3_client")
    return S3BackupStore(client, f"s3://{BUCKET}/markers-{tmp_path.name}", "t", "production")


def marker(run_id: str) -> dict:
    return {"run_id": run_id, "from_version": "2.16.2", "to_version": "3.17.2"}


def test_two_runs_racing_for_the_marker_only_one_wins(store):
    """Both runs read 'no marker' and write at the same moment: exactly one may go on to stop the server."""
    barrier, results = threading.Barrier(8), {}

    def take(run_id: str) -> None:
        barrier.wait()
        try:
            store.mark_in_progress(marker(run_id))
            results[run_id] = "won"
        except MarkerTaken as error:
            results[run_id] = str(error)

    threads = [threading.Thread(target=take, args=(f"run_{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [run for run, result in results.items() if result == "won"]
    assert len(winners) == 1, results
    assert store.in_progress()["run_id"] == winners[0]
    loser = next(result for result in results.values() if result != "won")
    assert f"belongs to run '{winners[0]}'" in loser and "Nothing was stopped by this run" in loser


def test_a_run_updates_its_own_marker_but_never_another_runs(store):
    store.mark_in_progress(marker("run_a"))
    store.mark_in_progress({**marker("run_a"), "migration_started": True})
    assert store.in_progress()["migration_started"] is True
    with pytest.raises(MarkerTaken, match="belongs to run 'run_a'"):
        store.mark_in_progress(marker("run_b"))
    store.clear_in_progress("run_b")  # not run_b's: stays
    assert store.in_progress()["run_id"] == "run_a"
    store.clear_in_progress("run_a")
    assert store.in_progress() is None
    store.mark_in_progress(marker("run_b"))
    assert store.in_progress()["run_id"] == "run_b"


def test_stop_never_signals_a_process_airlock_did_not_start(tmp_path, monkeypatch):
    """A pid file left by a crash names a pid the system gave to something else: stop leaves it alone."""
    from airlock.config import load_targets
    from airlock.environment import open_environment

    monkeypatch.setenv("AIRLOCK_DATA_DIR", str(tmp_path))
    env = open_environment(load_targets()["mlflow_demo"], "staging")
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        env.driver.state_dir.mkdir(parents=True, exist_ok=True)
        for stale in (str(stranger.pid),  # the format of earlier versions: a bare pid
                      f'{{"pid": {stranger.pid}, "identity": {{"start_ticks": 1, "boot_id": "x"}}}}'):
            env.driver.pid_file.write_text(stale)
            assert env.driver.running_pid() is None
            assert env.driver.stop() == {"stopped": False, "reason": "not running"}
            assert stranger.poll() is None, "stop signalled a process Airlock did not start"
        env.driver.write_pid_file(stranger.pid)  # the same check accepts the process it recorded
        assert env.driver.running_pid() == stranger.pid
    finally:
        stranger.kill()
        stranger.wait()


KILLED_SERVER = "import time; ballast = bytearray(1 << 30); print('up', flush=True); time.sleep(300)"
"""A stand-in for a big server process: exiting frees 1 GB, so it is seen dying for a while after its kill."""


def test_a_start_moments_after_the_server_was_killed_starts_a_new_one_instead_of_keeping_the_dying_one(tmp_path):
    """A server killed (a crash, the OOM killer) is still exiting for a moment; a start then (on-call
    retrying at once) must not keep it as the server already running, whose wait then fails with
    "exited while starting": it waits for it to go and starts the version anew."""
    from airlock.config import load_targets
    from airlock.demo.fleet import demo_fleet, write_targets_file
    from airlock.environment import open_environment

    targets = load_targets(str(write_targets_file(tmp_path / "targets.yaml", demo_fleet(["killed"], tmp_path, 5302))))
    env = open_environment(targets["killed"], "staging")
    driver = env.driver
    killed = subprocess.Popen([sys.executable, "-c", KILLED_SERVER], start_new_session=True, stdout=subprocess.PIPE)
    try:
        assert killed.stdout.readline() == b"up\n"
        driver.state_dir.mkdir(parents=True, exist_ok=True)
        driver.write_pid_file(killed.pid)
        driver.record_file.write_text(json.dumps({"version": "2.16.2", "pid": killed.pid}))
        os.killpg(killed.pid, signal.SIGKILL)

        started = driver.start("2.16.2")

        assert not started.get("already_running") and started["pid"] != killed.pid
        assert driver.running_pid() == started["pid"]
        assert env.adapter.server_version() == "2.16.2"
    finally:
        driver.stop()
        killed.wait()
