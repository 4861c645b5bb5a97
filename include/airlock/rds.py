"""RDS snapshots for upgrade rollbacks, through the amazon provider's RDS hook.

Before the migration (server stopped) a manual snapshot of the instance is taken. A rollback
restores it into a new instance, renames the migrated instance aside (kept for post-mortem, never
deleted by Airlock) and gives the restored one the original name, so its endpoint, and so every
client's configuration, stays the same.
"""

from __future__ import annotations

import hashlib
import re

from botocore.exceptions import ClientError

from airlock.waits import Wait, Waiting


class RdsError(RuntimeError):
    """An RDS call failed or an instance/snapshot is not in the state the upgrade needs."""


def snapshot_id_for(instance_id: str, run_id: str) -> str:
    """Deterministic per run (a retry finds its snapshot); letters, digits and single hyphens."""
    slug = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", run_id.lower())).strip("-")
    return f"airlock-{instance_id}-{slug}"[:255].rstrip("-")


def instance_name(instance_id: str, role: str, suffix: str) -> str:
    """<instance>-<role>-<8 hex of the run>: at most 63 characters, distinct for every run (a plain
    truncation of a long id would give two runs the same name), no double or trailing hyphen."""
    digest = hashlib.sha256(suffix.encode()).hexdigest()[:8]
    head = re.sub(r"-+", "-", instance_id[:63 - len(role) - len(digest) - 2]).rstrip("-")
    return f"{head}-{role}-{digest}"


def client_for(aws_conn_id: str):
    from airflow.providers.amazon.aws.hooks.rds import RdsHook

    return RdsHook(aws_conn_id=aws_conn_id).conn


def instance_check(aws_conn_id: str, instance_id: str) -> dict:
    """Done when the RDS instance exists and is available (polled in the triggerer)."""
    found = RdsSnapshots.connect(aws_conn_id, instance_id).instance(instance_id)
    status = found["DBInstanceStatus"] if found else "missing"
    return {"done": status == "available", "status": status}


class RdsSnapshots:
    def __init__(self, client, instance_id: str, aws_conn_id: str):
        self.client, self.instance_id, self.aws_conn_id = client, instance_id, aws_conn_id

    @classmethod
    def connect(cls, aws_conn_id: str, instance_id: str) -> RdsSnapshots:
        return cls(client_for(aws_conn_id), instance_id, aws_conn_id)

    def call(self, what: str, method, **kwargs):
        try:
            return method(**kwargs)
        except ClientError as error:
            raise RdsError(f"RDS {what} failed: {error}") from None

    def snapshot_status(self, snapshot_id: str) -> str:
        """'available', 'creating', 'failed'…, or 'missing'."""
        try:
            found = self.client.describe_db_snapshots(DBSnapshotIdentifier=snapshot_id)["DBSnapshots"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "DBSnapshotNotFound":
                return "missing"
            raise RdsError(f"RDS describe of snapshot {snapshot_id} failed: {error}") from None
        return found[0]["Status"] if found else "missing"

    def create_snapshot(self, snapshot_id: str, tags: dict[str, str]) -> dict:
        """A manual snapshot of the instance (idempotent: an existing one of that id is reused)."""
        status = self.snapshot_status(snapshot_id)
        if status == "missing":
            self.call(f"snapshot of {self.instance_id}", self.client.create_db_snapshot,
                      DBInstanceIdentifier=self.instance_id, DBSnapshotIdentifier=snapshot_id,
                      Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
            status = self.snapshot_status(snapshot_id)
        return {"instance": self.instance_id, "snapshot": snapshot_id, "status": status}

    def instance(self, instance_id: str) -> dict | None:
        try:
            return self.client.describe_db_instances(DBInstanceIdentifier=instance_id)["DBInstances"][0]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "DBInstanceNotFound":
                return None
            raise RdsError(f"RDS describe of instance {instance_id} failed: {error}") from None

    def available(self, instance_id: str, timeout: float, interval: float) -> Wait:
        """Until the instance exists and is available (a restore or a rename takes minutes to hours)."""
        return Wait(what=f"RDS instance {instance_id} available", check="airlock.rds:instance_check",
                    kwargs={"aws_conn_id": self.aws_conn_id, "instance_id": instance_id},
                    timeout_seconds=timeout, poll_interval=interval)

    def restore_settings(self) -> dict:
        """What the restored instance must share with the original so clients and operations see the
        same server: network (subnet group, security groups, public access), parameter group, class,
        storage type, Multi-AZ and tags. (A restore otherwise takes the account's defaults.)"""
        original = self.instance(self.instance_id)
        if original is None:
            raise RdsError(f"RDS instance {self.instance_id} not found: nothing to restore it like")
        settings = {
            "DBInstanceClass": original.get("DBInstanceClass"),
            "DBSubnetGroupName": (original.get("DBSubnetGroup") or {}).get("DBSubnetGroupName"),
            "VpcSecurityGroupIds": [group["VpcSecurityGroupId"] for group in original.get("VpcSecurityGroups", [])],
            "DBParameterGroupName": next((group["DBParameterGroupName"]
                                          for group in original.get("DBParameterGroups", [])), None),
            "MultiAZ": original.get("MultiAZ"),
            "PubliclyAccessible": original.get("PubliclyAccessible"),
            "StorageType": original.get("StorageType"),
            "Tags": self.call(f"tags of {self.instance_id}", self.client.list_tags_for_resource,
                              ResourceName=original["DBInstanceArn"]).get("TagList", []),
        }
        return {key: value for key, value in settings.items() if value not in (None, [])}

    def restore_and_swap(self, snapshot_id: str, suffix: str, timeout: float = 3600, interval: float = 15) -> Waiting:
        """Restore the snapshot into a new instance like the original and give it the original name,
        each wait for an instance handed to the triggerer. Idempotent: a rerun (after a wait, or a
        partial swap) continues where the last one stopped."""
        restored, aside = (instance_name(self.instance_id, role, suffix) for role in ("restored", "failed"))
        if self.instance(aside) is None:  # not swapped yet
            if self.instance(restored) is None:
                self.call(f"restore of {snapshot_id}", self.client.restore_db_instance_from_db_snapshot,
                          DBInstanceIdentifier=restored, DBSnapshotIdentifier=snapshot_id,
                          **self.restore_settings())
            yield self.available(restored, timeout, interval)
            self.call(f"rename of {self.instance_id}", self.client.modify_db_instance,
                      DBInstanceIdentifier=self.instance_id, NewDBInstanceIdentifier=aside, ApplyImmediately=True)
            yield self.available(aside, timeout, interval)
        if self.instance(restored) is not None:
            self.call(f"rename of {restored}", self.client.modify_db_instance, DBInstanceIdentifier=restored,
                      NewDBInstanceIdentifier=self.instance_id, ApplyImmediately=True)
        yield self.available(self.instance_id, timeout, interval)
        return {"instance": self.instance_id, "from_snapshot": snapshot_id, "migrated_instance_kept_as": aside}
