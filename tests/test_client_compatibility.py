"""The client-compatibility report: the teams' own requirement and lock files, every platform's rule."""

from __future__ import annotations

import dataclasses
import json
import textwrap

import pytest
from airlock.clients import ClientFileError, read_pins
from airlock.config import CompatibilityConfig, load_targets
from airlock.platforms.mlflow import MlflowAdapter
from airlock.platforms.sematic import SematicAdapter
from airlock.platforms.zenml import ZenmlAdapter
from airlock.steps import UpgradeError, client_compatibility
from packaging.version import Version


def write(path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def team_files(tmp_path):
    """Checkouts of five team repositories, each pinning its client its own way."""
    return {
        "churn": write(tmp_path / "churn" / "requirements.txt", """\
            # training image
            pandas==2.2.3
            -r base.txt
            """),
        "churn_base": write(tmp_path / "churn" / "base.txt", "MLflow[extras]==3.2.0  # via the platform team\n"),
        "fraud": write(tmp_path / "fraud" / "poetry.lock", """\
            [[package]]
            name = "mlflow"
            version = "2.22.5"

            [[package]]
            name = "numpy"
            version = "2.1.0"
            """),
        "search": write(tmp_path / "search" / "uv.lock", """\
            version = 1
            [[package]]
            name = "mlflow"
            version = "3.17.2"
            """),
        "ranking": write(tmp_path / "ranking" / "pyproject.toml", """\
            [project]
            name = "ranking"
            dependencies = ["mlflow>=2.0", "scikit-learn==1.5.2"]
            """),
        "ads": write(tmp_path / "ads" / "Pipfile.lock", json.dumps(
            {"default": {"mlflow": {"version": "==2.16.2"}}, "develop": {}})),
        "docs": write(tmp_path / "docs" / "requirements.txt", "sphinx==8.0.0\n"),
    }


def plan(old: str, new: str) -> dict:
    return {"from": old, "to": new}


def target_with(files: list[str], on_incompatible: str):
    return dataclasses.replace(load_targets()["mlflow_demo"],
                               compatibility=CompatibilityConfig(files, on_incompatible, recent_artifacts=0,
                                                                 resolve=False))  # pins only: see test_resolution


def test_mlflow_report_names_each_file_and_its_verdict(team_files):
    files = [team_files[name] for name in ("churn", "fraud", "search", "ranking", "ads", "docs")]
    adapter = MlflowAdapter("http://127.0.0.1:1")
    report = client_compatibility(target_with(files, "warn"), adapter, plan("2.16.2", "3.17.2"))
    verdicts = {entry["file"]: entry for entry in report["files"]}
    assert verdicts[team_files["churn"]]["status"] == "compatible"  # 3.2.0, found through -r base.txt
    assert verdicts[team_files["churn"]]["version"] == "3.2.0"
    assert verdicts[team_files["fraud"]]["status"] == "incompatible"
    assert "2.x clients do not work with a 3.x server" in verdicts[team_files["fraud"]]["detail"]
    assert verdicts[team_files["search"]]["status"] == "compatible"
    assert verdicts[team_files["ranking"]]["status"] == "unpinned"
    assert "pin mlflow==3.17.2" in verdicts[team_files["ranking"]]["detail"]
    assert verdicts[team_files["ads"]]["status"] == "incompatible"
    assert verdicts[team_files["docs"]]["status"] == "not_listed"
    assert report["incompatible"] == 2
    assert "clients do not work" in report["old_clients"]  # 2.16.2 clients must move to 3.x


def test_incompatible_clients_fail_the_phase_when_the_target_says_so(team_files, tmp_path):
    missing = str(tmp_path / "gone" / "requirements.txt")
    files = [team_files["fraud"], team_files["search"], missing]
    with pytest.raises(UpgradeError) as error:
        client_compatibility(target_with(files, "fail"), MlflowAdapter("http://127.0.0.1:1"), plan("2.16.2", "3.17.2"))
    message = str(error.value)
    assert "2 client file(s) do not work with mlflow 3.17.2" in message
    assert f"{team_files['fraud']}: mlflow==2.22.5" in message
    assert f"{missing}: " in message and "file not found" in message
    assert "compatibility.on_incompatible: warn" in message
    assert team_files["search"] not in message


def test_zenml_clients_must_match_the_server_exactly(tmp_path):
    exact = write(tmp_path / "a" / "requirements.txt", "zenml[server]==0.98.0\n")
    older = write(tmp_path / "b" / "requirements.txt", "zenml==0.90.0\n")
    report = client_compatibility(target_with([exact, older], "warn"), ZenmlAdapter("http://127.0.0.1:1"),
                                  plan("0.90.0", "0.98.0"))
    statuses = {entry["file"]: entry["status"] for entry in report["files"]}
    assert statuses == {exact: "compatible", older: "incompatible"}
    assert "exact version" in report["old_clients"]


def test_sematic_window_comes_from_the_shipped_table():
    adapter = SematicAdapter("http://127.0.0.1:1")
    assert adapter.client_problem(Version("0.39.1"), Version("0.41.0")) is None
    assert adapter.client_problem(Version("0.30.0"), Version("0.41.0")) is None
    assert "older" in adapter.client_problem(Version("0.29.5"), Version("0.41.0"))
    assert "never be newer" in adapter.client_problem(Version("0.41.0"), Version("0.39.1"))
    # a server release the table does not list takes the nearest entry below it
    assert "nearest below 0.42.0" in adapter.client_problem(Version("0.20.0"), Version("0.42.0"))


def test_sematic_report_on_requirement_files(tmp_path):
    ok = write(tmp_path / "a" / "requirements.txt", "sematic==0.39.1\n")
    newer = write(tmp_path / "b" / "requirements.txt", "sematic==0.41.0\n")
    report = client_compatibility(target_with([ok, newer], "warn"), SematicAdapter("http://127.0.0.1:1"),
                                  plan("0.39.1", "0.40.0"))
    statuses = {entry["file"]: entry["status"] for entry in report["files"]}
    assert statuses == {ok: "compatible", newer: "incompatible"}


def test_a_broken_requirement_line_is_reported_with_file_and_line(tmp_path):
    broken = write(tmp_path / "requirements.txt", "numpy==2.1.0\nmlflow[extras==3.0\n")
    with pytest.raises(ClientFileError, match=r"requirements\.txt:2: not a requirement"):
        read_pins(broken, "mlflow")


WORKSPACE = """\
load("@bazel_tools//tools/build_defs/repo:git.bzl", "git_repository")

git_repository(
    name = "rules_sematic",
    remote = "https://github.com/sematic-ai/sematic.git",
    strip_prefix = "bazel",
    {ref},  # the Sematic guide: should match the pip package
)

load("@rules_sematic//:pipeline.bzl", "base_images")
base_images()
"""


def checkout(root, name: str, pip: str | None, bazel_file: str, bazel: str) -> tuple[str, str | None]:
    (root / name / ".git").mkdir(parents=True)
    return (write(root / name / bazel_file, bazel),
            write(root / name / "requirements.txt", f"sematic=={pip}\n") if pip else None)


def test_sematic_bazel_rules_are_judged_like_a_pin_and_against_the_pip_package(tmp_path):
    """Sematic's guide: "pip packages and the bazel integration should always be kept in sync"."""
    synced = checkout(tmp_path, "vision", "0.41.0", "WORKSPACE", WORKSPACE.format(ref='tag = "v0.41.0"'))
    behind = checkout(tmp_path, "nlp", "0.41.0", "WORKSPACE", WORKSPACE.format(ref='tag = "v0.39.1"'))
    too_old = checkout(tmp_path, "speech", None, "WORKSPACE", WORKSPACE.format(ref='tag = "v0.29.5"'))
    branch = checkout(tmp_path, "ads", None, "WORKSPACE", WORKSPACE.format(ref='branch = "main"'))
    modules = checkout(tmp_path, "ranking", "0.41.0", "MODULE.bazel", """\
        bazel_dep(name = "rules_sematic", version = "0.41.0")
        git_override(module_name = "rules_sematic", remote = "https://github.com/sematic-ai/sematic.git",
                     tag = "v0.41.0", strip_prefix = "bazel")
        """)
    files = [file for pair in (synced, behind, too_old, branch, modules) for file in pair if file]
    report = client_compatibility(target_with(files, "warn"), SematicAdapter("http://127.0.0.1:1"),
                                  plan("0.39.1", "0.41.0"))
    verdicts = {entry["file"]: (entry["status"], entry["version"]) for entry in report["files"]}
    assert verdicts[synced[0]] == ("compatible", "0.41.0")
    assert verdicts[behind[0]] == ("compatible", "0.39.1")  # inside the server's window, but…
    assert verdicts[too_old[0]][0] == "incompatible"  # older than 0.41.0's minimum client 0.30.0
    assert verdicts[branch[0]][0] == "unpinned"  # a branch moves: not a release
    assert verdicts[modules[0]] == ("compatible", "0.41.0")
    assert report["out_of_sync"] == [
        f"{behind[0]}: tag = 'v0.39.1' (line 3 git_repository(rules_sematic)) is 0.39.1, but {behind[1]} pins "
        "0.41.0: keep the Bazel rules and the pip package on the same release"]
    assert report["incompatible"] == 2  # the tag below the window, and the one out of sync
    with pytest.raises(UpgradeError, match=r"2 client file\(s\) do not work with sematic 0.41.0"):
        client_compatibility(target_with(files, "fail"), SematicAdapter("http://127.0.0.1:1"),
                             plan("0.39.1", "0.41.0"))
