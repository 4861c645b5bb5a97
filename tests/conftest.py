"""Test set-up: a private Airflow home (set before anything imports Airflow) and service policy.

Integration tests skip with a reason when a service cannot be had on a developer's machine, but
fail in CI, where .ci/run sets AIRLOCK_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import leaks
import pytest

REPO = Path(__file__).resolve().parent.parent
_HOME = tempfile.mkdtemp(prefix="airlock-airflow-home-")
os.environ["AIRFLOW_HOME"] = _HOME
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = "True"
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"
os.environ.setdefault("AIRLOCK_DATA_DIR", tempfile.mkdtemp(prefix="airlock-data-"))
os.environ.update(leaks.WORKER_ENV)  # a worker's secrets, planted: no process Airlock starts may inherit them


def services_required() -> bool:
    return os.environ.get("AIRLOCK_REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> None:
    """Skip outside CI; fail in CI, where every service must be there."""
    if services_required():
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """The temporary directory of the code under test (in this process and the ones it starts), for
    tests that look for what it left there: /tmp is shared with the tests running beside."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def airflow_db():
    """A fresh SQLite metadata database for this test session."""
    from airflow.utils import db

    db.resetdb()
    return _HOME


def platform_venvs(platform: str, versions: tuple[str, ...]) -> dict:
    """Each version of a platform in its own virtualenv (cached across runs under ~/.cache/airlock)."""
    from airlock.drivers.process import DriverError, ensure_platform_venv
    from airlock.registry import PLATFORMS, load_class

    adapter = load_class(PLATFORMS, platform)("http://unused")
    try:
        return {version: ensure_platform_venv(adapter, version) for version in versions}
    except DriverError as error:
        unavailable(f"cannot install {platform} virtualenvs: {error}")


@pytest.fixture(scope="session")
def mlflow_venvs():
    return platform_venvs("mlflow", ("2.16.2", "3.17.2"))


@pytest.fixture(scope="session")
def zenml_venvs():
    return platform_venvs("zenml", ("0.90.0", "0.98.0"))


@pytest.fixture(scope="session")
def sematic_venvs():
    return platform_venvs("sematic", ("0.39.1", "0.41.0"))


@pytest.fixture(scope="session")
def moto_endpoint():
    """One moto server (S3 and RDS APIs, in memory) for the whole session."""
    from services import start_moto

    process, endpoint = start_moto()
    yield endpoint
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def aws_conn_id(moto_endpoint, request):
    """An Airflow AWS connection to the moto server, named after the test module."""
    from services import aws_connection_json

    conn_id = f"airlock_test_{request.module.__name__.removeprefix('test_')}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", aws_connection_json(moto_endpoint))
        yield conn_id


@pytest.fixture(scope="module")
def kube_api():
    """A real kube-apiserver + etcd (../shared/envtest), for one module: idle, the pair still takes a
    tenth of a core, which the sessions' other modules need more."""
    from kube import envtest_assets, start_api_server

    assets = envtest_assets()
    if assets is None:
        unavailable("no kube-apiserver/etcd: run ../shared/envtest/build.sh (needs root and apt) or set "
                    "KUBEBUILDER_ASSETS")
    server = start_api_server(assets)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def process_watch():
    watch = leaks.ProcessWatch()
    watch.thread.start()
    yield watch
    watch.stopping.set()


@pytest.fixture(autouse=True)
def no_secret_leaks(process_watch, tmp_path_factory):
    """The secret scan (tests/leaks.py) after every test: a planted secret in a file written during
    the test, or in the argv or environment of a process Airlock started, fails it."""
    since = time.time() - 1
    process_watch.take()  # what an earlier test's teardown left is that test's
    yield
    time.sleep(2 * process_watch.interval)
    roots = [tmp_path_factory.getbasetemp(), Path(_HOME), Path(os.environ["AIRLOCK_DATA_DIR"])]
    problems = process_watch.take() + leaks.files_problems_elsewhere(roots, since)
    if problems:
        pytest.fail("secret scan: " + "; ".join(sorted(set(problems))[:20]), pytrace=False)

