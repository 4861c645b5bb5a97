"""A local artifact root (an MLflow server's --artifacts-destination, a ZenML local store): its
copy in the backup set is hard-linked where the set is on the same filesystem (no second copy of
the bytes; a file the upgrade replaces or deletes keeps its old content in the set), else copied."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from airlock.artifacts.base import COPY, ArtifactError, ArtifactStore, copy_location
from airlock.stores.base import BackupStore, sha256_of
from airlock.stores.local import private_dir

RESTORING = ".airlock-restore"
"""The suffix of a file being put back (renamed over the artifact once whole)."""
NOT_LINKABLE = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES}


class LocalArtifacts(ArtifactStore):
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.location = str(self.root)

    def files(self) -> Iterator[tuple[str, Path]]:
        """Every regular file under the root (symlinks are not followed), by key (its POSIX path)."""
        if not self.root.is_dir():
            raise ArtifactError(f"the artifact root {self.root} does not exist or is not a directory "
                                "(environment artifacts.location)")
        for folder, folders, names in os.walk(self.root):
            folders.sort()
            for name in sorted(names):
                path = Path(folder, name)
                if path.is_file() and not path.is_symlink() and not name.endswith(RESTORING):
                    yield path.relative_to(self.root).as_posix(), path

    def inventory(self) -> dict[str, dict]:
        return {key: file_entry(path) for key, path in self.files()}

    def keep(self, store: BackupStore, backup_id: str, tags: dict[str, str]) -> dict:
        directory, objects, linked = store.directory(backup_id), {}, 0
        for key, path in self.files():
            if directory is not None:
                copy = directory / COPY / key
                private_dir(copy.parent)
                linked += link_or_copy(path, copy)
                objects[key] = file_entry(copy)  # what the set holds is what a restore gives back
            else:
                with open(path, "rb") as stream:
                    digest = store.put_stream(backup_id, f"{COPY}/{key}", stream, tags)
                objects[key] = {"bytes": digest["bytes"], "sha256": digest["sha256"]}
        return {"objects": objects, "kept": {"copy": copy_location(store, backup_id), "hard_links": linked,
                                             "copies": len(objects) - linked}}

    def put_back(self, store: BackupStore, backup_id: str, key: str, entry: dict) -> None:
        target = (self.root / key).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise ArtifactError(f"backup {backup_id}: artifact {key!r} lies outside {self.root}; refusing it")
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(target.name + RESTORING)
        with store.open_stream(backup_id, f"{COPY}/{key}") as source, open(staged, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        if file_entry(staged) != entry:
            staged.unlink()
            raise ArtifactError(f"{key}: its copy in the set changed with it (a hard link: the file was rewritten in "
                                "place, not replaced), so it cannot be put back as it was")
        os.replace(staged, target)  # a new file: never written through a hard link into the set's copy


def file_entry(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256_of(path)}


def link_or_copy(source: Path, copy: Path) -> bool:
    """A hard link when the filesystem allows one (True), else a copy."""
    copy.unlink(missing_ok=True)
    try:
        os.link(source, copy)
        return True
    except OSError as error:
        if error.errno not in NOT_LINKABLE:
            raise
    shutil.copy2(source, copy)
    return False
