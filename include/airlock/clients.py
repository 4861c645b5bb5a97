"""Which client versions the teams pin, read from their requirement and lock files.

Pure logic over files on the worker: no network, no pip. Each platform adapter says which client
versions work with a server version; this module finds the pins and applies that rule per file.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LOCK_FILES_TOML = ("poetry.lock", "uv.lock", "pdm.lock")
"""Lock files that list resolved packages as [[package]] tables with name and version."""


class ClientFileError(ValueError):
    """A requirement or lock file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class ClientPin:
    """What one file says about the platform's client package."""

    file: str
    where: str
    spec: str
    version: str | None
    """The exact version when the file pins one (== or a lock file), else None."""


@dataclass(frozen=True)
class ClientVerdict:
    file: str
    status: str
    """compatible | incompatible | unpinned | not_listed | unreadable"""
    detail: str
    version: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def exact_version(requirement: Requirement) -> str | None:
    """The version an `==x.y.z` (or `===`) requirement pins, or None for a range."""
    specs = list(requirement.specifier)
    if len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version:
        return specs[0].version
    return None


MAX_FILE_BYTES = 1 << 20
MAX_INCLUDED_FILES = 100
INCLUDE = re.compile(r"(?:-r|--requirement|-c|--constraint)\s*=?\s*(\S+)")


def checkout_of(path: Path) -> Path:
    """The checkout a team's file belongs to (the nearest folder holding .git, else the file's own
    folder): its includes may not reach outside it."""
    folder = path.resolve().parent
    for candidate in (folder, *folder.parents):
        if (candidate / ".git").exists():
            return candidate
    return folder


