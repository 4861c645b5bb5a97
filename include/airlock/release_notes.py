"""Every guide's "review the changelog": the release notes of each release a hop crosses, and the
breaking notes the guides make a point of (a table shipped in platforms/release_notes.json, extended
by the target's `release_notes`). A note that says in-progress runs fail, or that the old release
must be uninstalled first, changes the plan: it is said at the gate and the drain cannot be skipped."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from packaging.version import InvalidVersion, Version

TABLE = Path(__file__).parent / "platforms" / "release_notes.json"


@dataclass(frozen=True)
class BreakingNote:
    version: str
    note: str
    runs_fail: bool = False
    uninstall_first: bool = False
    source: str = "Airlock's table (the vendor's guide)"

    @property
    def blocks_skipping_the_drain(self) -> bool:
        return self.runs_fail or self.uninstall_first


@cache
def shipped() -> dict:
    return json.loads(TABLE.read_text())


def shipped_notes(platform: str) -> list[BreakingNote]:
    return [BreakingNote(**entry) for entry in shipped()[platform]["notes"]]


def crosses(version: str, current: str, target: str) -> bool:
    """True when a hop current → target passes `version` (current < version <= target)."""
    try:
        return Version(current) < Version(version) <= Version(target)
    except InvalidVersion:
        return False


def hop_notes(platform: str, published: list[str], current: str, target: str,
              extra: list[BreakingNote] = ()) -> dict:
    """What the gate shows of a hop: a link to each release's notes, the breaking notes it crosses
    (Airlock's table, then the target's own), and, when one of them says so, why the drain cannot
    be skipped."""
    url = shipped()[platform]["releases_url"]
    releases = sorted((v for v in set(published) if crosses(v, current, target)), key=Version)
    notes = sorted((note for note in [*shipped_notes(platform), *extra] if crosses(note.version, current, target)),
                   key=lambda note: Version(note.version))
    blocking = [note for note in notes if note.blocks_skipping_the_drain]
    return {"releases": [{"version": version, "url": url.format(version=version)} for version in releases],
            "breaking": [asdict(note) for note in notes],
            "drain_required": "; ".join(f"{note.version}: " + ("in-progress runs fail when the server is upgraded"
                                                             if note.runs_fail else
                                                             "the old release must be uninstalled first")
                                        for note in blocking) or None}
