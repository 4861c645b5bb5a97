"""Bad input through the real interfaces: targets files as the DAG processor parses them, and teams'
requirement files as the compatibility phase reads them. (Trigger params sent to a running API
server: test_distributed.) Each case is refused with an error that says what and where, and never
echoes a value that came from the environment; nothing crashes.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

PLANTED = "Pl4nted-@/:%#-s3cret"
"""A secret in the DAG processor's environment, with characters that URL quoting changes."""
PLANTED_ENV = {"AIRLOCK_TEST_PLANTED": PLANTED, "AIRLOCK_TEST_PLANTED_URL": f"ftp://mlflow:21/{PLANTED}",
               "AIRLOCK_TEST_PLANTED_PATH": f"relative/{PLANTED}"}


def good_target(tmp: Path) -> dict:
    env = {name: {"url": f"http://127.0.0.1:{port}",
                  "driver": {"kind": "process", "state_dir": f"${{AIRLOCK_TEST_ROOT}}/{name}"},
                  "database": {"kind": "mysql", "conn_id": f"{name}_db", "database": f"mlflow_{name}"}}
           for name, port in (("staging", 5901), ("production", 5902))}
    return {"platform": "mlflow", "description": "Team MLflow", "approvers": ["alice"],
            "backup": {"location": str(tmp / "backups")}, "environments": env}


def setting(path: str, value, *, remove: bool = False):
    """A change to the good target: `path` is dotted (environments.production.url)."""
    def change(target: dict) -> dict:
        node = target
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        if remove:
            node.pop(last, None)
        else:
            node[last] = value
        return target
    return change


