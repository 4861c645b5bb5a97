"""docker-compose.yaml and the Dockerfile describe the deployment the tests run without Docker
(tests/distributed.py): the same components and commands, the same executor settings, and the same
tools in the image as the Makefile installs on a worker."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml
from distributed import COMPONENTS, EXECUTOR_SETTINGS

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
SERVICE_OF = {"api-server": "airflow-apiserver", "scheduler": "airflow-scheduler",
              "dag-processor": "airflow-dag-processor", "triggerer": "airflow-triggerer", "worker": "airflow-worker"}
"""The official compose file's service names for the components."""


def test_compose_runs_the_components_the_tests_run_with_the_same_commands():
    services = COMPOSE["services"]
    assert set(SERVICE_OF) == set(COMPONENTS)
    for component, arguments in COMPONENTS.items():
        assert shlex.split(services[SERVICE_OF[component]]["command"]) == arguments, component
    assert {"postgres", "redis", "airflow-init", "mariadb", "s3"} <= set(services)
    unchecked = [name for name, service in services.items() if name != "airflow-init" and "healthcheck" not in service]
    assert unchecked == []


def test_compose_has_the_executor_settings_the_tests_use():
    env = COMPOSE["x-airflow-common"]["environment"]
    for name, template in EXECUTOR_SETTINGS.items():
        # the same setting, of the same shape: only the addresses differ (service names vs 127.0.0.1)
        shape = re.escape(template).replace(r"\{redis\}", "[^/]+").replace(r"\{postgres\}", ".+").replace(
            r"\{api\}", "[^/]+")
        assert re.fullmatch(shape, str(env.get(name))), (name, env.get(name), template)
    worker_env = COMPOSE["services"]["airflow-worker"]["environment"]
    assert worker_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_the_image_carries_the_tools_the_makefile_installs():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:3\.3\.2\s*$", dockerfile, re.M)
    installed = re.search(r"apt-get install -y --no-install-recommends ([^\\\n&]+)", dockerfile).group(1).split()
    makefile = (REPO / "Makefile").read_text()
    tools = re.search(r"^TOOL_PKGS\s*:=\s*(.+)$", makefile, re.M).group(1).split()
    assert sorted(installed) == sorted(tools)


def test_no_secret_is_written_into_the_compose_file():
    """Trial defaults are `${VAR:-…}` that a real deployment overrides; the signing key has no default."""
    env = COMPOSE["x-airflow-common"]["environment"]
    assert env["AIRFLOW_VAR_AIRLOCK_BACKUP_SIGNING_KEY"].startswith("${AIRLOCK_BACKUP_SIGNING_KEY:?")
    for name in ("AIRFLOW_CONN_AIRLOCK_MARIADB", "AIRFLOW_CONN_AWS_DEFAULT"):
        assert "${" in env[name], name
