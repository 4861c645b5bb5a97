"""Helm targets end to end on a real Kubernetes API server, with real MLflow servers on MariaDB.

The API server has no controllers and no kubelet: `ProcessKubelet` plays them, running the real
MLflow version that each Deployment asks for on the environment's Service URL, and each migration
Job's real migration against the environment's database.
"""

from __future__ import annotations

import json

import pytest
from airlock.helm import HelmRelease, SdkHelm, release_values
from harness import (
    CONN_ID,
    KUBE_CONN_ID,
    NEW,
    OLD,
    fingerprints,
    last_record,
    make_scenario,
    run_upgrade,
    seed,
    served,
    stop_all,
    task_states,
    write_targets,
)
from kubelet import ProcessKubelet
from services import connection_uri_for_airflow

pytestmark = pytest.mark.integration
ENVS = ("staging", "production")


@pytest.fixture(scope="module")
def world(tmp_path_factory, airflow_db, mlflow_venvs, kube_api):
    from kubernetes import client, config

    root = tmp_path_factory.mktemp("helm")
    scenarios = {name: make_scenario(name, root, port, port + 1, driver="helm", start_timeout_seconds=timeout)
                 for name, port, timeout in (("helm_happy", 5140, 120), ("helm_job_fails", 5142, 120),
                                             ("helm_never_ready", 5144, 25))}
    targets_file = root / "targets.yaml"
    write_targets(targets_file, list(scenarios.values()))
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kube_api.kubeconfig)))
    for scenario in scenarios.values():
        for env in ENVS:
            core.create_namespace({"metadata": {"name": scenario.namespace(env)}})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRLOCK_TARGETS_FILE", str(targets_file))
        patch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", connection_uri_for_airflow())
        patch.setenv(f"AIRFLOW_CONN_{KUBE_CONN_ID.upper()}", json.dumps(
            {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kube_api.kubeconfig)}}))
        kubelet = ProcessKubelet(str(kube_api.kubeconfig), {
            (s.namespace(env), "mlflow"): s.env(env) for s in scenarios.values() for env in ENVS})
        kubelet.start()
        yield scenarios, targets_file, kubelet, SdkHelm(str(kube_api.kubeconfig))
        kubelet.stop()
        for scenario in scenarios.values():
            stop_all(scenario)


def release(scenario, env: str) -> HelmRelease:
    return scenario.env(env).driver.release


def install_and_seed(scenario, helm: SdkHelm) -> None:
    """Each environment's release at revision 1 with the old image, its server seeded by the old client."""
    for env in ENVS:
        helm.upgrade(release(scenario, env), release_values(release(scenario, env), OLD), "install", install=True)
        scenario.env(env).adapter.wait_healthy(180)
        seed(scenario, env)


def image_tags(helm: SdkHelm, scenario, env: str) -> list[str]:
    """The image tag of every revision of the release, oldest first."""
    found = release(scenario, env)
    return [helm.get_values(found, revision=entry["revision"])["image"]["tag"] for entry in helm.history(found)]


def test_helm_upgrade_migrates_with_the_new_image_before_the_release_changes(world):
    scenarios, targets_file, kubelet, helm = world
    s = scenarios["helm_happy"]
    install_and_seed(s, helm)
    before = fingerprints(s)

    run, gates = run_upgrade("airlock_upgrade__helm_happy", targets_file, {"target_version": NEW, "watch_seconds": 3})

    states = task_states(run)
    assert str(run.state) == "success", (states, kubelet.errors)
    assert gates.response["status"] == 200
    assert served(s, "staging") == served(s, "production") == NEW
    assert fingerprints(s) == before
    for env in ENVS:
        assert image_tags(helm, s, env) == [OLD, NEW]  # revision 2 is the upgrade
        namespace = s.namespace(env)
        events = [e for e in kubelet.events if e.startswith(namespace)]
        migrated = events.index(f"{namespace}/mlflow-migrate-{NEW.replace('.', '-')}: Complete")
        assert events.index(f"{namespace}/mlflow: running {NEW}") > migrated  # the Job ran first
        assert [job["image"] for job in kubelet.jobs_seen if job["name"].startswith("mlflow-migrate")
                and namespace in events[migrated]][-1].endswith(f":{NEW}")
    assert last_record(s)["outcome"] == "upgraded"


def test_failed_migration_job_leaves_the_release_untouched_and_restores_the_database(world):
    scenarios, targets_file, kubelet, helm = world
    s = scenarios["helm_job_fails"]
    install_and_seed(s, helm)
    before = fingerprints(s)
    tables = s.databases["staging"].table_stats()
    kubelet.fail_jobs = True
    try:
        run, _ = run_upgrade("airlock_upgrade__helm_job_fails", targets_file,
                             {"target_version": NEW, "watch_seconds": 3}, answer=None)
    finally:
        kubelet.fail_jobs = False

    states = task_states(run)
    assert states["staging_upgrade.migrate"] == "failed", states
    assert states["staging_upgrade.rollback_staging"] == "success", (states, kubelet.errors)
    assert NEW not in image_tags(helm, s, "staging")  # never upgraded; the rollback re-applied revision 1
    assert served(s, "staging") == OLD
    assert s.databases["staging"].table_stats() == tables
    assert fingerprints(s) == before
    assert last_record(s)["outcome"] == "staging_failed"


def test_rollout_that_never_becomes_ready_rolls_back_release_and_database(world):
    scenarios, targets_file, kubelet, helm = world
    s = scenarios["helm_never_ready"]
    install_and_seed(s, helm)
    before = fingerprints(s)
    tables = s.databases["staging"].table_stats()
    kubelet.never_ready.add(NEW)
    try:
        run, _ = run_upgrade("airlock_upgrade__helm_never_ready", targets_file,
                             {"target_version": NEW, "watch_seconds": 3}, answer=None)
    finally:
        kubelet.never_ready.discard(NEW)

    states = task_states(run)
    assert states["staging_upgrade.migrate"] == "success", states
    assert states["staging_upgrade.start"] == "failed", states
    assert states["staging_upgrade.rollback_staging"] == "success", (states, kubelet.errors)
    tags = image_tags(helm, s, "staging")
    assert tags[:2] == [OLD, NEW] and tags[-1] == OLD  # helm rollback to the recorded revision
    assert served(s, "staging") == OLD
    assert s.databases["staging"].table_stats() == tables  # the migrated schema is gone
    assert fingerprints(s) == before
