"""Targets files: a good file loads, every mistake names file, target and field."""

import textwrap

import pytest
from airlock.config import ConfigError, load_target, load_targets

GOOD = """
targets:
  team_a:
    platform: mlflow
    approvers: [alice, bob]
    backup: {location: /var/backups/airlock}
    drain: {timeout_minutes: 5, poll_interval_seconds: 2}
    environments:
      staging:
        url: http://127.0.0.1:5001
        driver: {kind: process, state_dir: /srv/mlflow/staging}
        database: {kind: sqlite, path: /srv/mlflow/staging/mlflow.db}
      production:
        url: http://127.0.0.1:5002
        driver: {kind: process, state_dir: /srv/mlflow/production}
        database: {kind: mysql, conn_id: mlflow_prod_db, database: mlflow}
"""


def write(tmp_path, text):
    path = tmp_path / "targets.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_good_file_loads_with_defaults(tmp_path):
    target = load_target("team_a", write(tmp_path, GOOD))
    assert target.dag_id == "airlock_upgrade__team_a"
    assert target.approvers == ["alice", "bob"]
    assert target.drain.stale_after_minutes == 1440
    assert target.allow_minor_skips is False
    production = target.environment("production")
    assert (production.host, production.port) == ("127.0.0.1", 5002)
    assert production.database.conn_id == "mlflow_prod_db"
    assert target.environment("staging").driver.artifact_root == "/srv/mlflow/staging/artifacts"


def test_environment_variables_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ROOT", "/data")
    text = GOOD.replace("/srv/mlflow/staging}", "'${MLFLOW_ROOT}/staging'}").replace(
        "/var/backups/airlock", "'${UNSET_VAR_FOR_TEST:-/fallback}'")
    target = load_target("team_a", write(tmp_path, text))
    assert target.environment("staging").driver.state_dir == "/data/staging"
    assert target.backup.location == target.log_dir == "/fallback"


@pytest.mark.parametrize(("change", "expected"), [
    (("kind: sqlite, path: /srv/mlflow/staging/mlflow.db", "kind: postgres"),
     "target 'team_a': environments.staging.database.kind: must be one of mysql, postgresql, sqlite (got 'postgres')"),
    (("platform: mlflow", "platform: kubeflow"), "target 'team_a': platform: must be one of mlflow"),
    (("timeout_minutes: 5", "timeout_minutes: soon"), "target 'team_a': drain.timeout_minutes: must be a number"),
    (("timeout_minutes: 5", "timout_minutes: 5"), "target 'team_a': drain.timout_minutes: unknown setting"),
    (("url: http://127.0.0.1:5002", "url: http://127.0.0.1:5001"),
     "target team_a: environments.production.url: reaches the same server as target team_a's "
     "environments.staging.url"),
    (("url: http://127.0.0.1:5002", "url: http://admin:pw@127.0.0.1:5002"),
     "environments.production.url: must not contain credentials"),
    (("conn_id: mlflow_prod_db, ", ""), "environments.production.database.conn_id: is required"),
    (("database: mlflow}", "database: 'ml;drop'}"), "environments.production.database.database: 'ml;drop'"),
    (("state_dir: /srv/mlflow/staging}", "state_dir: relative/dir}"), "driver.state_dir: must be an absolute path"),
    (("team_a:", "Team-A:"), "targets.Team-A: target names must match"),
    (("backup: {location: /var/backups/airlock}", "backup: {location: '${NOT_SET_ANYWHERE}'}"),
     "backup.location: uses environment variable NOT_SET_ANYWHERE which is not set"),
    (("platform: mlflow", "platform: sematic"),
     "environments.production.database.kind: sematic servers do not run on mysql (supported: sqlite, postgresql)"),
    (("state_dir: /srv/mlflow/production}", "state_dir: /srv/mlflow/production, env: {ZENML_STORE_URL: x}}"),
     "driver.env.ZENML_STORE_URL: looks like a secret; keep secrets in Airflow connections"),
    (("database: mlflow}", "database: mlflow}\n        pause_dags: ['bad dag']"),
     "environments.production.pause_dags[0]: 'bad dag' is not a DAG id"),
    (("drain: {", "compatibility: {client_files: [reqs.txt]}\n    drain: {"),
     "compatibility.client_files[0]: must be an absolute path on the worker"),
    (("drain: {", "compatibility: {on_incompatible: ignore}\n    drain: {"),
     "compatibility.on_incompatible: must be one of fail, warn"),
])
def test_errors_name_file_target_and_field(tmp_path, change, expected):
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ConfigError) as error:
        load_targets(path)
    assert str(error.value).startswith(str(path))
    assert expected in str(error.value)


