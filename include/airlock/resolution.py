"""Will a team's environment still install with the new client? The guides' "verify Python version
compatibility" and "check integration dependencies for version conflicts", done with pip itself.

- The Python the team runs: `.python-version` (what pyenv and uv run) in the file's folder or up to its
  checkout, else what the file declares (`requires-python` of pyproject.toml or uv.lock, poetry.lock's
  `python-versions`, Pipfile.lock's `python_version`): the lowest Python it allows.
- The new release's `Requires-Python`, from the package index's metadata for that exact version.
- A dry-run resolution of the team's direct requirements with the client pinned to the new version, for
  the team's Python, against the index the workers use (pip's own configuration): pip's verdict, with
  the packages that clash.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from airlock.child_env import child_env
from airlock.clients import LOCK_FILES_TOML, ClientFileError, checkout_of, read_team_file, team_requirements

CHECK_SECONDS = 600
"""How long the checks of all of a target's team files may take together (pip runs in parallel)."""
PARALLEL_PIPS = 4
NOT_CHECKED = "not checked (compatibility.resolve: false)"
PYTHONS = [f"3.{minor}" for minor in range(6, 21)]
"""The Python releases a declared range is read against (its lowest one is what the team may run)."""
UNREACHABLE = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
               "Connection refused", "No route to host")


@dataclass(frozen=True)
class Bound:
    """The time all the checks of a target's team files may take together, and when it ends."""

    seconds: float
    ends: float

    @classmethod
    def of(cls, seconds: float) -> Bound:
        return cls(seconds, time.monotonic() + seconds)

    def left(self) -> float:
        return max(self.ends - time.monotonic(), 0.1)


class IndexUnknown(RuntimeError):
    """The package index could not tell (unreachable, no such release): the check is unknown, not failed."""


@dataclass(frozen=True)
class TeamPython:
    version: str
    """The lowest Python the team runs or allows, e.g. "3.9" or "3.9.18"."""
    where: str


@dataclass(frozen=True)
class Resolution:
    file: str
    python: dict
    """{status: compatible|incompatible|unknown, detail}"""
    dependencies: dict
    """{status: resolves|conflict|unknown, detail, clashing: [...]}"""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def skipped(cls, path: str) -> Resolution:
        said = {"status": "unknown", "detail": NOT_CHECKED}
        return cls(path, said, {**said, "clashing": []})

    def failures(self) -> list[str]:
        """What stops this team's environment from installing the new client (empty: nothing)."""
        return [said["detail"] for said, bad in ((self.python, "incompatible"), (self.dependencies, "conflict"))
                if said["status"] == bad]


def lowest_python(spec: str) -> str | None:
    """The lowest Python release a `requires-python` range allows (None when none of PYTHONS fits)."""
    allowed = SpecifierSet(spec)
    return next((python for python in PYTHONS if Version(python) in allowed), None)


def poetry_range(constraint: str) -> str:
    """Poetry's `^3.9` / `~3.9` / `3.9.*` as a PEP 440 range."""
    parts = []
    for item in constraint.split(","):
        item = item.strip()
        if item.startswith("^"):
            base = Version(item[1:])
            parts.append(f">={item[1:]},<{base.major + 1}" if base.major else f">={item[1:]}")
        elif item.startswith("~") and not item.startswith("~="):
            base = Version(item[1:])
            parts.append(f">={item[1:]},<{base.major}.{base.minor + 1}")
        else:
            parts.append(item if item[0] in "<>=!~" else f"=={item}")
    return ",".join(parts)


