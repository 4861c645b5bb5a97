"""The guides' "verify Python version compatibility" and "check dependencies for version conflicts":
the team's Python read from its files, and pip's dry-run resolution against the real package index
(Sematic 0.41.0: Requires-Python >=3.9,<3.14, and SQLAlchemy 2)."""

from __future__ import annotations

import json
import time

import pytest
from airlock.clients import team_requirements
from airlock.resolution import (
    CHECK_SECONDS,
    Bound,
    check_team_file,
    check_team_files,
    poetry_range,
    requires_python,
    team_python,
)
from conftest import unavailable

NEW = "0.41.0"


def write(folder, name: str, text: str):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def test_the_python_a_team_runs_is_read_from_pyenv_first_then_what_its_file_allows(tmp_path):
    checkout = tmp_path / "churn"
    (checkout / ".git").mkdir(parents=True)
    requirements = write(checkout / "training", "requirements.txt", "sematic==0.39.1\n")
    assert team_python(requirements) is None  # a requirements file says nothing of Python
    write(checkout, "pyproject.toml", '[project]\nname = "churn"\nrequires-python = ">=3.9.2"\n')
    write(checkout / "training", "pyproject.toml", '[project]\nname = "t"\nrequires-python = ">=3.10"\n')
    assert team_python(requirements).version == "3.10"  # the lowest the pyproject beside it allows
    write(checkout, ".python-version", "3.8.18\n")
    found = team_python(requirements)
    assert (found.version, found.where) == ("3.8.18", str(checkout / ".python-version"))
    poetry = write(tmp_path / "fraud", "poetry.lock", '[metadata]\npython-versions = "^3.11"\n')
    assert team_python(poetry).version == "3.11"
    uv = write(tmp_path / "ads", "uv.lock", 'version = 1\nrequires-python = ">=3.12, <3.14"\n')
    assert team_python(uv).version == "3.12"
    pipfile = write(tmp_path / "risk", "Pipfile.lock", json.dumps({"_meta": {"requires": {"python_version": "3.9"}}}))
    assert team_python(pipfile).version == "3.9"


def test_poetry_ranges_read_as_pep_440():
    assert poetry_range("^3.9") == ">=3.9,<4"
    assert poetry_range("~3.10") == ">=3.10,<3.11"
    assert poetry_range(">=3.8,<3.12") == ">=3.8,<3.12"
    assert poetry_range("3.11.*") == "==3.11.*"


def test_the_requirements_resolved_are_the_teams_own_without_the_client(tmp_path):
    checkout = tmp_path / "churn"
    (checkout / ".git").mkdir(parents=True)
    write(checkout, "base.txt", "pandas>=2\nSematic==0.39.1\n")
    top = write(checkout, "requirements.txt", "-r base.txt\nrequests>=2.28  # http\n")
    assert team_requirements(top, "sematic") == (["pandas>=2", "requests>=2.28"], str(top))
    lock = write(tmp_path / "fraud", "poetry.lock", "[[package]]\nname = 'sematic'\nversion = '0.39.1'\n")
    assert team_requirements(lock, "sematic") is None  # a lock file pins the old client's whole tree
    write(tmp_path / "fraud", "pyproject.toml", '[project]\nname = "f"\ndependencies = ["sematic==0.39.1", "numpy"]\n')
    assert team_requirements(lock, "sematic") == (["numpy"], f"{tmp_path / 'fraud' / 'pyproject.toml'} [project] "
                                                             "dependencies")


def test_a_file_that_cannot_be_read_is_unknown_not_a_crash(tmp_path):
    binary = tmp_path / "requirements.txt"
    binary.write_bytes(b"sematic==0.39.1\x00\xff")
    checked = check_team_file(str(binary), "sematic", NEW, "<3.14,>=3.9", bound=Bound.of(60))
    assert checked.python["status"] == checked.dependencies["status"] == "unknown"
    assert "not a text file" in checked.python["detail"] and checked.failures() == []


