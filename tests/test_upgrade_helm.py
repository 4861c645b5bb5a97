"""Helm targets end to end on a real Kubernetes API server, with real MLflow servers on MariaDB.

The API server has no controllers and no kubelet: `ProcessKubelet` plays them, running the real
MLflow version that each Deployment asks for on the environment's Service URL, and each migration
Job's real migration against the environment's database, in Pods whose logs the API server serves.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from airlock.helm import SdkHelm
from harness import (
    CONN_ID,
    ENVS,
    KUBE_CONN_ID,
    NEW,
    OLD,
    crash_server_while,
    fingerprints,
    install_and_seed,
    last_record,
    make_scenario,
    release,
    run_upgrade,
    served,
    stop_all,
    task_states,
    write_targets,
    xcom,
)
from kube import DEPLOYER
from kubelet import ProcessKubelet
from services import connection_uri_for_airflow

pytestmark = pytest.mark.integration
LEAST_PRIVILEGE_CONN_ID = "airlock_test_kube_least_privilege"
LIVE_SERVICE = "mlflow-live"
HOOK_JOB = "mlflow-db-migration"
VENDOR_CONVENTIONS = {"migration": "hook", "migration_job": HOOK_JOB, "set": {
    "dbMigration.hook": True, "config.enabled": True, "serviceAccount.create": True, "ingress.enabled": True,
    "autoscaling.enabled": True}}
"""What the vendors' charts do (tests/charts/mlflow-lite reproduces each): ZenML's migration hook
Job, a ConfigMap, a ServiceAccount, an Ingress and an HPA (so the Deployment leaves `replicas` out)."""
ROLE = Path(__file__).resolve().parents[1] / "include" / "airlock" / "kubernetes-role.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory, airflow_db, mlflow_venvs, kube_api):
    from kubernetes import client, config

    root = tmp_path_factory.mktemp("helm")
    scenarios = {name: make_scenario(name, root, port, port + 1, driver="helm", start_timeout_seconds=timeout,
                                     kube_conn_id=conn, helm_settings=dict.fromkeys(ENVS, settings))
                 for name, port, timeout, conn, settings in (
                     ("helm_happy", 5140, 120, KUBE_CONN_ID, {}),
                     ("helm_job_fails", 5142, 120, KUBE_CONN_ID, {}),
                     ("helm_never_ready", 5144, 25, KUBE_CONN_ID, {}),
                     ("helm_least_privilege", 5146, 120, LEAST_PRIVILEGE_CONN_ID, VENDOR_CONVENTIONS),
                     ("helm_hook_fails", 5160, 120, KUBE_CONN_ID, VENDOR_CONVENTIONS))}
    release_ports = {}
    for name, port in (("helm_blue_green", 5148), ("helm_switch_back", 5154)):
        release_ports[name] = {env: {"mlflow": port + 2 + i, "mlflow-green": port + 4 + i}
                               for i, env in enumerate(ENVS)}
        scenarios[name] = make_scenario(name, root, port, port + 1, driver="helm", helm_settings={
            env: {"method": "blue-green", "service": LIVE_SERVICE,
                  "release_urls": {release: f"http://127.0.0.1:{p}" for release, p in ports.items()}}
            for env, ports in release_ports[name].items()})
    targets_file = root / "targets.yaml"
    write_targets(targets_file, list(scenarios.values()))
    admin = config.new_client_from_config(config_file=str(kube_api.kubeconfig))
    core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    for scenario in scenarios.values():
        for env in ENVS:
            core.create_namespace({"metadata": {"name": scenario.namespace(env)}})
            if scenario.name in release_ports:  # the Service clients use belongs to neither release
                core.create_namespaced_service(scenario.namespace(env), {
                    "metadata": {"name": LIVE_SERVICE},
                    "spec": {"selector": {"app": "mlflow", "release": "mlflow"},
                             "ports": [{"port": 5000, "targetPort": 5000, "protocol": "TCP"}]}})
    bind_airlock_role(rbac, [scenarios["helm_least_privilege"].namespace(env) for env in ENVS])
    deployer_kubeconfig = kube_api.kubeconfig_for(kube_api.deployer_token, root / "deployer-kubeconfig")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRLOCK_TARGETS_FILE", str(targets_file))
        patch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", connection_uri_for_airflow())
        kubeconfigs = {KUBE_CONN_ID: kube_api.kubeconfig, LEAST_PRIVILEGE_CONN_ID: deployer_kubeconfig}
        for conn_id, kubeconfig in kubeconfigs.items():
            patch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(
                {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig)}}))
        kubelet = ProcessKubelet(kube_api, {
            s.namespace(env): s.env(env) for s in scenarios.values() for env in ENVS}, services={
            scenarios[name].namespace(env): ports for name, by_env in release_ports.items()
            for env, ports in by_env.items()})
        kubelet.start()
        yield scenarios, targets_file, kubelet, SdkHelm(str(kube_api.kubeconfig))
        kubelet.stop()
        stop_all(*scenarios.values())


def bind_airlock_role(rbac, namespaces: list[str]) -> None:
    """The documented Role, bound to the deployer user (and nothing else) in each namespace."""
    role = yaml.safe_load(ROLE.read_text())
    for namespace in namespaces:
        rbac.create_namespaced_role(namespace, role)
        rbac.create_namespaced_role_binding(namespace, {
            "metadata": {"name": "airlock-upgrader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": DEPLOYER}]})


def image_tags(helm: SdkHelm, scenario, env: str) -> list[str]:
    """The image tag of every revision of the release, oldest first."""
    found = release(scenario, env)
    return [helm.get_values(found, revision=entry["revision"])["image"]["tag"] for entry in helm.history(found)]


def upgrade_succeeds(world, name: str):
    """Install and seed the scenario's releases, run the upgrade, and check what every successful
    upgrade must show: a green run, the new version served through the Service, the same data."""
    scenarios, targets_file, kubelet, helm = world
    s = scenarios[name]
    install_and_seed(s, helm)
    before = fingerprints(s)

    run, gates = run_upgrade(f"airlock_upgrade__{name}", targets_file, {"target_version": NEW, "watch_seconds": 3})

    assert str(run.state) == "success", (task_states(run), kubelet.errors)
    assert gates.response["status"] == 200
    assert served(s, "staging") == served(s, "production") == NEW
    assert fingerprints(s) == before
    return s, run


def assert_migration_log(text: str) -> None:
    """The real migration's output, line by line, as the Job's Pod printed it."""
    lines = text.splitlines()
    assert lines[0] == f"process kubelet: migrating to {NEW} with ghcr.io/mlflow/mlflow:{NEW}", text
    assert any(line.endswith("INFO mlflow.store.db.utils: Updating database tables") for line in lines), text


def test_helm_upgrade_migrates_with_the_new_image_before_the_release_changes(world):
    _, _, kubelet, helm = world
    s, run = upgrade_succeeds(world, "helm_happy")
    for env in ENVS:  # the Job's Pod log, through the API server's pods/log, in the task's result
        assert_migration_log(xcom(run, f"{env}_upgrade.migration_job")["output_tail"])
    for env in ENVS:
        assert image_tags(helm, s, env) == [OLD, NEW]  # revision 2 is the upgrade
        namespace = s.namespace(env)
        events = [e for e in kubelet.events if e.startswith(namespace)]
        migrated = events.index(f"{namespace}/mlflow-migrate-{NEW.replace('.', '-')}-a1: Complete")
        assert events.index(f"{namespace}/mlflow: running {NEW}") > migrated  # the Job ran first
        assert [job["image"] for job in kubelet.jobs_seen if job["namespace"] == namespace] == \
            [f"ghcr.io/mlflow/mlflow:{NEW}"]  # one migration Job, with the NEW image
    assert last_record(s)["outcome"] == "upgraded"


def upgrade_whose_migration_fails(world, name: str):
    """Install and seed the scenario, then upgrade it while every Job the kubelet runs fails; the
    scenario, the run, and the fingerprints and staging's tables from before."""
    scenarios, targets_file, kubelet, helm = world
    s = scenarios[name]
    install_and_seed(s, helm)
    before, tables = fingerprints(s), s.databases["staging"].table_stats()
    kubelet.fail_jobs = True
    try:
        run, _ = run_upgrade(f"airlock_upgrade__{name}", targets_file, {"target_version": NEW, "watch_seconds": 3},
                             answer=None)
    finally:
        kubelet.fail_jobs = False
    return s, run, before, tables


