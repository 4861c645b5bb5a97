"""The artifact store beside the database (the MLflow guide, step 3: "backup artifacts"): models,
plots and files the runs point to. A backup set holds its inventory (every file or object: size and
checksum or ETag, and the version id where the bucket keeps versions) and, where the store itself
cannot give an object back, a copy. After the upgrade the inventory is taken again: an artifact the
upgrade deleted or changed is named, and a rollback puts it back. Artifacts added since are kept:
nothing written is lost."""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import UTC, datetime

from airlock.stores.base import BackupStore, StoreError

INVENTORY = "artifacts.json"
"""The inventory's file in a backup set (listed in the signed manifest)."""
COPY = "artifacts"
"""The folder of a backup set that holds the copy of the artifacts, when one is needed."""
NAMED = 20
"""How many deleted or changed artifacts a message names (the rest are counted)."""


class ArtifactError(RuntimeError):
    """The artifact store could not be read, kept or restored; the message says what and where."""


class ArtifactStore(ABC):
    """One artifact store: a local root or an S3 prefix."""

    location: str

    @abstractmethod
    def keep(self, store: BackupStore, backup_id: str, tags: dict[str, str]) -> dict:
        """Into the backup set, whatever a restore will need; the inventory of what was kept:
        {"objects": {key: entry}, "kept": how}."""

    @abstractmethod
    def inventory(self) -> dict[str, dict]:
        """Every artifact now: key → entry (comparable with `same`)."""

    @abstractmethod
    def put_back(self, store: BackupStore, backup_id: str, key: str, entry: dict) -> None:
        """The artifact `key` as the inventory recorded it, from the set's copy or the bucket's versions."""

    @staticmethod
    def same(before: dict, after: dict) -> bool:
        return before == after


def copy_location(store: BackupStore, backup_id: str) -> str:
    """Where a set's copy of the artifacts is."""
    return f"{store.location(backup_id).rstrip('/')}/{COPY}"


def keep_artifacts(artifacts: ArtifactStore, store: BackupStore, backup_id: str, tags: dict[str, str]) -> dict:
    """The inventory (and copy) in the backup set; its file's digest, for the manifest."""
    kept = artifacts.keep(store, backup_id, tags)
    return store.write_json(backup_id, INVENTORY, {"location": artifacts.location, **kept,
                                                   "taken_at": datetime.now(UTC).isoformat(timespec="seconds")}, tags)


def recorded(store: BackupStore, backup_id: str) -> dict | None:
    return store.read_json(backup_id, INVENTORY)


def differences(artifacts: ArtifactStore, before: dict[str, dict], now: dict[str, dict]) -> dict[str, list[str]]:
    """What the store lost since the inventory (deleted, changed), and what was added (kept as it is)."""
    return {"deleted": sorted(set(before) - set(now)),
            "changed": sorted(key for key in set(before) & set(now) if not artifacts.same(before[key], now[key])),
            "added": sorted(set(now) - set(before))}


def named(keys: list[str]) -> str:
    more = f" and {len(keys) - NAMED} more" if len(keys) > NAMED else ""
    return ", ".join(keys[:NAMED]) + more


def compare_artifacts(artifacts: ArtifactStore, store: BackupStore, backup_id: str) -> dict:
    """The artifact store now against the set's inventory."""
    kept = recorded(store, backup_id)
    if kept is None:
        raise ArtifactError(f"backup {backup_id} at {store.location(backup_id)} holds no inventory of the artifact "
                            f"store {artifacts.location}: it was taken before `artifacts` was configured")
    diff = differences(artifacts, kept["objects"], artifacts.inventory())
    return {"location": artifacts.location, "backup_id": backup_id, "inventoried": len(kept["objects"]),
            "deleted": diff["deleted"], "changed": diff["changed"], "added": len(diff["added"])}


def lost_artifacts(compared: dict) -> str:
    """What the store lost, for a message ('' when nothing)."""
    parts = [f"{len(compared[kind])} {kind} ({named(compared[kind])})" for kind in ("deleted", "changed")
             if compared[kind]]
    return "; ".join(parts)


def restore_artifacts(artifacts: ArtifactStore, store: BackupStore, backup_id: str) -> dict:
    """Every artifact of the inventory that was deleted or changed, put back and checked again;
    artifacts added since are left where they are. Safe to repeat."""
    before = compare_artifacts(artifacts, store, backup_id)
    objects = recorded(store, backup_id)["objects"]
    refused = []
    for key in before["deleted"] + before["changed"]:
        try:
            artifacts.put_back(store, backup_id, key, objects[key])
        except (ArtifactError, StoreError, OSError) as error:  # the others are still put back
            refused.append(f"{key}: {error}")
    after = compare_artifacts(artifacts, store, backup_id)
    if refused or after["deleted"] or after["changed"]:
        raise ArtifactError(f"the artifact store {artifacts.location} still differs from backup {backup_id} after "
                            f"the restore: {'; '.join(refused) or lost_artifacts(after)}")
    return {"location": artifacts.location, "backup_id": backup_id, "restored": before["deleted"] + before["changed"],
            "added_since_kept": before["added"]}
