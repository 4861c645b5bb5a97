"""Backup sets in a local directory: <root>/<target>/<environment>/<backup id>/ (the embedded default)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

from airlock.stores.base import IN_PROGRESS, BackupStore, digest_of_bytes, sha256_of


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
        self.path(backup_id).mkdir(parents=True)
        return self.path(backup_id)

    def directory(self, backup_id: str) -> Path:
        return self.path(backup_id)

    def put_stream(self, backup_id: str, name: str, stream: BinaryIO, tags: dict[str, str]) -> dict:
        target = self.path(backup_id) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)
        return self.digest(backup_id, name) or {}

    def open_stream(self, backup_id: str, name: str) -> AbstractContextManager[BinaryIO]:
        return open(self.path(backup_id) / name, "rb")

    def digest(self, backup_id: str, name: str) -> dict | None:
        path = self.path(backup_id) / name
        return {"sha256": sha256_of(path), "bytes": path.stat().st_size} if path.is_file() else None

    def write_json(self, backup_id: str, name: str, data: dict, tags: dict[str, str] | None = None) -> dict:
        payload = json.dumps(data, indent=2, sort_keys=True).encode()
        target = self.path(backup_id) / name
        staged = target.with_suffix(".tmp")
        staged.write_bytes(payload)
        os.replace(staged, target)
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
        self.base.mkdir(parents=True, exist_ok=True)
        fd, staged = tempfile.mkstemp(prefix=".marker-", dir=self.base)
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
        self.base.mkdir(parents=True, exist_ok=True)
        staged = self.marker_path().with_suffix(".tmp")
        staged.write_text(json.dumps(record, indent=2, sort_keys=True))
        os.replace(staged, self.marker_path())

    def read_marker(self) -> dict | None:
        return json.loads(self.marker_path().read_text()) if self.marker_path().is_file() else None

    def delete_marker(self) -> None:
        self.marker_path().unlink(missing_ok=True)