def test_failed_migration_job_leaves_the_release_untouched_and_restores_the_database(world):
    _, _, kubelet, helm = world
    s, run, before, tables = upgrade_whose_migration_fails(world, "helm_job_fails")

    states = task_states(run)
    assert states["staging_upgrade.migration_job"] == "failed", states  # the deferrable wait saw the Job fail
    assert states["staging_upgrade.start"] == "upstream_failed", states
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
    assert states["staging_upgrade.migration_job"] == "success", states
    assert states["staging_upgrade.start"] == "success", states  # helm upgrade went through
    assert states["staging_upgrade.rollout"] == "failed", states  # the deferrable wait timed out
    assert states["staging_upgrade.rollback_staging"] == "success", (states, kubelet.errors)
    tags = image_tags(helm, s, "staging")
    assert tags[:2] == [OLD, NEW] and tags[-1] == OLD  # helm rollback to the recorded revision
    assert served(s, "staging") == OLD
    assert s.databases["staging"].table_stats() == tables  # the migrated schema is gone
    assert fingerprints(s) == before


def test_a_vendor_style_chart_upgrades_with_only_the_documented_role(world, kube_api):
    """The chart has the vendors' conventions (VENDOR_CONVENTIONS): the hook migrates, the HPA is
    held while the server is frozen, and the Role covers every object the chart creates."""
    from kubernetes import client, config

    deployer = client.CoreV1Api(config.new_client_from_config(
        config_file=str(kube_api.kubeconfig_for(kube_api.deployer_token, kube_api.root / "check-kubeconfig"))))
    with pytest.raises(client.exceptions.ApiException) as denied:  # the token really is restricted
        deployer.list_namespaced_secret("helm-happy-staging")
    assert denied.value.status == 403

    s, run = upgrade_succeeds(world, "helm_least_privilege")  # its connection holds only that token
    assert image_tags(world[3], s, "production") == [OLD, NEW]
    kubelet, admin = world[2], config.new_client_from_config(config_file=str(kube_api.kubeconfig))
    apps, batch, autoscaling = client.AppsV1Api(admin), client.BatchV1Api(admin), client.AutoscalingV1Api(admin)
    core, networking = client.CoreV1Api(admin), client.NetworkingV1Api(admin)
    for env in ENVS:
        namespace = s.namespace(env)
        core.read_namespaced_config_map("mlflow-config", namespace)  # created by helm with the Role's token
        core.read_namespaced_service_account("mlflow", namespace)
        assert networking.read_namespaced_ingress("mlflow", namespace).spec.rules[0].host == "mlflow.example.test"
        assert f"{env}_upgrade.migration_job" not in task_states(run)  # no Airlock Job: the chart's hook migrates
        assert [(job["name"], job["image"]) for job in kubelet.jobs_seen if job["namespace"] == namespace] == [
            (HOOK_JOB, f"ghcr.io/mlflow/mlflow:{OLD}"), (HOOK_JOB, f"ghcr.io/mlflow/mlflow:{NEW}")]
        # the hook's logs are kept, though Helm deleted its Job
        assert_migration_log(xcom(run, f"{env}_upgrade.start")["migration_hook"]["output_tail"])
        assert batch.list_namespaced_job(namespace).items == []
        assert xcom(run, f"{env}_upgrade.stop")["stop"]["autoscalers_held"] == ["mlflow"]
        hpa = autoscaling.read_namespaced_horizontal_pod_autoscaler("mlflow", namespace)  # back, as charted
        assert (hpa.spec.min_replicas, hpa.spec.max_replicas, hpa.spec.scale_target_ref.name) == (1, 3, "mlflow")
        # held: the HPA the install made was removed at the stop, and this one was made after it
        stop_started = datetime.fromisoformat(xcom(run, f"{env}_upgrade.stop")["_started_at"])
        assert hpa.metadata.creation_timestamp >= stop_started.replace(microsecond=0), hpa.metadata
        assert apps.read_namespaced_deployment("mlflow", namespace).spec.replicas == 1  # not left at zero