HELM_PRODUCTION = """
        driver:
          kind: helm
          state_dir: /srv/mlflow/production
          helm: {release: mlflow, namespace: ml, chart: /charts/mlflow, deployment: mlflow, service: mlflow-live,
                 migration_job: mlflow-migrate, method: blue-green, release_urls: {mlflow: 'http://mlflow:5000'}}
"""


def test_helm_driver_settings_are_checked(tmp_path):
    text = GOOD.replace("""
        driver: {kind: process, state_dir: /srv/mlflow/production}""", HELM_PRODUCTION.rstrip())
    with pytest.raises(ConfigError, match=r"driver\.helm\.release_urls: blue-green needs the URL of each release: "
                                          r"mlflow, mlflow-green"):
        load_targets(write(tmp_path, text))
    fixed = text.replace("release_urls: {mlflow: 'http://mlflow:5000'}",
                         "release_urls: {mlflow: 'http://a:5000', mlflow-green: 'http://b:5000'}")
    helm = load_target("team_a", write(tmp_path, fixed)).environment("production").driver.helm
    assert (helm.releases, helm.deployments) == (("mlflow", "mlflow-green"), ("mlflow", "mlflow-green"))
    assert helm.migration_values == {"migration": {"enabled": True}}
    with pytest.raises(ConfigError, match=r"driver\.helm\.release: 'Team_A'"):
        load_targets(write(tmp_path, fixed.replace("release: mlflow,", "release: Team_A,")))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="targets file not found"):
        load_targets(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_targets(write(tmp_path, "targets: [unclosed"))


def test_unknown_target_lists_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"no target 'team_b' \(have: team_a\)"):
        load_target("team_b", write(tmp_path, GOOD))


def test_embedded_default_file_is_valid():
    assert "mlflow_demo" in load_targets()


SECOND = """
  team_b:
    platform: mlflow
    approvers: [carol]
    backup: {location: /var/backups/airlock}
    environments:
      staging:
        url: http://mlflow-b-staging:5000
        driver: {kind: process, state_dir: /srv/b/staging}
        database: {kind: sqlite, path: /srv/b/staging/mlflow.db}
      production:
        url: http://mlflow-b:5000
        driver: {kind: process, state_dir: /srv/b/production}
        database: {kind: mysql, conn_id: b_db, database: mlflow_b}
"""


@pytest.mark.parametrize(("change", "expected"), [
    (("url: http://mlflow-b:5000", "url: http://localhost:5002/"),
     "target team_b: environments.production.url: reaches the same server as target team_a's "
     "environments.production.url"),
    (("conn_id: b_db, database: mlflow_b", "conn_id: mlflow_prod_db, database: mlflow"),
     "target team_b: environments.production.database: reaches the same database as target team_a's "
     "environments.production.database"),
    (("path: /srv/b/staging/mlflow.db", "path: /srv/mlflow/staging/../staging/mlflow.db"),
     "target team_b: environments.staging.database.path: reaches the same sqlite as target team_a's "
     "environments.staging.database.path"),
    (("state_dir: /srv/b/production}", "state_dir: /srv/mlflow/production/}"),
     "target team_b: environments.production.driver.state_dir: reaches the same state dir as target team_a's "
     "environments.production.driver.state_dir"),
])
def test_two_targets_reaching_the_same_place_are_refused(tmp_path, change, expected):
    """Two upgrades must never both stop, migrate or restore one server, database or state."""
    text = GOOD + SECOND.replace(*change)
    with pytest.raises(ConfigError) as error:
        load_targets(write(tmp_path, text))
    assert expected in str(error.value)


