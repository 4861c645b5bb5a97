"""Which client versions the teams pin, read from their requirement and lock files.

Pure logic over files on the worker: no network, no pip. Each platform adapter says which client
versions work with a server version; this module finds the pins and applies that rule per file.
"""

from __future__ import annotations

import json
import re
import tomllib
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


def pins_in_requirements(path: Path, package: str, seen: set[Path] | None = None,
                         root: Path | None = None) -> list[ClientPin]:
    """Pins of `package` in a pip requirements file, following `-r`/`-c` includes inside the checkout."""
    seen = seen if seen is not None else set()
    root = root or checkout_of(path)
    if path.resolve() in seen:
        return []
    if len(seen) >= MAX_INCLUDED_FILES:
        raise ClientFileError(f"{path}: more than {MAX_INCLUDED_FILES} included files")
    seen.add(path.resolve())
    pins = []
    for number, raw in enumerate(read_team_file(path).splitlines(), start=1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        include = INCLUDE.fullmatch(line)
        if include:
            pins.extend(pins_in_requirements(included_file(path, number, include.group(1), root), package,
                                             seen, root))
            continue
        if not line or line.startswith("-"):
            continue
        try:
            requirement = Requirement(line.split(" --hash", 1)[0].rstrip(" \\"))
        except InvalidRequirement as error:
            raise ClientFileError(f"{path}:{number}: not a requirement ({error})") from None
        if canonicalize_name(requirement.name) == canonicalize_name(package):
            pins.append(ClientPin(str(path), f"line {number}", str(requirement), exact_version(requirement)))
    return pins


def pins_in_pyproject(path: Path, package: str) -> list[ClientPin]:
    """Pins in [project] dependencies (PEP 621) and optional-dependencies."""
    project = tomllib.loads(read_team_file(path)).get("project", {})
    groups = {"dependencies": project.get("dependencies", []),
              **{f"optional-dependencies.{k}": v for k, v in project.get("optional-dependencies", {}).items()}}
    pins = []
    for group, entries in groups.items():
        for text in entries:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == canonicalize_name(package):
                pins.append(ClientPin(str(path), f"[project] {group}", str(requirement),
                                      exact_version(requirement)))
    return pins


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


def read_pins(path: str | Path, package: str) -> list[ClientPin]:
    """Every mention of `package` in one requirement or lock file, by the file's format."""
    path = Path(path)
    try:
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