def test_failed_migration_hook_leaves_the_old_revision_and_restores_the_database(world, capfd, caplog):
    _, _, kubelet, helm = world
    s, run, before, tables = upgrade_whose_migration_fails(world, "helm_hook_fails")

    states = task_states(run)
    assert states["staging_upgrade.start"] == "failed", states  # helm upgrade: the hook failed
    assert states["staging_upgrade.rollback_staging"] == "success", (states, kubelet.errors)
    tags = image_tags(helm, s, "staging")
    assert tags[0] == OLD and tags[-1] == OLD, tags  # rolled back to the recorded revision
    assert served(s, "staging") == OLD
    assert s.databases["staging"].table_stats() == tables
    assert fingerprints(s) == before
    out, err = capfd.readouterr()
    told = out + err + caplog.text
    assert f"the chart's migration hook Job {s.namespace('staging')}/{HOOK_JOB} failed, so Helm left mlflow" in told
    assert "failing this Job on demand" in told  # the hook's own log, in the message on-call reads
    assert last_record(s)["outcome"] == "staging_failed"


def live_release(scenario, env: str) -> str:
    """The release whose pods the live Service selects."""
    return scenario.env(env).driver.kube.selector(scenario.namespace(env), LIVE_SERVICE)["release"]


def test_blue_green_switches_the_service_only_to_a_checked_green_and_keeps_blue(world):
    helm = world[3]
    s, run = upgrade_succeeds(world, "helm_blue_green")  # served through the live Service
    for env in ENVS:
        driver = s.env(env).driver
        assert live_release(s, env) == "mlflow-green"
        assert image_tags(helm, s, env) == [OLD]  # blue untouched, kept for a fast switch back
        assert driver.kube.replicas(s.namespace(env), "mlflow") == 0
        green = driver.release_at(1)
        assert [helm.get_values(green, revision=e["revision"])["image"]["tag"] for e in helm.history(green)] == [NEW]
    switched = xcom(run, "production_upgrade.switch")
    assert (switched["from"], switched["to"]) == ("mlflow", "mlflow-green")


def test_blue_green_switches_back_to_blue_and_its_data_when_green_fails(world):
    scenarios, targets_file, kubelet, helm = world
    s = scenarios["helm_switch_back"]
    install_and_seed(s, helm)
    before = fingerprints(s)
    namespace = s.namespace("production")
    crashed = crash_server_while("airlock_upgrade__helm_switch_back", "production_upgrade.watch",
                                 lambda: kubelet.local[(namespace, "mlflow-green")].running_pid())
    run, _ = run_upgrade("airlock_upgrade__helm_switch_back", targets_file,
                         {"target_version": NEW, "watch_seconds": 60})

    states = task_states(run)
    assert crashed, "green was never crashed"
    assert states["production_upgrade.switch"] == "success", states
    assert states["conclude.rollback_production"] == "success", (states, kubelet.errors)
    assert live_release(s, "production") == "mlflow"  # switched back
    assert served(s, "production") == OLD
    assert fingerprints(s)["production"] == before["production"]
    assert s.env("production").driver.kube.replicas(namespace, "mlflow-green") == 0
    assert last_record(s)["outcome"] == "rolled_back"