def test_two_targets_on_one_helm_release_are_refused(tmp_path):
    helm = ("driver: {kind: helm, state_dir: STATE, helm: {release: mlflow, namespace: ml, chart: /c, "
            "deployment: mlflow, service: mlflow, migration_job: mlflow-migrate}}")
    text = (GOOD + SECOND).replace("driver: {kind: process, state_dir: /srv/mlflow/production}",
                                   helm.replace("STATE", "/srv/a")).replace(
        "driver: {kind: process, state_dir: /srv/b/production}", helm.replace("STATE", "/srv/b"))
    with pytest.raises(ConfigError) as error:
        load_targets(write(tmp_path, text))
    assert "target team_b: environments.production.driver.helm.release: reaches the same helm as target team_a's" \
        in str(error.value)
    assert load_targets(write(tmp_path, GOOD + SECOND))["team_b"].name == "team_b"


def test_a_servers_secret_env_comes_from_its_connection_and_a_missing_one_is_named(tmp_path, monkeypatch):
    """driver.secret_env reaches the server's environment only (never argv); a connection that is not
    there, or has no password, stops the start with the variable and the connection named."""
    import json

    from airlock.databases.sqlite import SqliteDatabase
    from airlock.drivers.process import DriverError, ProcessDriver
    from airlock.platforms.mlflow import MlflowAdapter

    text = GOOD.replace("driver: {kind: process, state_dir: /srv/mlflow/staging}",
                        "driver: {kind: process, state_dir: /srv/mlflow/staging, args: [--app-name, basic-auth], "
                        "secret_env: {MLFLOW_FLASK_SERVER_SECRET_KEY: {conn_id: flask_key}}}")
    staging = load_target("team_a", write(tmp_path, text)).environment("staging")
    driver = ProcessDriver(staging, MlflowAdapter(staging.url), SqliteDatabase(tmp_path / "m.db"))
    with pytest.raises(DriverError, match=r"staging: driver.secret_env.MLFLOW_FLASK_SERVER_SECRET_KEY names Airflow "
                                          r"connection 'flask_key', which does not exist"):
        driver.server_command("3.17.2")
    monkeypatch.setenv("AIRFLOW_CONN_FLASK_KEY", json.dumps({"conn_type": "http"}))
    with pytest.raises(DriverError, match="whose password is empty"):
        driver.server_command("3.17.2")
    monkeypatch.setenv("AIRFLOW_CONN_FLASK_KEY", json.dumps({"conn_type": "http", "password": "k-9d3"}))
    command = driver.server_command("3.17.2")
    assert command.secret_env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "k-9d3"
    assert command.argv[-2:] == ["--app-name", "basic-auth"] and "k-9d3" not in " ".join(command.argv)
    assert "MLFLOW_FLASK_SERVER_SECRET_KEY" in command.describe()["secret_env_names"]


OPERATIONS = """
    schedule: {cron: '0 3 * * 1', timezone: Europe/Berlin}
    auto_upgrade: patch
    auto_approve: patch
    releases: {file: /srv/airlock/mlflow-releases.txt}
    drain: {"""
WINDOWS = """database: mlflow}
        maintenance:
          expected_minutes: 45
          windows:
            - {days: [sat, sun], start: '22:00', end: '04:00', timezone: Europe/Berlin}
            - {days: [wed], start: '12:00', end: '13:00', timezone: UTC}"""


def test_schedule_windows_and_release_source_load(tmp_path):
    target = load_target("team_a", write(tmp_path, GOOD.replace("\n    drain: {", OPERATIONS)
                                         .replace("database: mlflow}", WINDOWS)))
    assert (target.schedule.cron, target.schedule.timezone, target.schedule.auto_upgrade) == (
        "0 3 * * 1", "Europe/Berlin", "patch")
    assert target.auto_approve == "patch"
    assert target.releases.describe() == "file /srv/airlock/mlflow-releases.txt"
    maintenance = target.environment("production").maintenance
    assert maintenance.expected_minutes == 45
    assert [w.describe() for w in maintenance.windows] == ["sat,sun 22:00-04:00 Europe/Berlin",
                                                           "wed 12:00-13:00 UTC"]
    assert target.environment("staging").maintenance is None