@pytest.fixture(scope="module")
def index_reachable():
    from airlock.resolution import IndexUnknown

    try:
        return requires_python("sematic", NEW, Bound.of(CHECK_SECONDS))
    except IndexUnknown as error:
        unavailable(f"the package index: {error}")


@pytest.mark.integration
def test_three_teams_one_resolves_one_conflicts_one_runs_a_python_too_old(tmp_path, index_reachable):
    """Through the compatibility step, as the gate's body gets it: each file's pin, Python and
    dependency verdicts; two teams cannot install the new client."""
    from airlock.approval import client_lines
    from airlock.config import CompatibilityConfig
    from airlock.platforms.sematic import SematicAdapter
    from airlock.steps import client_compatibility

    assert index_reachable == "<3.14,>=3.9"
    resolves = write(tmp_path / "churn", "requirements.txt", "sematic==0.39.1\nrequests>=2.28\n")
    write(tmp_path / "churn", ".python-version", "3.11\n")
    conflicts = write(tmp_path / "fraud", "requirements.txt", "sematic==0.39.1\nsqlalchemy<2\n")
    old = write(tmp_path / "ads", "pyproject.toml",
                '[project]\nname = "ads"\nrequires-python = ">=3.8"\ndependencies = ["sematic==0.39.1"]\n')

    class Target:  # what client_compatibility reads of a target
        name = "sematic_teams"
        compatibility = CompatibilityConfig([str(resolves), str(conflicts), str(old)], on_incompatible="warn")

    report = client_compatibility(Target(), SematicAdapter("http://unused"), {"from": "0.39.1", "to": NEW})
    files = {entry["file"]: entry for entry in report["files"]}
    assert report["incompatible"] == 2

    fine = files[str(resolves)]
    assert fine["python"]["status"] == "compatible" and "the team runs 3.11" in fine["python"]["detail"]
    assert fine["dependencies"]["status"] == "resolves", fine["dependencies"]

    clash = files[str(conflicts)]
    assert clash["python"]["status"] == "unknown"  # nothing says which Python: resolved for the worker's
    assert clash["dependencies"]["status"] == "conflict"
    assert "The user requested sqlalchemy<2" in clash["dependencies"]["clashing"]
    assert any(line.lower().startswith("sematic 0.41.0 depends on sqlalchemy>=2")
               for line in clash["dependencies"]["clashing"]), clash["dependencies"]

    gate = "\n".join(client_lines(report, None))  # what the approver reads
    assert f"`{conflicts}`: compatible (sematic==0.39.1 (line 1))\n  - python: unknown" in gate
    assert "  - ⚠ dependencies: conflict (with sematic==0.41.0, pip finds no installable set: " in gate

    too_old = files[str(old)]
    assert too_old["python"]["status"] == "incompatible"
    assert too_old["python"]["detail"].startswith("sematic 0.41.0 requires Python <3.14,>=3.9; the team runs 3.8 (")
    assert too_old["dependencies"]["status"] == "conflict"  # pip finds no sematic 0.41.0 for Python 3.8 either


@pytest.mark.integration
def test_the_checks_of_all_files_end_within_one_bound_saying_what_was_not_known(tmp_path, index_reachable):
    """Ten teams' files and a bound too short for pip to resolve any: the step ends within it (not
    ten times a per-run timeout), every dependency verdict unknown with why; nothing failed. Each file
    resolves (a requests that exists): a file pip refuses at once (`requests>=3`) ends inside 3 s on
    a fast machine, as CI's clone here found."""
    paths = [str(write(tmp_path / f"team{number}", "requirements.txt", f"sematic==0.39.1\nrequests>=2.{number}\n"))
             for number in range(10)]
    started = time.monotonic()
    checked = check_team_files(paths, "sematic", NEW, seconds=3)
    took = time.monotonic() - started
    assert took < 3 + 5, f"the checks took {took:.1f} s against a bound of 3 s"
    assert [resolution.file for resolution in checked] == paths
    for resolution in checked:
        assert resolution.dependencies["status"] == "unknown", resolution.dependencies
        assert "did not finish within the 3 s" in resolution.dependencies["detail"], resolution.dependencies
        assert resolution.failures() == []