TARGETS_CASES = [
    # (id, change, where the error points, what it says)
    ("no approvers", setting("approvers", None, remove=True), "approvers", "is required"),
    ("empty approvers", setting("approvers", []), "approvers", "is required"),
    ("approver with spaces", setting("approvers", ["alice", "bob smith"]), "approvers[1]", "not an Airflow user"),
    ("unknown platform", setting("platform", "kubeflow"), "platform", "must be one of"),
    ("typo in a key", setting("drain.stale_after_minuts", 5), "drain.stale_after_minuts", "unknown setting"),
    ("NaN timeout", setting("drain.timeout_minutes", float("nan")), "drain.timeout_minutes", "finite"),
    ("infinite timeout", setting("drain.timeout_minutes", float("inf")), "drain.timeout_minutes", "finite"),
    ("absurd timeout", setting("drain.timeout_minutes", 10**12), "drain.timeout_minutes", "between"),
    ("negative poll", setting("drain.poll_interval_seconds", -1), "drain.poll_interval_seconds", "between"),
    ("number as text", setting("drain.timeout_minutes", "ten"), "drain.timeout_minutes", "must be a number"),
    ("boolean as number", setting("drain.timeout_minutes", True), "drain.timeout_minutes", "must be a number"),
    ("fractional count", setting("watch.consecutive_failures", 2.5), "watch.consecutive_failures", "whole number"),
    ("huge count", setting("watch.consecutive_failures", 10**6), "watch.consecutive_failures", "between"),
    ("keep no backups", setting("backup.keep_last", 0), "backup.keep_last", "between"),
    ("negative retention", setting("backup.keep_days", -1), "backup.keep_days", "between"),
    ("zero approval timeout", setting("approval.timeout_minutes", 0), "approval.timeout_minutes", "between"),
    ("not http", setting("environments.production.url", "ftp://mlflow:21"), "environments.production.url",
     "http(s) URL"),
    ("port too high", setting("environments.production.url", "http://mlflow:99999"), "environments.production.url",
     "no valid port"),
    ("port zero", setting("environments.production.url", "http://mlflow:0"), "environments.production.url",
     "no valid port"),
    ("empty port", setting("environments.production.url", "http://mlflow:"), "environments.production.url",
     "no valid port"),
    ("credentials in url", setting("environments.staging.url", f"http://u:{PLANTED}@mlflow:5000"),
     "environments.staging.url", "must not contain credentials"),
    ("newline in url", setting("environments.staging.url", "http://mlflow:5000\nHost: evil"),
     "environments.staging.url", "http(s) URL"),
    ("url from env is broken", setting("environments.staging.url", "${AIRLOCK_TEST_PLANTED_URL}"),
     "environments.staging.url", "${AIRLOCK_TEST_PLANTED_URL}"),
    ("unset variable", setting("environments.staging.url", "${AIRLOCK_TEST_NOT_SET}"), "environments.staging.url",
     "AIRLOCK_TEST_NOT_SET which is not set"),
    ("relative state dir", setting("environments.staging.driver.state_dir", "srv/mlflow"),
     "environments.staging.driver.state_dir", "absolute path"),
    ("state dir from env is relative", setting("environments.staging.driver.state_dir",
                                               "${AIRLOCK_TEST_PLANTED_PATH}"),
     "environments.staging.driver.state_dir", "its expansion is not shown"),
    ("unknown database kind", setting("environments.staging.database.kind", "oracle"),
     "environments.staging.database.kind", "must be one of"),
    ("bad connection id", setting("environments.staging.database.conn_id", "my db!"),
     "environments.staging.database.conn_id", "does not match"),
    ("sql in a database name", setting("environments.staging.database.database", "mlflow;DROP DATABASE x"),
     "environments.staging.database.database", "does not match"),
    ("newline after a database name", setting("environments.staging.database.database", "mlflow\n"),
     "environments.staging.database.database", "does not match"),
    ("sqlite relative path", setting("environments.staging.database", {"kind": "sqlite", "path": "mlflow.db"}),
     "environments.staging.database.path", "absolute path"),
    ("bucket name", setting("backup.location", "s3://Bad_Bucket/x"), "backup.location", "not an s3://"),
    ("relative backups", setting("backup.location", "backups"), "backup.location", "absolute path or an s3://"),
    ("unknown encryption", setting("backup.sse", "rot13"), "backup.sse", "must be one of"),
    ("kms key without kms", setting("backup.kms_key_id", "alias/x"), "backup.kms_key_id", "needs sse: aws:kms"),
    ("two signing keys", setting("backup.signing_key", {"variable": "a", "conn_id": "b"}), "backup.signing_key",
     "either a variable or a conn_id"),
    ("lower-case env name", setting("environments.staging.driver.env", {"lower": "x"}),
     "environments.staging.driver.env.lower", "not an environment variable name"),
    ("secret in driver env", setting("environments.staging.driver.env", {"DB_PASSWORD": PLANTED}),
     "environments.staging.driver.env.DB_PASSWORD", "looks like a secret"),
    ("list as env value", setting("environments.staging.driver.env", {"WORKERS": [PLANTED]}),
     "environments.staging.driver.env.WORKERS", "must be a string"),
    ("safe flag not a flag", setting("environments.staging.driver.env", {"WORKERS": {"value": "2", "safe": "y"}}),
     "environments.staging.driver.env.WORKERS.safe", "true or false"),
    ("unknown driver", setting("environments.staging.driver.kind", "docker"), "environments.staging.driver.kind",
     "must be one of"),
    ("absurd start timeout", setting("environments.staging.driver.start_timeout_seconds", 1e9),
     "environments.staging.driver.start_timeout_seconds", "between"),
    ("helm settings on a process driver", setting("environments.staging.driver.helm", {"release": "x"}),
     "environments.staging.driver.helm", "only for kind: helm"),
    ("login without a connection", setting("environments.staging.auth", {"user": "airlock"}),
     "environments.staging.auth.conn_id", "is required"),
    ("login connection id with spaces", setting("environments.staging.auth", {"conn_id": "mlflow login"}),
     "environments.staging.auth.conn_id", "does not match"),
    ("secret env given in clear", setting("environments.staging.driver.secret_env", {"FLASK_KEY": PLANTED}),
     "environments.staging.driver.secret_env.FLASK_KEY", "must be a mapping"),
    ("secret env with a bad name", setting("environments.staging.driver.secret_env", {"a-b": {"conn_id": "x"}}),
     "environments.staging.driver.secret_env.a-b", "not an environment variable name"),
    ("server args not a list", setting("environments.staging.driver.args", "--app-name basic-auth"),
     "environments.staging.driver.args", "must be a list"),
    ("queue with a space", setting("queue", "servers a"), "queue", "is not a queue name"),
    ("pool name with a space", setting("production_pool", "mlflow pool"), "production_pool", "does not match"),
    ("team nobody can reach", setting("teams", {"members": {"churn": {"notify": {}}}}), "teams.members.churn.notify",
     "names no channel"),
    ("team name with a space", setting("teams", {"members": {"churn team": {"notify": {}}}}),
     "teams.members.churn team", "is not a team name"),
    ("notice of a year", setting("teams", {"notice_hours": 8760}), "teams.notice_hours", "between"),
    ("breaking note without a version", setting("release_notes", [{"note": "x"}]), "release_notes[0].version",
     "is required"),
    ("relative artifact root", setting("environments.production.artifacts", {"location": "mlartifacts"}),
     "environments.production.artifacts.location", "must be an absolute path or an s3:// URL"),
    ("artifact bucket URL without a bucket", setting("environments.production.artifacts", {"location": "s3://"}),
     "environments.production.artifacts.location", "is not an s3://bucket/prefix URL"),
    ("AWS connection for a local artifact root", setting("environments.production.artifacts", {
        "location": "/srv/mlartifacts", "aws_conn_id": "aws_default"}),
     "environments.production.artifacts.aws_conn_id", "only for an s3:// location"),
    ("artifacts with an unknown key", setting("environments.production.artifacts", {
        "location": "/srv/mlartifacts", "copy": "never"}), "environments.production.artifacts.copy",
     "unknown setting"),
    ("bad DAG id to pause", setting("environments.staging.pause_dags", ["training dag"]),
     "environments.staging.pause_dags[0]", "is not a DAG id"),
    ("missing production", setting("environments.production", None, remove=True), "environments.production",
     "is required"),
    ("huge artifact count", setting("compatibility.recent_artifacts", 10**9), "compatibility.recent_artifacts",
     "between"),
    ("unknown policy", setting("compatibility.on_incompatible", "ignore"), "compatibility.on_incompatible",
     "must be one of"),
    ("relative client file", setting("compatibility.client_files", ["requirements.txt"]),
     "compatibility.client_files[0]", "absolute path"),
    ("megabyte description", setting("description", "x" * 100_000), "description", "characters long"),
    ("bad scratch connection", setting("scratch", {"conn_id": "a b"}), "scratch.conn_id", "does not match"),
    ("bad RDS instance", setting("environments.production.database.rds", {"instance_id": "Bad_Id"}),
     "environments.production.database.rds.instance_id", "does not match"),
    ("zero snapshot timeout", setting("environments.production.database.rds",
                                      {"instance_id": "db1", "snapshot_timeout_minutes": 0}),
     "environments.production.database.rds.snapshot_timeout_minutes", "between"),
    ("string for a mapping", setting("drain", "60"), "drain", "must be a mapping"),
]