def read_team_file(path: Path) -> str:
    """A team's file as text: bounded in size; a folder or a binary file is unreadable, not a crash."""
    if not path.is_file():
        raise ClientFileError(f"{path}: not a file" if path.exists() else f"{path}: file not found")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ClientFileError(f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB; not a requirement or lock file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ClientFileError(f"{path}: not a text file (not UTF-8)") from None
    if "\x00" in text:
        raise ClientFileError(f"{path}: not a text file (NUL bytes)")
    return text


def included_file(path: Path, number: int, name: str, root: Path) -> Path:
    """An `-r`/`-c` include, refused when it leaves the checkout (absolute elsewhere, `..`, a symlink
    out of it): a team's file must not make the worker read its secrets into a report."""
    included = (path.parent / name).resolve()
    if not included.is_relative_to(root):
        raise ClientFileError(f"{path}:{number}: includes a file outside its checkout {root}; "
                              "only files inside the checkout are followed")
    return included


def requirements_in(path: Path, seen: set[Path] | None = None,
                    root: Path | None = None) -> Iterator[tuple[Path, int, Requirement]]:
    """Every requirement of a pip requirements file with where it stands, following `-r`/`-c`
    includes inside the checkout."""
    seen = seen if seen is not None else set()
    root = root or checkout_of(path)
    if path.resolve() in seen:
        return
    if len(seen) >= MAX_INCLUDED_FILES:
        raise ClientFileError(f"{path}: more than {MAX_INCLUDED_FILES} included files")
    seen.add(path.resolve())
    for number, raw in enumerate(read_team_file(path).splitlines(), start=1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        include = INCLUDE.fullmatch(line)
        if include:
            yield from requirements_in(included_file(path, number, include.group(1), root), seen, root)
            continue
        if not line or line.startswith("-"):
            continue
        try:
            yield path, number, Requirement(line.split(" --hash", 1)[0].rstrip(" \\"))
        except InvalidRequirement as error:
            raise ClientFileError(f"{path}:{number}: not a requirement ({error})") from None


def pins_in_requirements(path: Path, package: str) -> list[ClientPin]:
    """Pins of `package` in a pip requirements file and the files it includes."""
    return [ClientPin(str(where), f"line {number}", str(requirement), exact_version(requirement))
            for where, number, requirement in requirements_in(path)
            if canonicalize_name(requirement.name) == canonicalize_name(package)]


def project_requirements(path: Path) -> list[tuple[str, Requirement]]:
    """[project] dependencies (PEP 621) and optional-dependencies, each with its group."""
    project = tomllib.loads(read_team_file(path)).get("project", {})
    groups = {"dependencies": project.get("dependencies", []),
              **{f"optional-dependencies.{k}": v for k, v in project.get("optional-dependencies", {}).items()}}
    return [(group, Requirement(text)) for group, entries in groups.items() for text in entries]


def pins_in_pyproject(path: Path, package: str) -> list[ClientPin]:
    """Pins in [project] dependencies and optional-dependencies."""
    return [ClientPin(str(path), f"[project] {group}", str(requirement), exact_version(requirement))
            for group, requirement in project_requirements(path)
            if canonicalize_name(requirement.name) == canonicalize_name(package)]


def pins_in_toml_lock(path: Path, package: str) -> list[ClientPin]:
    packages = tomllib.loads(read_team_file(path)).get("package", [])
    return [ClientPin(str(path), "[[package]]", f"{entry['name']}=={entry['version']}", entry["version"])
            for entry in packages if canonicalize_name(entry.get("name", "")) == canonicalize_name(package)]


def pins_in_pipfile_lock(path: Path, package: str) -> list[ClientPin]:
    data = json.loads(read_team_file(path))
    pins = []
    for section in ("default", "develop"):
        for name, entry in data.get(section, {}).items():
            if canonicalize_name(name) == canonicalize_name(package):
                spec = entry.get("version", "")
                pins.append(ClientPin(str(path), section, f"{name}{spec}", spec.removeprefix("==") or None))
    return pins


BAZEL_FILES = ("WORKSPACE", "WORKSPACE.bazel", "MODULE.bazel")
BAZEL_RULES = {"sematic": "rules_sematic"}
"""The Bazel repository that carries a platform's client for Bazel builds (Sematic's guide: keep its
tag and the pip package in sync)."""
STARLARK_CALL = re.compile(r"\b(\w+)\s*\(")
STARLARK_STRING = re.compile(r'(\w+)\s*=\s*"([^"\n]*)"')
RELEASE_TAG = re.compile(r"v?(\d+\.\d+\.\d+\S*)")


def starlark_calls(text: str) -> Iterator[tuple[str, int, dict[str, str]]]:
    """Each call in a WORKSPACE or MODULE.bazel: (function, line, its string arguments)."""
    text = re.sub(r"#[^\n]*", "", text)
    for call in STARLARK_CALL.finditer(text):
        depth, end = 0, call.end() - 1
        for end in range(call.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        yield call.group(1), text.count("\n", 0, call.start()) + 1, dict(STARLARK_STRING.findall(text[call.end():end]))


def pins_in_bazel(path: Path, package: str) -> list[ClientPin]:
    """The platform's Bazel rules in a WORKSPACE (git_repository / http_archive named after them) or a
    MODULE.bazel (bazel_dep, git_override): a release tag is a pin; a branch or a commit is not."""
    repository = BAZEL_RULES.get(package)
    pins = []
    for function, line, arguments in starlark_calls(read_team_file(path)):
        if repository not in (arguments.get("name"), arguments.get("module_name")):
            continue
        given = arguments.get("tag") or arguments.get("version") or arguments.get("url") or ""
        released = RELEASE_TAG.search(given.rsplit("/", 1)[-1] if "/" in given else given)
        spec = ", ".join(f"{key} = {arguments[key]!r}" for key in ("tag", "version", "branch", "commit", "url")
                         if key in arguments)
        pins.append(ClientPin(str(path), f"line {line} {function}({repository})", spec or function,
                              released.group(1).removesuffix(".tar.gz").removesuffix(".zip") if released else None))
    return pins


def read_pins(path: str | Path, package: str) -> list[ClientPin]:
    """Every mention of `package` in one requirement, lock or Bazel file, by the file's format."""
    path = Path(path)
    try:
        if path.name in BAZEL_FILES:
            return pins_in_bazel(path, package)
        if path.name in LOCK_FILES_TOML:
            return pins_in_toml_lock(path, package)
        if path.name == "Pipfile.lock":
            return pins_in_pipfile_lock(path, package)
        if path.name == "pyproject.toml":
            return pins_in_pyproject(path, package)
        return pins_in_requirements(path, package)
    except FileNotFoundError as error:
        raise ClientFileError(f"{path}: file not found ({error.filename})") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, InvalidRequirement, KeyError, TypeError,
            AttributeError) as error:
        raise ClientFileError(f"{path}: cannot be read as {path.name}: {error}") from None
    except OSError as error:
        raise ClientFileError(f"{path}: cannot be read ({error.strerror})") from None


def judge_file(path: str, package: str, server_version: str, rule) -> ClientVerdict:
    """One file's verdict. `rule(client: Version, server: Version)` returns None when they work
    together, else the reason they do not."""
    try:
        pins = read_pins(path, package)
    except ClientFileError as error:
        return ClientVerdict(path, "unreadable", str(error))
    if not pins:
        return ClientVerdict(path, "not_listed", f"{package} is not listed")
    server = Version(server_version)
    for pin in pins:
        if pin.version is None:
            continue
        try:
            reason = rule(Version(pin.version), server)
        except ValueError:  # InvalidVersion, or digits beyond int()'s limit
            reason = f"{pin.version[:40]!r} is not a version number"
        if reason:
            return ClientVerdict(path, "incompatible", f"{pin.spec} ({pin.where}): {reason}", pin.version)
    exact = [pin for pin in pins if pin.version]
    if not exact:
        specs = "; ".join(f"{pin.spec} ({pin.where})" for pin in pins)
        return ClientVerdict(path, "unpinned", f"{specs}: not pinned, a fresh install may pick any version; "
                                               f"pin {package}=={server_version} or a compatible release")
    return ClientVerdict(path, "compatible", f"{exact[0].spec} ({exact[0].where})", exact[0].version)


FAILING = ("incompatible", "unreadable")


def team_requirements(path: str | Path, package: str) -> tuple[list[str], str] | None:
    """What the team asks for directly, except the platform's client (to be pinned to the new
    version), and where that was read: a requirements file with its includes, [project] dependencies,
    or, for a lock file, the pyproject.toml beside it. None when there is nothing to resolve from (a
    Bazel file, a lock file alone)."""
    path = Path(path)
    client = canonicalize_name(package)
    if path.name in BAZEL_FILES:
        return None
    if path.name in (*LOCK_FILES_TOML, "Pipfile.lock"):
        path = path.with_name("pyproject.toml")
        if not path.is_file():
            return None
    if path.name == "pyproject.toml":
        return ([str(requirement) for group, requirement in project_requirements(path)
                 if group == "dependencies" and canonicalize_name(requirement.name) != client],
                f"{path} [project] dependencies")
    return ([str(requirement) for _, _, requirement in requirements_in(path)
             if canonicalize_name(requirement.name) != client], str(path))


def out_of_sync(verdicts: list[ClientVerdict]) -> list[tuple[str, str]]:
    """Bazel rules whose release differs from the pip pin of the same checkout (Sematic's guide: "pip
    packages and the bazel integration should always be kept in sync"): (file, what differs)."""
    pinned = [(checkout_of(Path(v.file)), v) for v in verdicts if v.version]
    return [(bazel.file, f"{bazel.detail} is {bazel.version}, but {pip.file} pins {pip.version}: keep the Bazel "
                         "rules and the pip package on the same release")
            for root, bazel in pinned if Path(bazel.file).name in BAZEL_FILES
            for other_root, pip in pinned
            if other_root == root and Path(pip.file).name not in BAZEL_FILES and pip.version != bazel.version]
