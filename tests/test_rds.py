"""RDS-hosted databases against moto's RDS API: a snapshot with the server stopped, a deferrable
wait, and a rollback that restores the snapshot and swaps it in under the original name."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from airlock import steps
from airlock.config import load_target, load_targets
from airlock.dag_factory import build_upgrade_dags
from airlock.demo import SEED_MLFLOW
from airlock.environment import open_environment
from airlock.operators import RdsSnapshotSensor
from airlock.rds import RdsSnapshots, client_for, snapshot_id_for
from airlock.triggers import CheckFailed, PollTrigger
from airlock.waits import run_waits
from services import new_database

pytestmark = pytest.mark.integration
AWS = "airlock_test_rds"  # the aws_conn_id fixture names it after this module
INSTANCE = "mlflow-prod"
RUN = "manual__2026-11-23T10:00:00+00:00"


@pytest.fixture(scope="module")
def rds_client(aws_conn_id):
    client = client_for(aws_conn_id)
    client.create_db_instance(DBInstanceIdentifier=INSTANCE, DBInstanceClass="db.t3.micro", Engine="mysql",
                              MasterUsername="admin", MasterUserPassword="not-used-here", AllocatedStorage=20)
    return client


@pytest.fixture
def rds_target(tmp_path):
    database = new_database("airlock_it_rds")
    envs = {name: {"url": f"http://127.0.0.1:{port}", "driver": {"kind": "process", "state_dir": str(tmp_path / name)},
                   "database": {"kind": "mysql", "conn_id": "unused", "database": f"db_{name}",
                                **({"rds": {"instance_id": INSTANCE, "aws_conn_id": AWS}}
                                   if name == "production" else {})}}
            for name, port in (("staging", 5191), ("production", 5192))}
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump({"targets": {"on_rds": {
        "platform": "mlflow", "approvers": ["admin"], "upgrade": {"allow_minor_skips": True},
        "backup": {"location": str(tmp_path / "backups")}, "environments": envs}}}))
    env = open_environment(load_target("on_rds", path), "production", resolve=lambda config: database)
    yield path, env
    env.driver.stop()
    database.drop()


def test_snapshot_is_taken_once_tagged_and_recorded(rds_client, rds_target):
    _, env = rds_target
    env.store.mark_in_progress({"run_id": RUN, "from_version": "2.16.2"})
    first = steps.rds_snapshot(env, RUN)
    again = steps.rds_snapshot(env, RUN)  # a retry reuses it
    assert first == again == {"instance": INSTANCE, "snapshot": snapshot_id_for(INSTANCE, RUN), "status": "available"}
    snapshot = rds_client.describe_db_snapshots(DBSnapshotIdentifier=first["snapshot"])["DBSnapshots"][0]
    tags = {t["Key"]: t["Value"] for t in rds_client.list_tags_for_resource(
        ResourceName=snapshot["DBSnapshotArn"])["TagList"]}
    assert tags["airlock:run_id"] == RUN and tags["airlock:from_version"] == "2.16.2"
    assert env.store.in_progress()["rds_snapshot_id"] == first["snapshot"]


def test_snapshot_wait_is_deferrable_and_fails_clearly(rds_client):
    snapshot_id = "airlock-wait-test"
    rds_client.create_db_snapshot(DBInstanceIdentifier=INSTANCE, DBSnapshotIdentifier=snapshot_id)
    sensor = RdsSnapshotSensor(task_id="rds_snapshot_ready", aws_conn_id=AWS, instance_id=INSTANCE,
                               snapshot_id=snapshot_id, timeout_minutes=1, poll_interval=0.2)
    assert sensor.execute({})["status"] == "available"
    deadline = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()

    async def first_event(trigger):
        async for event in trigger.run():
            return event.payload

    kwargs = {"aws_conn_id": AWS, "instance_id": INSTANCE}
    done = asyncio.run(first_event(PollTrigger("airlock.triggers:snapshot_check",
                                               {**kwargs, "snapshot_id": snapshot_id}, 0.2, deadline)))
    assert done["status"] == "done"
    missing = asyncio.run(first_event(PollTrigger("airlock.triggers:snapshot_check",
                                                  {**kwargs, "snapshot_id": "airlock-no-such"}, 0.2, deadline)))
    assert missing["status"] == "error" and "airlock-no-such" in missing["message"]
    with pytest.raises(CheckFailed, match="is missing"):
        RdsSnapshotSensor(task_id="t", aws_conn_id=AWS, instance_id=INSTANCE, snapshot_id="airlock-no-such",
                          timeout_minutes=1, poll_interval=0.2).execute({})


def test_rollback_restores_the_snapshot_under_the_original_name(rds_client, rds_target, mlflow_venvs):
    _, env = rds_target
    env.driver.start("2.16.2")
    subprocess.run([str(env.driver.venv_path("2.16.2") / "bin" / "python"), str(SEED_MLFLOW), env.config.url],
                   check=True, capture_output=True)
    fingerprint = env.adapter.fingerprint().to_dict()
    env.store.mark_in_progress({"run_id": RUN, "from_version": "2.16.2", "to_version": "3.17.2",
                                "fingerprint": fingerprint, "migration_started": False})
    snapshot = steps.rds_snapshot(env, RUN)["snapshot"]
    marker = env.store.in_progress()
    env.store.mark_in_progress({**marker, "migration_started": True})  # no dump backup: RDS path only

    result = run_waits(steps.rollback(env, RUN))

    assert result["rolled_back"] and result["fingerprint_equal"] and result["version"] == "2.16.2"
    assert result["restored"]["from_snapshot"] == snapshot
    instances = {i["DBInstanceIdentifier"] for i in rds_client.describe_db_instances()["DBInstances"]}
    assert INSTANCE in instances and result["restored"]["migrated_instance_kept_as"] in instances
    assert not [i for i in instances if "-restored-" in i]
    assert env.store.in_progress() is None


def test_rds_target_dag_snapshots_between_backup_and_migration(rds_target):
    path, _ = rds_target
    dag = build_upgrade_dags(load_targets(str(path)))["airlock_upgrade__on_rds"]
    chain = ["backup", "rds_snapshot", "rds_snapshot_ready", "migrate"]
    for earlier, later in itertools.pairwise(chain):
        assert f"production_upgrade.{earlier}" in dag.get_task(f"production_upgrade.{later}").upstream_task_ids
    assert isinstance(dag.get_task("production_upgrade.rds_snapshot_ready"), RdsSnapshotSensor)
    assert "staging_upgrade.rds_snapshot" not in dag.task_ids  # staging is not on RDS here


def test_a_restored_instance_keeps_the_originals_network_parameters_and_tags(rds_client, aws_conn_id):
    """The swapped-in instance must be reachable and configured like the original; names fit 63
    characters and differ between runs even for a long instance id."""
    import boto3

    ec2 = boto3.client("ec2", endpoint_url=rds_client.meta.endpoint_url, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24", AvailabilityZone=f"us-east-1{zone}")
               ["Subnet"]["SubnetId"] for i, zone in ((1, "a"), (2, "b"))]
    group = ec2.create_security_group(GroupName="mlflow-db", Description="mlflow db", VpcId=vpc)["GroupId"]
    rds_client.create_db_subnet_group(DBSubnetGroupName="ml-private", DBSubnetGroupDescription="private",
                                      SubnetIds=subnets)
    rds_client.create_db_parameter_group(DBParameterGroupName="mlflow-params", DBParameterGroupFamily="mysql8.0",
                                         Description="tuned")
    long_id = "mlflow-production-metadata-store-for-the-ml-platform-team-x"  # 59 characters
    rds_client.create_db_instance(
        DBInstanceIdentifier=long_id, DBInstanceClass="db.r6g.large", Engine="mysql", MasterUsername="admin",
        MasterUserPassword="not-used-here", AllocatedStorage=50, DBSubnetGroupName="ml-private",
        VpcSecurityGroupIds=[group], DBParameterGroupName="mlflow-params", MultiAZ=True,
        PubliclyAccessible=False, Tags=[{"Key": "team", "Value": "ml-platform"}, {"Key": "cost", "Value": "42"}])
    snapshots = RdsSnapshots(rds_client, long_id, aws_conn_id)
    names = set()
    for run in ("scheduled__2026-11-23T10:00:00+00:00", "scheduled__2026-11-23T10:00:00+00:01"):
        snapshot = snapshot_id_for(long_id, run)
        snapshots.create_snapshot(snapshot, {"airlock:run_id": run})
        result = run_waits(snapshots.restore_and_swap(snapshot, run, interval=0.1))
        names.add(result["migrated_instance_kept_as"])
        swapped = snapshots.instance(long_id)
        assert swapped["DBInstanceClass"] == "db.r6g.large"
        assert swapped["DBSubnetGroup"]["DBSubnetGroupName"] == "ml-private"
        assert [g["VpcSecurityGroupId"] for g in swapped["VpcSecurityGroups"]] == [group]
        assert swapped["DBParameterGroups"][0]["DBParameterGroupName"] == "mlflow-params"
        assert swapped["MultiAZ"] is True and swapped["PubliclyAccessible"] is False
        tags = rds_client.list_tags_for_resource(ResourceName=swapped["DBInstanceArn"])["TagList"]
        assert {"Key": "team", "Value": "ml-platform"} in tags and {"Key": "cost", "Value": "42"} in tags
    assert len(names) == 2 and all(len(name) <= 63 and "--" not in name for name in names)


def test_a_wait_rides_out_connections_reset_by_the_network(rds_client, monkeypatch):
    """Eight connections to the RDS API are reset (more than boto's own retries absorb): the deferred
    wait backs off and goes on instead of failing the upgrade; a real verdict still fails at once."""
    from urllib.parse import urlparse

    from services import FlakyProxy, aws_connection_json

    snapshot_id = "airlock-flaky-test"
    rds_client.create_db_snapshot(DBInstanceIdentifier=INSTANCE, DBSnapshotIdentifier=snapshot_id)
    endpoint = urlparse(rds_client.meta.endpoint_url)
    proxy = FlakyProxy(endpoint.hostname, endpoint.port, failures=8)
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOCK_TEST_FLAKY", aws_connection_json(f"http://127.0.0.1:{proxy.port}"))
    deadline = (datetime.now(UTC) + timedelta(seconds=60)).isoformat()

    async def first_event(trigger):
        async for event in trigger.run():
            return event.payload

    try:
        done = asyncio.run(first_event(PollTrigger(
            "airlock.triggers:snapshot_check", {"aws_conn_id": "airlock_test_flaky", "instance_id": INSTANCE,
                                                "snapshot_id": snapshot_id}, 0.1, deadline)))
    finally:
        proxy.close()
    assert proxy.reset == 8
    assert done["status"] == "done" and done["polls"] >= 2, done