def helm_case(change: dict, where: str, says: str):
    """A production environment on the Helm driver, with one setting changed."""
    def apply(target: dict) -> dict:
        helm = {"release": "mlflow", "namespace": "ml", "chart": "/charts/mlflow", "deployment": "mlflow",
                "service": "mlflow", "migration_job": "mlflow-migrate", **change}
        target["environments"]["production"]["driver"] = {"kind": "helm", "state_dir": "/srv/p", "helm": helm}
        return target
    return apply, where, says


HELM_CASES = [
    ("helm release name", *helm_case({"release": "MLflow_Prod"}, "environments.production.driver.helm.release",
                                     "does not match")),
    ("helm values path", *helm_case({"image_tag_path": "image..tag"},
                                    "environments.production.driver.helm.image_tag_path", "does not match")),
    ("image tag without the version", *helm_case({"image_tag": "latest"},
                                                  "environments.production.driver.helm.image_tag", "{version} once")),
    ("image tag with a shell", *helm_case({"image_tag": "v{version};reboot"},
                                          "environments.production.driver.helm.image_tag", "{version} once")),
    ("helm timeout", *helm_case({"timeout_seconds": float("nan")},
                                "environments.production.driver.helm.timeout_seconds", "finite")),
    ("blue-green url with a bad port", *helm_case(
        {"method": "blue-green", "release_urls": {"mlflow": "http://a:70000", "mlflow-green": "http://b:1"}},
        "environments.production.driver.helm.release_urls.mlflow", "no valid port")),
    ("unknown migration kind", *helm_case({"migration": "init-container"},
                                          "environments.production.driver.helm.migration", "one of job, hook")),
    ("migration hook with blue-green", *helm_case(
        {"migration": "hook", "method": "blue-green",
         "release_urls": {"mlflow": "http://a:5000", "mlflow-green": "http://b:5000"}},
        "environments.production.driver.helm.migration", "method: rolling only")),
]


