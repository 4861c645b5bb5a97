"""What every backup store offers: files in, files out, JSON documents, listing, the upgrade marker."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

from airlock.signing import Signer

MANIFEST = "manifest.json"
VERIFICATION = "verification.json"
FINGERPRINT = "fingerprint.json"
"""In a final backup set: the platform's fingerprint of exactly the data in it, for a later rollback."""
IN_PROGRESS = "UPGRADE_IN_PROGRESS.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_of_bytes(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


class StoreError(RuntimeError):
    """A store refused or failed a request; the message names the object. (Each remote store raises
    its own kind, so callers catch this one without importing the store's client library.)"""


class MissingFile(StoreError):
    """A file of a set is not in the store."""


class MarkerTaken(RuntimeError):
    """Another run's in-progress marker is in the way: two runs must never both pass `freeze`."""

    def __init__(self, location: str, marker: dict | None):
        self.marker = marker or {}
        super().__init__(
            f"the environment's in-progress marker {location} belongs to run {self.marker.get('run_id')!r} "
            f"({self.marker.get('from_version')} → {self.marker.get('to_version')}): another upgrade holds this "
            "environment. Nothing was stopped by this run. Let that run finish or roll back (clear its rollback "
            "task), then clear this task.")


class BackupStore(ABC):
    """Backup sets keyed by id under <target>/<environment>; a set is complete once its manifest exists."""

    signer: Signer | None = None
    """Signs manifests as they are written and refuses unsigned or forged ones as they are read."""

    @abstractmethod
    def location(self, backup_id: str) -> str: ...

    @abstractmethod
    def begin(self, backup_id: str) -> Path | None:
        """Clear what an earlier try left; return a local directory to dump into, or None to stream."""

    @abstractmethod
    def directory(self, backup_id: str) -> Path | None:
        """The set's local directory (directory-format dumps restore from it), or None."""

    @abstractmethod
    def put_stream(self, backup_id: str, name: str, stream: BinaryIO, tags: dict[str, str]) -> dict:
        """Store a stream as one file of the set; return its sha256 and size."""

    @abstractmethod
    def open_stream(self, backup_id: str, name: str) -> AbstractContextManager[BinaryIO]: ...

    @abstractmethod
    def copy_file(self, source_id: str, backup_id: str, name: str, tags: dict[str, str]) -> None:
        """One file of the set `source_id` into the set `backup_id`, inside the store: nothing is read
        through the worker."""

    @abstractmethod
    def digest(self, backup_id: str, name: str) -> dict | None:
        """sha256 and size of a stored file, read back from the store; None when it is missing."""

    @abstractmethod
    def write_json(self, backup_id: str, name: str, data: dict, tags: dict[str, str] | None = None) -> dict: ...

    @abstractmethod
    def read_json(self, backup_id: str, name: str) -> dict | None: ...

    @abstractmethod
    def backup_ids(self) -> list[str]:
        """Every set with anything stored, complete or not."""

    @abstractmethod
    def delete(self, backup_id: str) -> None: ...

    @abstractmethod
    def marker_location(self) -> str: ...

    @abstractmethod
    def create_marker(self, record: dict) -> bool:
        """Write the marker only if there is none (atomically); False when one is already there."""

    @abstractmethod
    def write_marker(self, record: dict) -> None: ...

    @abstractmethod
    def read_marker(self) -> dict | None: ...

    @abstractmethod
    def delete_marker(self) -> None: ...

    # -- shared behaviour ----------------------------------------------------------------------
    def backups(self) -> list[str]:
        """Complete sets only: a set without a manifest is never offered for a rollback."""
        return [backup_id for backup_id in self.backup_ids() if self.read_json(backup_id, MANIFEST)]

    def mark_in_progress(self, record: dict) -> None:
        """Take the marker for `record`'s run (exclusively), or update it while it is still that run's.
        Raises MarkerTaken when another run holds it."""
        current = self.read_marker()
        if current is None:
            if self.create_marker(record):
                return
            current = self.read_marker()
        if current is not None and current.get("run_id") != record.get("run_id"):
            raise MarkerTaken(self.marker_location(), current)
        self.write_marker(record)

    def in_progress(self) -> dict | None:
        return self.read_marker()

    def clear_in_progress(self, run_id: str) -> None:
        """Remove the marker if it is `run_id`'s; another run's marker is left where it is."""
        current = self.read_marker()
        if current is not None and current.get("run_id") == run_id:
            self.delete_marker()