def declared_python(path: Path) -> tuple[str, str] | None:
    """(range, where) a file declares for Python, by its format."""
    if path.name not in ("pyproject.toml", *LOCK_FILES_TOML, "Pipfile.lock"):
        return None
    text = read_team_file(path)
    if path.name == "Pipfile.lock":
        requires = json.loads(text).get("_meta", {}).get("requires", {})
        version = requires.get("python_full_version") or requires.get("python_version")
        return (f"=={version}", f"{path} _meta.requires") if version else None
    data = tomllib.loads(text)
    if path.name == "pyproject.toml":
        spec = data.get("project", {}).get("requires-python")
        return (spec, f"{path} [project] requires-python") if spec else None
    if path.name == "poetry.lock":
        spec = data.get("metadata", {}).get("python-versions")
        return (poetry_range(spec), f"{path} [metadata] python-versions = {spec!r}") if spec else None
    spec = data.get("requires-python")
    return (spec, f"{path} requires-python") if spec else None


def pyenv_version(path: Path) -> tuple[str, Path] | None:
    """The version in the nearest `.python-version`, from the file's folder up to its checkout."""
    root = checkout_of(path)
    for folder in (path.parent, *path.parent.parents):
        pinned = folder / ".python-version"
        if pinned.is_file():
            first = read_team_file(pinned).strip().splitlines()
            if first and re.fullmatch(r"\d+\.\d+(\.\d+)?", first[0].strip()):
                return first[0].strip(), pinned
        if folder == root:
            return None
    return None


def team_python(path: str | Path) -> TeamPython | None:
    """The Python the team runs (.python-version) or the lowest its file allows; None when unsaid."""
    path = Path(path)
    pinned = pyenv_version(path)
    if pinned:
        return TeamPython(pinned[0], str(pinned[1]))
    for candidate in (path, path.with_name("pyproject.toml")):
        declared = declared_python(candidate) if candidate.is_file() else None
        if declared:
            lowest = lowest_python(declared[0])
            return TeamPython(lowest, f"{declared[1]} = {declared[0]!r}") if lowest else None
    return None


def pip(*arguments: str, bound: Bound) -> subprocess.CompletedProcess:
    """pip of the worker's Python, with the worker's pip settings (index, proxies, certificates) and
    nothing secret; stopped when the bound of all the checks together ends."""
    try:
        return subprocess.run([sys.executable, "-m", "pip", *arguments, "--disable-pip-version-check", "--no-input",
                               "--retries", "1", "--timeout", "30"], capture_output=True, text=True, check=False,
                              timeout=bound.left(),
                              env=child_env(network=True, prefixes=("PIP_",)))
    except subprocess.TimeoutExpired:
        raise IndexUnknown(f"pip did not finish within the {bound.seconds:g} s the checks of all team files may take "
                           "together (a slow or unreachable package index?)") from None


def unreachable(stderr: str) -> bool:
    return any(sign in stderr for sign in UNREACHABLE)


def requires_python(package: str, version: str, bound: Bound) -> str | None:
    """The release's Requires-Python from the package index (None: the release sets none)."""
    with tempfile.TemporaryDirectory(prefix="airlock-pip-") as scratch:
        report = Path(scratch) / "report.json"
        done = pip("install", "--dry-run", "--no-deps", "--ignore-installed", "--quiet", "--report", str(report),
                   f"{package}=={version}", bound=bound)
        if done.returncode != 0:
            raise IndexUnknown(f"the package index did not give {package} {version}'s metadata: "
                              f"{last_error(done.stderr)}")
        installs = json.loads(report.read_text())["install"]
    return installs[0]["metadata"].get("requires_python") if installs else None


def last_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("ERROR:")]
    return (errors[-1] if errors else stderr.strip()[-300:]).removeprefix("ERROR: ")[:300]


def python_verdict(team: TeamPython | None, package: str, version: str, requires: str | None) -> dict:
    if team is None:
        return {"status": "unknown", "detail": "the team's Python is not said (no .python-version, no "
                                               "requires-python); resolved for the worker's own"}
    if not requires:
        return {"status": "compatible", "detail": f"{package} {version} sets no Requires-Python; the team runs "
                                                  f"{team.version} ({team.where})"}
    try:
        fits = Version(team.version) in SpecifierSet(requires)
    except (InvalidVersion, InvalidSpecifier) as error:
        return {"status": "unknown", "detail": f"cannot compare {team.version!r} with {requires!r}: {error}"}
    said = f"{package} {version} requires Python {requires}; the team runs {team.version} ({team.where})"
    return {"status": "compatible" if fits else "incompatible",
            "detail": said if fits else f"{said}: move the team to a Python that {package} {version} supports"}


