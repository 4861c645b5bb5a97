"""Backup sets in a local directory: <root>/<target>/<environment>/<backup id>/ (the embedded default)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

from airlock.stores.base import IN_PROGRESS, MANIFEST, BackupStore, MissingFile, digest_of_bytes, sha256_of


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) readable by the owner only: a backup holds every team's data."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, owner-only from the first byte."""
    staged = path.with_name(f".{path.name}.tmp")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(staged, path)


def make_private(directory: Path) -> None:
    """Tools (mydumper, pg_dump) write with their own umask: tighten what they left. A file with
    other links (an artifact hard-linked into the set) shares its mode with its owner's: it is left
    as it is, private through the set's folders."""
    for root, folders, files in os.walk(directory):
        for name in folders:
            os.chmod(os.path.join(root, name), 0o700)
        for name in files:
            path = os.path.join(root, name)
            if os.stat(path, follow_symlinks=False).st_nlink == 1:
                os.chmod(path, 0o600)


class LocalBackupStore(BackupStore):
    def __init__(self, root: str | Path, target: str, environment: str):
        self.base = Path(root) / target / environment

    def path(self, backup_id: str) -> Path:
        return self.base / backup_id

    def location(self, backup_id: str) -> str:
        return str(self.path(backup_id))

    def begin(self, backup_id: str) -> Path:
        """An empty directory for a new backup; a partial one from an earlier try is removed."""
        self.delete(backup_id)
        private_dir(self.base)
        self.path(backup_id).mkdir(mode=0o700)
        return self.path(backup_id)

    def directory(self, backup_id: str) -> Path:
        return self.path(backup_id)

    def put_stream(self, backup_id: str, name: str, stream: BinaryIO, tags: dict[str, str]) -> dict:
        target = self.path(backup_id) / name
        private_dir(target.parent)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)
        return self.digest(backup_id, name) or {}

    def open_stream(self, backup_id: str, name: str) -> AbstractContextManager[BinaryIO]:
        return open(self.path(backup_id) / name, "rb")

    def copy_file(self, source_id: str, backup_id: str, name: str, tags: dict[str, str]) -> None:
        """A hard link (the sets are owner-only folders of one file system); a copy where links fail."""
        source, target = self.path(source_id) / name, self.path(backup_id) / name
        if not source.is_file():
            raise MissingFile(f"{source} does not exist")
        private_dir(target.parent)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
            os.chmod(target, 0o600)

    def digest(self, backup_id: str, name: str) -> dict | None:
        path = self.path(backup_id) / name
        return {"sha256": sha256_of(path), "bytes": path.stat().st_size} if path.is_file() else None

    def write_json(self, backup_id: str, name: str, data: dict, tags: dict[str, str] | None = None) -> dict:
        payload = json.dumps(data, indent=2, sort_keys=True).encode()
        if name == MANIFEST:
            make_private(self.path(backup_id))  # the manifest is written last: nothing is added after it
        write_private(self.path(backup_id) / name, payload)
        return digest_of_bytes(payload)

    def read_json(self, backup_id: str, name: str) -> dict | None:
        path = self.path(backup_id) / name
        return json.loads(path.read_text()) if path.is_file() else None

    def backup_ids(self) -> list[str]:
        if not self.base.is_dir():
            return []
        return sorted(p.name for p in self.base.iterdir() if p.is_dir())

    def delete(self, backup_id: str) -> None:
        if self.path(backup_id).exists():
            shutil.rmtree(self.path(backup_id))

    def marker_location(self) -> str:
        return str(self.base / IN_PROGRESS)

    def marker_path(self) -> Path:
        return self.base / IN_PROGRESS

    def create_marker(self, record: dict) -> bool:
        """Staged in a private file, then hard-linked into place: link() fails if the marker exists."""
        private_dir(self.base)
        fd, staged = tempfile.mkstemp(prefix=".marker-", dir=self.base)  # mkstemp: 0600
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(record, indent=2, sort_keys=True))
            os.link(staged, self.marker_path())
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(staged)

    def write_marker(self, record: dict) -> None:
        write_private(private_dir(self.base) / IN_PROGRESS, json.dumps(record, indent=2, sort_keys=True).encode())

    def read_marker(self) -> dict | None:
        return json.loads(self.marker_path().read_text()) if self.marker_path().is_file() else None

    def delete_marker(self) -> None:
        self.marker_path().unlink(missing_ok=True)
