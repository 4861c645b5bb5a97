"""Version parsing and upgrade-path planning.

Pure logic: no I/O. The platform adapter supplies the versions the vendor publishes; this module
decides whether an upgrade from one to another is allowed and which steps it takes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from packaging.version import InvalidVersion, Version

LATEST_PATCH = "latest-patch"
TARGET_VERSION_PATTERN = r"^(latest-patch|[0-9]{1,6}\.[0-9]{1,6}\.[0-9]{1,6})$"
"""What the trigger form accepts as a target version: a full release number or latest-patch."""


MAX_VERSION_LENGTH = 64
"""Longer than any real release number; a 5000-digit "version" is refused before int() chokes on it."""


class PlanError(ValueError):
    """An upgrade that Airlock refuses to plan; the message says why and what to do instead."""


class Change(StrEnum):
    """How far an upgrade moves; drives how much ceremony it needs."""

    NONE = "none"
    PATCH = "patch"
    MINOR = "minor"
    MAJOR = "major"


def parse_version(text: str, *, what: str = "version") -> Version:
    """Parse a release version, naming `what` in the error so the operator knows which input."""
    text = str(text).strip()
    if len(text) > MAX_VERSION_LENGTH:
        raise PlanError(f"{what} is {len(text)} characters long, not a version number (expected e.g. 3.17.2)")
    try:
        version = Version(text)
    except (InvalidVersion, ValueError):
        raise PlanError(f"{what} {text!r} is not a version number (expected e.g. 3.17.2)") from None
    if version.local:
        raise PlanError(f"{what} {text!r} has a local part (+...); use a published release")
    return version


def classify(current: Version, target: Version) -> Change:
    """Classify the step from `current` to `target` (which must not be older)."""
    if target.release[:1] != current.release[:1]:
        return Change.MAJOR
    if target.release[:2] != current.release[:2]:
        return Change.MINOR
    if target != current:
        return Change.PATCH
    return Change.NONE


def minor_key(version: Version) -> tuple[int, int]:
    """The (major, minor) series a version belongs to."""
    release = (*version.release, 0)
    return release[0], release[1]


@dataclass(frozen=True)
class UpgradePlan:
    """What an upgrade will do: the decision the preflight phase hands to every later phase."""

    current: str
    target: str
    change: Change
    skipped_minors: list[str] = field(default_factory=list)
    """Latest patch of each minor series between current and target that this plan jumps over."""

    @property
    def is_noop(self) -> bool:
        return self.change is Change.NONE

    def describe(self) -> str:
        if self.is_noop:
            return f"already at {self.target}: nothing to upgrade"
        text = f"{self.current} → {self.target} ({self.change} upgrade)"
        if self.skipped_minors:
            text += f", skipping minor releases {', '.join(self.skipped_minors)}"
        return text

    def to_dict(self) -> dict:
        return {
            "current": self.current,
            "target": self.target,
            "change": str(self.change),
            "skipped_minors": list(self.skipped_minors),
            "description": self.describe(),
        }


def stable_versions(published: list[str]) -> list[Version]:
    """Published final releases, oldest first (pre-releases and unparseable tags dropped)."""
    versions = set()
    for text in published:
        try:
            version = parse_version(text)
        except PlanError:
            continue
        if not (version.is_prerelease or version.is_devrelease or version.local):
            versions.add(version)
    return sorted(versions)


def latest_per_minor(versions: list[Version]) -> dict[tuple[int, int], Version]:
    """The newest release of each minor series."""
    latest: dict[tuple[int, int], Version] = {}
    for version in versions:
        key = minor_key(version)
        if key not in latest or version > latest[key]:
            latest[key] = version
    return latest


def check_requested(requested: str) -> str:
    """The operator's target_version, refused early unless it is x.y.z or latest-patch."""
    text = str(requested or "").strip()
    if not re.fullmatch(TARGET_VERSION_PATTERN, text):
        shown = repr(text) if len(text) <= MAX_VERSION_LENGTH else f"of {len(text)} characters"
        raise PlanError(f"param target_version {shown} must be a full release number such as 3.17.2, "
                        f"or {LATEST_PATCH!r}")
    return text


def resolve_target(requested: str, current: Version, published: list[str]) -> Version:
    """Turn the requested target (a version, or `latest-patch`) into a published version."""
    if requested.strip() == LATEST_PATCH:
        same_minor = [v for v in stable_versions(published) if minor_key(v) == minor_key(current)]
        return max(same_minor, default=current)
    return parse_version(requested, what="target_version")


def plan_upgrade(
    current_text: str,
    requested: str,
    published: list[str],
    *,
    platform: str,
    allow_minor_skips: bool,
    downgrade_note: str = "",
) -> UpgradePlan:
    """Plan current → requested, refusing downgrades, unpublished versions and silent skips."""
    current = parse_version(current_text, what=f"the running {platform} version")
    target = resolve_target(requested, current, published)
    available = stable_versions(published)
    if target < current:
        raise PlanError(
            f"{platform} {target} is older than the running {current}: downgrades are refused "
            f"({downgrade_note or 'database migrations are one-way; roll back from a backup instead'})"
        )
    if target != current and target not in available:
        newest = ", ".join(str(v) for v in available[-5:]) or "none found"
        raise PlanError(
            f"{platform} {target} is not a published release (newest published: {newest})"
        )
    change = classify(current, target)
    skipped = skipped_minor_releases(current, target, available)
    if skipped and not allow_minor_skips:
        path = " → ".join([str(current), *skipped, str(target)])
        raise PlanError(
            f"{platform} {current} → {target} skips {len(skipped)} minor release(s). Take them in "
            f"order ({path}), or set upgrade.allow_minor_skips: true for this target."
        )
    return UpgradePlan(str(current), str(target), change, skipped)


def skipped_minor_releases(current: Version, target: Version, available: list[Version]) -> list[str]:
    """Latest patch of each minor series strictly between current's and target's series."""
    lower, upper = minor_key(current), minor_key(target)
    latest = latest_per_minor(available)
    return [str(latest[key]) for key in sorted(latest) if lower < key < upper]
