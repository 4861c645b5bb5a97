"""Helm values as Airlock builds them, what of a release goes into a backup set, and Helm processes
that hang or answer nonsense."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from airlock import helm
from airlock.drivers.helm import manifest_without_secrets
from airlock.helm import HelmError, HelmRelease, release_values, run_helm, sdk_answer
from airlock.redaction import redact_structure


def test_values_files_then_overrides_then_the_image_tag(tmp_path):
    base, env = tmp_path / "base.yaml", tmp_path / "prod.yaml"
    base.write_text("image: {repository: mlflow, tag: '1.0'}\nreplicas: 1\nresources: {cpu: 1}\n")
    env.write_text("replicas: 3\nresources: {memory: 2Gi}\n")
    release = HelmRelease("mlflow", "ml", "/charts/mlflow", values_files=[str(base), str(env)],
                          overrides={"server.workers": 4, "replicas": 2}, image_tag_path="image.tag")
    values = release_values(release, "3.17.2", {"migration": {"enabled": True}})
    assert values == {"image": {"repository": "mlflow", "tag": "3.17.2"}, "replicas": 2,
                      "resources": {"cpu": 1, "memory": "2Gi"}, "server": {"workers": 4},
                      "migration": {"enabled": True}}


def test_configuration_backup_keeps_no_secret_values():
    values = {"database": {"password": "s3cret", "host": "db"}, "auth": {"apiToken": "t0k"},
              "backendStoreUri": "mysql://u:p@db/ml", "image": {"tag": "2.16.2"}}
    redacted = redact_structure(values)
    assert redacted["database"] == {"password": "<redacted>", "host": "db"}
    assert redacted["auth"] == {"apiToken": "<redacted>"}
    assert redacted["backendStoreUri"] == "<redacted>"
    assert redacted["image"] == {"tag": "2.16.2"}
    manifest = yaml.safe_dump_all([
        {"kind": "Secret", "metadata": {"name": "db"}, "data": {"uri": "bXlzcWw6Ly91OnBAZGI="}},
        {"kind": "Deployment", "metadata": {"name": "mlflow"}}])
    kept = list(yaml.safe_load_all(manifest_without_secrets(manifest, [])))
    assert kept[0]["data"] == "<redacted>" and "bXlzcWw" not in manifest_without_secrets(manifest, [])
    assert kept[1] == {"kind": "Deployment", "metadata": {"name": "mlflow"}}


def test_migration_jobs_are_named_per_attempt_within_kubernetes_limits():
    """A re-run after a rollback must create a new Job (the old one is Complete: reusing it would skip
    the migration); a long chart Job name is shortened, never the part that tells attempts apart."""
    from airlock.drivers.helm import migration_job_name

    assert migration_job_name("mlflow-migrate", "3.17.2", 1) == "mlflow-migrate-3-17-2-a1"
    assert migration_job_name("mlflow-migrate", "3.17.2", 2) != migration_job_name("mlflow-migrate", "3.17.2", 1)
    long = migration_job_name("a-very-long-chart-generated-migration-job-name-for-mlflow-db", "3.17.2", 12)
    assert len(long) <= 63 and long.endswith("-3-17-2-a12") and "--" not in long


def test_a_helm_process_past_its_time_limit_is_stopped_with_what_to_check(monkeypatch):
    monkeypatch.setattr(helm, "HELM_GRACE_SECONDS", 0)
    release = HelmRelease("mlflow", "ml", "/charts/mlflow", timeout_seconds=1)
    with pytest.raises(HelmError) as hung:
        run_helm(["sleep", "30"], "helm upgrade of release mlflow in ml", release)
    message = str(hung.value)
    assert message.startswith("helm upgrade of release mlflow in ml: no answer within 1 s"), message
    assert "helm history mlflow -n ml" in message


@pytest.mark.parametrize(("stdout", "exit_code", "says"), [
    ("W1126 client-go warning: deprecated API\n", 0, "answered no JSON: 'W1126 client-go warning"),
    ("", 0, "exited 0: boom"),
    ('{"result": 1}\n', 2, "exited 2: boom"),
])
def test_an_sdk_answer_that_is_not_one_is_an_error_not_a_crash(stdout, exit_code, says):
    answer = sdk_answer(subprocess.CompletedProcess([], exit_code, stdout, "boom"))
    assert says in answer["error"]


def test_the_sdk_answer_is_its_last_line():
    assert sdk_answer(subprocess.CompletedProcess([], 0, 'walking chart\n{"result": [1, 2]}\n', "")) == {
        "result": [1, 2]}