@pytest.mark.parametrize(("change", "expected"), [
    (("'0 3 * * 1'", "'0 3 * *'"), "schedule.cron: '0 3 * *' is not a valid cron expression"),
    (("timezone: Europe/Berlin}\n    auto", "timezone: Mars/Olympus}\n    auto"),
     "schedule.timezone: 'Mars/Olympus' is not a time zone name"),
    (("    auto_upgrade: patch\n", ""), "schedule: needs auto_upgrade: patch beside it"),
    (("auto_upgrade: patch", "auto_upgrade: minor"), "auto_upgrade: must be one of patch (got 'minor')"),
    (("auto_approve: patch", "auto_approve: always"), "auto_approve: must be one of none, patch"),
    (("{file: /srv/airlock/mlflow-releases.txt}", "{file: releases.txt}"), "releases.file: must be an absolute path"),
    (("{file: /srv/airlock/mlflow-releases.txt}", "{file: /r.txt, url: 'http://x:80/r'}"),
     "releases: names either a file or a url, not both"),
    (("[sat, sun]", "[sat, sunday]"), "maintenance.windows[0].days: 'sunday' is not a day (mon, tue,"),
    (("start: '22:00'", "start: '10pm'"), "maintenance.windows[0].start: '10pm' is not a time of day HH:MM"),
    (("timezone: UTC}", "timezone: CEST}"), "maintenance.windows[1].timezone: 'CEST' is not a time zone name"),
    (("expected_minutes: 45", "expected_minutes: 0"), "maintenance.expected_minutes: must be between 1 and"),
    (("end: '13:00', timezone: UTC", "end: '13:00', timezone: UTC, note: x"),
     "maintenance.windows[1].note: unknown setting"),
])
def test_schedule_and_window_mistakes_are_named(tmp_path, change, expected):
    text = GOOD.replace("\n    drain: {", OPERATIONS).replace("database: mlflow}", WINDOWS).replace(*change)
    with pytest.raises(ConfigError) as error:
        load_targets(write(tmp_path, text))
    assert expected in str(error.value)


def test_auto_upgrade_without_a_schedule_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="auto_upgrade: needs a schedule"):
        load_targets(write(tmp_path, GOOD.replace("\n    drain: {", "\n    auto_upgrade: patch\n    drain: {")))


@pytest.mark.parametrize(("notify", "expected"), [
    ("{email: {conn_id: smtp, to: [not-an-address]}}", "notify.email.to[0]: 'not-an-address' is not an e-mail"),
    ("{email: {conn_id: smtp}}", "notify.email.to: is required"),
    ("{webhook: {url: 'https://hooks.example.com/x'}}", "notify.webhook.conn_id: is required"),
    ("{webhook: {conn_id: hook}, events: [failed, paged]}", "notify.events[1]: 'paged' is not an event"),
])
def test_notification_mistakes_are_named(tmp_path, notify, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        load_targets(write(tmp_path, with_notify(notify)))


def with_notify(notify: str) -> str:
    return GOOD.replace("\n    drain: {", f"\n    notify: {notify}\n    drain: {{")


def test_notifications_load(tmp_path):
    target = load_target("team_a", write(tmp_path, with_notify(
        "{email: {conn_id: smtp, to: [a@example.com]}, webhook: {conn_id: hook}, events: [failed]}")))
    notify = target.notify
    assert (notify.email_conn_id, notify.to, notify.webhook_conn_id) == ("smtp", ("a@example.com",), "hook")
    assert notify.wants("failed") and not notify.wants("finished")
    assert not load_target("team_a", write(tmp_path, GOOD)).notify.wants("failed")  # no channel: nobody told


@pytest.mark.parametrize(("fleet", "expected"), [
    ("{targets: [team_a, team_z]}", "fleets.f.targets[1]: 'team_z' is not a target of this file (have: team_a)"),
    ("{targets: [team_a, team_a]}", "fleets.f.targets[1]: 'team_a' is listed twice"),
    ("{targets: []}", "fleets.f.targets: is required"),
    ("{targets: [team_a], wave_size: 0}", "fleets.f.wave_size: must be between 1 and 1000"),
])
def test_fleet_mistakes_are_named(tmp_path, fleet, expected):
    from airlock.config import load_fleets

    with pytest.raises(ConfigError) as error:
        load_fleets(write(tmp_path, GOOD + f"fleets:\n  f: {fleet}\n"))
    assert expected in str(error.value)