def conflict_lines(stderr: str) -> list[str]:
    """The lines under pip's "The conflict is caused by:" (who asks for what), else its last error."""
    lines = stderr.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if "The conflict is caused by" in line) + 1
    except StopIteration:
        return [last_error(stderr)]
    caused = []
    for line in lines[start:]:
        if not line.strip():
            break
        caused.append(line.strip())
    return caused


def resolve(requirements: list[str], package: str, version: str, python: str | None, bound: Bound) -> dict:
    """pip's dry-run resolution of `requirements` plus the client pinned at `version`, for `python`
    (wheels only then, since pip cannot build for another Python): resolves or conflict, with who
    asks for what."""
    with tempfile.TemporaryDirectory(prefix="airlock-pip-") as scratch:
        listed = Path(scratch) / "requirements.txt"
        listed.write_text("\n".join([*requirements, f"{package}=={version}"]) + "\n")
        for_python = ["--target", str(Path(scratch) / "never-written"), "--python-version", python,
                      "--only-binary=:all:"] if python else []
        done = pip("install", "--dry-run", "--ignore-installed", "--report", str(Path(scratch) / "report.json"),
                   *for_python, "-r", str(listed), bound=bound)
        if done.returncode == 0:
            installs = json.loads((Path(scratch) / "report.json").read_text())["install"]
            return {"status": "resolves", "clashing": [],
                    "detail": f"{len(requirements)} requirement(s) with {package}=={version} resolve to "
                              f"{len(installs)} package(s){f' for Python {python}' if python else ''}"}
    said = done.stdout + done.stderr  # pip explains a conflict on stdout, ends with its error on stderr
    if unreachable(said):
        raise IndexUnknown(f"the package index could not be reached: {last_error(said)}")
    caused = conflict_lines(said)
    return {"status": "conflict", "clashing": caused,
            "detail": f"with {package}=={version}{f' on Python {python}' if python else ''}, pip finds no "
                      f"installable set: {'; '.join(caused)}"}


def check_team_files(paths: list[str], package: str, version: str, seconds: float = CHECK_SECONDS) -> list[Resolution]:
    """The Python and dependency verdicts of each team file, pip's resolutions run side by side and
    all done within `seconds`; what cannot be known (in time) is said, not failed."""
    bound = Bound.of(seconds)
    try:
        requires: str | IndexUnknown | None = requires_python(package, version, bound)
    except IndexUnknown as error:
        requires = error
    with ThreadPoolExecutor(max_workers=PARALLEL_PIPS, thread_name_prefix="airlock-pip") as pool:
        return list(pool.map(lambda path: check_team_file(path, package, version, requires, bound), paths))


def check_team_file(path: str, package: str, version: str, requires: str | IndexUnknown | None,
                    bound: Bound) -> Resolution:
    try:
        team = team_python(path)
        direct = team_requirements(path, package)
    except (ClientFileError, tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError) as error:
        unreadable = {"status": "unknown", "detail": f"cannot be read: {error}"}
        return Resolution(path, unreadable, {**unreadable, "clashing": []})
    python = ({"status": "unknown", "detail": str(requires)} if isinstance(requires, IndexUnknown)
              else python_verdict(team, package, version, requires))
    if direct is None:
        dependencies = {"status": "unknown", "clashing": [],
                        "detail": "nothing to resolve from (a Bazel file, or a lock file without a pyproject.toml "
                                  "beside it)"}
    else:
        try:
            dependencies = {**resolve(direct[0], package, version, team.version if team else None, bound),
                            "from": direct[1]}
        except IndexUnknown as error:
            dependencies = {"status": "unknown", "clashing": [], "detail": str(error)}
    return Resolution(path, python, dependencies)
