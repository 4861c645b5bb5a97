"""The platform's published versions, from the target's release source: the package index by
default; a file or a URL listing them for sites that cannot reach it."""

from __future__ import annotations

import json
from pathlib import Path

from airlock.config_operations import ReleaseSource
from airlock.http import ServerError, request_text
from airlock.platforms.base import PlatformAdapter


class ReleaseSourceError(RuntimeError):
    """The release source cannot be read, or lists nothing usable; the message names it."""


def published_versions(source: ReleaseSource, adapter: PlatformAdapter) -> list[str]:
    if not (source.file or source.url):
        return adapter.published_versions()
    try:
        text = Path(source.file).read_text() if source.file else request_text(source.url, timeout=30)
    except (OSError, ServerError) as error:
        raise ReleaseSourceError(f"cannot read the {adapter.name} releases from {source.describe()}: {error}") from None
    versions = parse_listing(text)
    if not versions:
        raise ReleaseSourceError(f"{source.describe()} lists no {adapter.name} version (expected one per line, "
                                 "or a JSON list such as [\"3.17.1\", \"3.17.2\"])")
    return versions


def parse_listing(text: str) -> list[str]:
    """A JSON list of versions, or one per line (blank lines and # comments ignored)."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            listed = json.loads(stripped)
        except json.JSONDecodeError:
            return []
        return [str(v).strip() for v in listed if str(v).strip()]
    lines = (line.split("#", 1)[0].strip() for line in stripped.splitlines())
    return [line for line in lines if line]