@pytest.fixture
def dag_processor(tmp_path, monkeypatch):
    """Parse the DAG folder as the DAG processor does, with a targets file of our own."""
    from airflow.dag_processing.dagbag import DagBag
    from conftest import REPO

    for name, value in {**PLANTED_ENV, "AIRLOCK_TEST_ROOT": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    targets_file = tmp_path / "targets.yaml"
    monkeypatch.setenv("AIRLOCK_TARGETS_FILE", str(targets_file))

    def parse(text: str) -> tuple[dict, dict]:
        targets_file.write_text(text)
        bag = DagBag(dag_folder=str(REPO / "dags"))
        return bag.import_errors, bag.dags

    return parse, targets_file


def dump(targets: dict) -> str:
    return yaml.safe_dump({"targets": targets}, allow_unicode=True)


@pytest.mark.parametrize(("change", "where", "says"), [case[1:] for case in TARGETS_CASES + HELM_CASES],
                         ids=[case[0] for case in TARGETS_CASES + HELM_CASES])
def test_a_bad_targets_file_is_an_import_error_naming_file_target_and_field(dag_processor, tmp_path, change,
                                                                           where, says):
    parse, targets_file = dag_processor
    errors, dags = parse(dump({"team_ml": change(copy.deepcopy(good_target(tmp_path)))}))
    assert dags == {}
    [message] = errors.values()
    assert f"{targets_file}: target 'team_ml': {where}: " in message, message
    assert says in message, message
    assert PLANTED not in message and "Pl4nted" not in message, message


@pytest.mark.parametrize(("text", "says"), [
    ("targets: [", "not valid YAML"),
    ("- a list\n- at the top\n", "top level: must be a mapping"),
    ("targets: {}\n", "declares no targets"),
    ("targets:\n  Team-ML: {}\n", "target names must match"),
    ("targets:\n  \"team_ml\\n\": {}\n", "target names must match"),
    ("other: 1\ntargets: {}\n", "unknown setting"),
])
def test_a_broken_file_shape_is_an_import_error(dag_processor, text, says):
    parse, targets_file = dag_processor
    errors, dags = parse(text)
    assert dags == {}
    [message] = errors.values()
    assert str(targets_file) in message and says in message, message


def test_two_targets_on_one_database_is_an_import_error(dag_processor, tmp_path):
    parse, _ = dag_processor
    first, second = good_target(tmp_path), good_target(tmp_path)
    for env in second["environments"].values():
        env["url"] = env["url"].replace("590", "591")
        env["driver"]["state_dir"] += "-b"
    second["environments"]["staging"]["database"]["database"] = "mlflow_b"
    errors, _ = parse(dump({"team_a": first, "team_b": second}))
    [message] = errors.values()
    assert "target team_b: environments.production.database: reaches the same database" in message, message


def test_environment_references_stay_literal_where_they_are_shown(dag_processor, tmp_path):
    """${VAR} in a description (shown in the UI) is not expanded: a planted secret never reaches it."""
    parse, _ = dag_processor
    target = good_target(tmp_path)
    target["description"] = "Owned by ${AIRLOCK_TEST_PLANTED}"
    errors, dags = parse(dump({"team_ml": target}))
    assert errors == {}
    dag = dags["airlock_upgrade__team_ml"]
    assert "${AIRLOCK_TEST_PLANTED}" in dag.description and PLANTED not in dag.description
    state_dir = yaml.safe_load(dump({"x": target}))["targets"]["x"]["environments"]["staging"]["driver"]["state_dir"]
    assert state_dir.startswith("${AIRLOCK_TEST_ROOT}")  # and paths are expanded:
    from airlock.config import load_target
    assert load_target("team_ml").environment("staging").driver.state_dir == f"{tmp_path}/staging"


# -- teams' requirement files, as the compatibility phase reads them ---------------------------------
@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A team's repository, and a planted secret in the worker's environment."""
    monkeypatch.setenv("AIRLOCK_TEST_PLANTED", PLANTED)
    repo = tmp_path / "team-repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "sub").mkdir()
    (repo / "sub" / "base.txt").write_text("mlflow==2.16.2\n")
    return repo


def report_for(path: Path) -> dict:
    from airlock.config import CompatibilityConfig
    from airlock.platforms.mlflow import MlflowAdapter
    from airlock.steps import client_compatibility

    class Target:  # what client_compatibility reads of a target
        name = "team_ml"
        compatibility = CompatibilityConfig(client_files=[str(path)], on_incompatible="warn", resolve=False)

    report = client_compatibility(Target(), MlflowAdapter("http://unused"), {"from": "2.16.2", "to": "3.17.2"})
    [verdict] = report["files"]
    return verdict


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def include_chain(repo: Path, length: int) -> Path:
    for index in range(length):
        write_bytes(repo / f"c{index}.txt", f"-r c{index + 1}.txt\n".encode())
    return repo / "c0.txt"


REQUIREMENT_CASES = [
    ("include of the worker's environment", lambda repo: write_bytes(repo / "r.txt", b"-r /proc/self/environ\n"),
     "unreadable", "outside its checkout"),
    ("constraint outside the checkout", lambda repo: write_bytes(repo / "r.txt", b"-c /etc/passwd\n"),
     "unreadable", "outside its checkout"),
    ("include climbing out", lambda repo: write_bytes(repo / "r.txt", b"--requirement=../../../etc/passwd\n"),
     "unreadable", "outside its checkout"),
    ("symlink out of the checkout", lambda repo: (os.symlink("/proc/self/environ", repo / "env.txt"),
                                                  write_bytes(repo / "r.txt", b"-r env.txt\n"))[1],
     "unreadable", "outside its checkout"),
    ("a folder", lambda repo: repo / "sub", "unreadable", "not a file"),
    ("a binary file", lambda repo: write_bytes(repo / "requirements.txt", b"\x89PNG\r\n\x1a\n\xff\xfe" * 50),
     "unreadable", "not a text file"),
    ("NUL bytes", lambda repo: write_bytes(repo / "requirements.txt", b"mlflow==2.16.2\x00\n"),
     "unreadable", "not a text file"),
    ("two megabytes", lambda repo: write_bytes(repo / "requirements.txt", b"# padding\n" * 200_000),
     "unreadable", "larger than"),
    ("an include loop", lambda repo: (write_bytes(repo / "b.txt", b"-r a.txt\nmlflow==2.16.2\n"),
                                      write_bytes(repo / "a.txt", b"-r b.txt\n"))[1],
     "incompatible", "do not work with a 3.x server"),
    ("a chain of 150 includes", lambda repo: include_chain(repo, 150),
     "unreadable", "more than 100 included files"),
    ("a 5000-digit version", lambda repo: write_bytes(repo / "requirements.txt", b"mlflow==" + b"9" * 5000 + b"\n"),
     "incompatible", "is not a version number"),
    ("pyproject with a number for dependencies", lambda repo: write_bytes(
        repo / "pyproject.toml", b"[project]\nname = 'x'\ndependencies = 5\n"), "unreadable", "cannot be read"),
    ("a lock entry without version", lambda repo: write_bytes(
        repo / "poetry.lock", b"[[package]]\nname = 'mlflow'\n"), "unreadable", "cannot be read"),
    ("Pipfile.lock that is a list", lambda repo: write_bytes(repo / "Pipfile.lock", b"[1, 2]"),
     "unreadable", "cannot be read"),
    ("a missing file", lambda repo: repo / "nope.txt", "unreadable", "file not found"),
    ("a line that is not a requirement", lambda repo: write_bytes(repo / "requirements.txt", b"mlflow ==== 2\n"),
     "unreadable", "requirements.txt:1"),
    ("an include inside the checkout", lambda repo: write_bytes(repo / "r.txt", b"-r sub/base.txt\n"),
     "incompatible", "do not work with a 3.x server"),
]


@pytest.mark.parametrize(("make", "status", "says"), [case[1:] for case in REQUIREMENT_CASES],
                         ids=[case[0] for case in REQUIREMENT_CASES])
def test_a_teams_file_gets_a_verdict_never_a_crash_or_a_leak(checkout, make, status, says):
    verdict = report_for(make(checkout))
    assert verdict["status"] == status, verdict
    assert says in verdict["detail"], verdict
    assert PLANTED not in repr(verdict) and "AIRLOCK_TEST_PLANTED" not in repr(verdict)
