"""What reaches a configuration backup, a task log or XCom carries no secret, whatever its name or shape."""

from __future__ import annotations

import pytest
import yaml
from airlock.config import ConfigError, load_target
from airlock.drivers.helm import finished_job, manifest_without_secrets
from airlock.platforms.base import Command
from airlock.redaction import redact_structure, redact_text

PLANTED = "Pl4nt@d/:%#pw"
"""Characters URL quoting changes, so a quoted copy is caught too."""


@pytest.mark.parametrize("values", [
    {"env": [{"name": "DB_PASSWORD", "value": PLANTED}]},
    {"extraEnv": [{"name": "MLFLOW_TRACKING_PWD", "value": PLANTED}, {"name": "LOG_LEVEL", "value": "info"}]},
    {"db": {"pass": PLANTED}},
    {"auth": {"basic": PLANTED}},
    {"apiToken": PLANTED},
    {"s3": {"secretAccessKey": PLANTED}},
    {"sso": {"clientSecret": PLANTED}},
    {"backendStore": "mysql+pymysql://mlflow:" + PLANTED.replace("@", "%40").replace("/", "%2F").replace("#", "%23")
                     + "@db:3306/mlflow"},
    {"args": ["server", f"--backend-store-uri=postgresql://ml:{PLANTED}@db/ml"]},
    {"extra": f"password={PLANTED}"},
])
def test_helm_values_and_env_lists_keep_no_secret(values):
    kept = yaml.safe_dump(redact_structure(values, [PLANTED]))
    assert PLANTED not in kept and "Pl4nt" not in kept, kept
    assert "<redacted>" in kept


def test_what_is_not_secret_stays_readable():
    values = {"image": {"tag": "3.17.2"}, "env": [{"name": "LOG_LEVEL", "value": "info"}],
              "url": "http://mlflow:5000", "kms_key_id": "alias/backups", "zenml": {"authScheme": "OAUTH2"}}
    assert redact_structure(values) == values


def test_a_deployments_env_in_the_release_manifest_is_masked():
    manifest = yaml.safe_dump_all([
        {"kind": "Secret", "metadata": {"name": "db"}, "stringData": {"uri": PLANTED}},
        {"kind": "Deployment", "spec": {"template": {"spec": {"containers": [{"name": "mlflow", "env": [
            {"name": "MLFLOW_DB_PASSWORD", "value": PLANTED}, {"name": "WORKERS", "value": "2"}]}]}}}}])
    kept = manifest_without_secrets(manifest, [PLANTED])
    assert PLANTED not in kept
    env = list(yaml.safe_load_all(kept))[1]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "MLFLOW_DB_PASSWORD", "value": "<redacted>"}, {"name": "WORKERS", "value": "2"}]


def test_migration_job_logs_are_masked_before_the_task_log_and_xcom():
    from urllib.parse import quote
    logs = (f"INFO connecting to mysql+pymysql://mlflow:{quote(PLANTED, safe='')}@db/mlflow\n"
            f"DEBUG settings password={PLANTED} token: {PLANTED}\nINFO done\n")
    result = finished_job("production", {"state": "succeeded", "job": "m", "image": "i:1", "logs": logs})
    assert "Pl4nt" not in repr(result) and "INFO done" in result["output_tail"]
    with pytest.raises(Exception) as failed:
        finished_job("production", {"state": "failed", "job": "m", "image": "i:1", "namespace": "ml", "logs": logs})
    assert "Pl4nt" not in str(failed.value) and "connecting to" in str(failed.value)


def test_a_targets_own_environment_values_are_shown_only_when_marked_safe(tmp_path):
    targets = tmp_path / "targets.yaml"
    env = {"url": "http://127.0.0.1:5999", "database": {"kind": "sqlite", "path": str(tmp_path / "x.db")},
           "driver": {"kind": "process", "state_dir": str(tmp_path / "s"),
                      "env": {"MLFLOW_EXTRA": PLANTED, "WORKERS": {"value": "4", "safe": True}}}}
    targets.write_text(yaml.safe_dump({"targets": {"t": {
        "platform": "mlflow", "approvers": ["admin"], "backup": {"location": str(tmp_path / "b")},
        "environments": {"staging": env, "production": {**env, "url": "http://127.0.0.1:5998",
                                                        "database": {"kind": "sqlite", "path": str(tmp_path / "y.db")},
                                                        "driver": {**env["driver"], "state_dir": str(tmp_path / "p")}}},
    }}}))
    driver = load_target("t", targets).environment("staging").driver
    assert driver.env == {"MLFLOW_EXTRA": PLANTED, "WORKERS": "4"}  # the server still gets the value
    shown = Command(["mlflow", "server"], driver.env, masked_env=frozenset(driver.env) - driver.safe_env).describe()
    assert shown["env"] == {"MLFLOW_EXTRA": "<redacted>", "WORKERS": "4"}


def test_a_secret_looking_name_in_driver_env_is_refused(tmp_path):
    targets = tmp_path / "targets.yaml"
    targets.write_text(yaml.safe_dump({"targets": {"t": {"platform": "mlflow", "approvers": ["a"],
                                                         "backup": {"location": "/b"}, "environments": {
        "staging": {"url": "http://h:1", "database": {"kind": "sqlite", "path": "/x.db"},
                    "driver": {"kind": "process", "state_dir": "/s", "env": {"DB_PASSWORD": PLANTED}}}}}}}))
    with pytest.raises(ConfigError) as error:
        load_target("t", targets)
    assert "driver.env.DB_PASSWORD" in str(error.value) and PLANTED not in str(error.value)


def test_quoted_forms_of_a_known_secret_are_masked():
    from urllib.parse import quote, quote_plus
    text = f"a {PLANTED} b {quote(PLANTED, safe='')} c {quote_plus(PLANTED)} d {quote(PLANTED)}"
    assert "Pl4nt" not in redact_text(text, [PLANTED])
