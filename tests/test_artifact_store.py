"""The artifact store (the MLflow guide's "backup artifacts"): inventoried and kept in the backup
set, compared after the upgrade, put back by a rollback. On a local root (hard links), on a
versioned bucket (its versions are the copy) and an unversioned one (copied into the set), in moto;
and through the upgrade's own steps on a real MLflow on MariaDB."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from airlock import oncall, steps
from airlock.artifacts.base import (
    INVENTORY,
    compare_artifacts,
    keep_artifacts,
    lost_artifacts,
    recorded,
    restore_artifacts,
)
from airlock.artifacts.local import LocalArtifacts
from airlock.artifacts.s3 import S3Artifacts
from airlock.drivers.process import port_open
from airlock.stores.base import MANIFEST
from airlock.stores.local import LocalBackupStore
from airlock.waits import run_waits
from harness import NEW, OLD, make_scenario, seeded_production
from leaks import PLANTED

SET = "production--final--manual-1--a1"
TAGS = {"target": "arts", "environment": "production"}
BEFORE = {"model/MLmodel": b"flavors: {sklearn: {}}\n", "model/model.pkl": b"\x80\x04pickled" * 100,
          "plots/loss.png": b"\x89PNG loss curve", "notes.txt": b"first run\n"}


def write_root(root: Path, files: dict[str, bytes]) -> None:
    for key, data in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)


def replace_file(path: Path, data: bytes) -> None:
    """As a tool rewrites a file: a new file renamed over the old one."""
    staged = path.with_name(path.name + ".new")
    staged.write_bytes(data)
    os.replace(staged, path)


def test_a_local_root_is_hard_linked_into_the_set_and_what_the_upgrade_lost_is_put_back(tmp_path):
    root, store = tmp_path / "mlartifacts", LocalBackupStore(tmp_path / "backups", "arts", "production")
    write_root(root, BEFORE)
    (root / "notes.txt").chmod(0o644)
    store.begin(SET)
    keep_artifacts(LocalArtifacts(root), store, SET, TAGS)
    store.write_json(SET, MANIFEST, {"backup_id": SET})  # the set made private as it is completed

    inventory = recorded(store, SET)
    assert sorted(inventory["objects"]) == sorted(BEFORE)
    assert inventory["kept"]["hard_links"] == len(BEFORE)  # no second copy of the bytes
    copy = store.path(SET) / "artifacts" / "model" / "model.pkl"
    assert copy.stat().st_ino == (root / "model" / "model.pkl").stat().st_ino
    assert (root / "notes.txt").stat().st_mode & 0o777 == 0o644  # the server's files keep their mode

    (root / "model" / "model.pkl").unlink()  # what an upgrade may do: delete,
    replace_file(root / "plots" / "loss.png", b"\x89PNG another curve")  # replace,
    write_root(root, {"new-run/metrics.json": b"{}"})  # and users write new artifacts meanwhile
    artifacts = LocalArtifacts(root)
    compared = compare_artifacts(artifacts, store, SET)
    assert (compared["deleted"], compared["changed"], compared["added"]) == (["model/model.pkl"],
                                                                              ["plots/loss.png"], 1)
    assert lost_artifacts(compared) == "1 deleted (model/model.pkl); 1 changed (plots/loss.png)"

    restored = restore_artifacts(artifacts, store, SET)
    assert restored["restored"] == ["model/model.pkl", "plots/loss.png"]
    assert {key: (root / key).read_bytes() for key in BEFORE} == BEFORE
    assert (root / "new-run" / "metrics.json").read_bytes() == b"{}"  # written since: kept
    assert restore_artifacts(artifacts, store, SET)["restored"] == []  # a retry puts back nothing


def test_a_file_rewritten_in_place_through_its_hard_link_is_named_and_not_restored_wrongly(tmp_path):
    """A hard link keeps what is deleted or replaced; a file rewritten in place changes in the set's
    copy too. The restore says so, naming it, after putting back everything else."""
    root, store = tmp_path / "mlartifacts", LocalBackupStore(tmp_path / "backups", "arts", "production")
    write_root(root, BEFORE)
    store.begin(SET)
    keep_artifacts(LocalArtifacts(root), store, SET, TAGS)
    with open(root / "notes.txt", "r+b") as in_place:
        in_place.write(b"FIRST")
    (root / "model" / "MLmodel").unlink()

    with pytest.raises(Exception, match=r"notes.txt: its copy in the set changed with it") as failed:
        restore_artifacts(LocalArtifacts(root), store, SET)
    assert "model/MLmodel" not in str(failed.value)
    assert (root / "model" / "MLmodel").read_bytes() == BEFORE["model/MLmodel"]  # the rest was put back


@pytest.fixture
def s3(moto_endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key=PLANTED["s3"])


def bucket_with(s3, name: str, versioned: bool) -> None:
    s3.create_bucket(Bucket=name)
    if versioned:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    for key, data in BEFORE.items():
        s3.put_object(Bucket=name, Key=f"mlflow/{key}", Body=data)
    s3.put_object(Bucket=name, Key="elsewhere/not-ours.txt", Body=b"outside the prefix")


def damage(s3, bucket: str) -> None:
    s3.delete_object(Bucket=bucket, Key="mlflow/model/model.pkl")
    s3.put_object(Bucket=bucket, Key="mlflow/plots/loss.png", Body=b"\x89PNG another curve")
    s3.put_object(Bucket=bucket, Key="mlflow/new-run/metrics.json", Body=b"{}")


def contents(s3, bucket: str) -> dict[str, bytes]:
    return {key: s3.get_object(Bucket=bucket, Key=f"mlflow/{key}")["Body"].read() for key in BEFORE}


@pytest.mark.integration
@pytest.mark.parametrize("versioned", [True, False], ids=["versioned", "unversioned"])
def test_an_s3_artifact_store_is_put_back_from_its_versions_or_the_sets_copy(tmp_path, s3, versioned):
    bucket = f"arts-{'v' if versioned else 'u'}-{int(time.time() * 1000)}"
    bucket_with(s3, bucket, versioned)
    artifacts = S3Artifacts(s3, f"s3://{bucket}/mlflow")
    store = LocalBackupStore(tmp_path / "backups", "arts", "production")
    store.begin(SET)
    keep_artifacts(artifacts, store, SET, TAGS)
    inventory = recorded(store, SET)
    assert sorted(inventory["objects"]) == sorted(BEFORE)  # the prefix only
    copied = sorted(str(path.relative_to(store.path(SET) / "artifacts"))
                    for path in (store.path(SET) / "artifacts").rglob("*") if path.is_file()) \
        if (store.path(SET) / "artifacts").exists() else []
    if versioned:
        assert all(entry["version_id"] for entry in inventory["objects"].values())
        assert copied == [] and inventory["kept"]["copies"] == 0  # the bucket's versions are the copy
    else:
        assert copied == sorted(BEFORE)

    damage(s3, bucket)
    compared = compare_artifacts(artifacts, store, SET)
    assert (compared["deleted"], compared["changed"], compared["added"]) == (["model/model.pkl"],
                                                                              ["plots/loss.png"], 1)
    restored = restore_artifacts(artifacts, store, SET)
    assert restored["restored"] == ["model/model.pkl", "plots/loss.png"]
    assert contents(s3, bucket) == BEFORE
    assert s3.get_object(Bucket=bucket, Key="mlflow/new-run/metrics.json")["Body"].read() == b"{}"
    if versioned:  # put back as a new version: the damaged one stays in the history
        history = s3.list_object_versions(Bucket=bucket, Prefix="mlflow/plots/loss.png")["Versions"]
        assert len(history) == 3


@pytest.mark.integration
def test_a_local_root_backed_up_to_s3_is_copied_into_the_set_and_put_back_from_it(tmp_path, s3):
    from airlock.stores.s3 import S3BackupStore

    bucket = f"arts-backups-{int(time.time() * 1000)}"
    s3.create_bucket(Bucket=bucket)
    root, store = tmp_path / "mlartifacts", S3BackupStore(s3, f"s3://{bucket}/airlock", "arts", "production")
    write_root(root, BEFORE)
    keep_artifacts(LocalArtifacts(root), store, SET, TAGS)
    assert recorded(store, SET)["kept"] == {"copy": f"s3://{bucket}/airlock/arts/production/{SET}/artifacts",
                                            "hard_links": 0, "copies": len(BEFORE)}
    (root / "model" / "model.pkl").unlink()
    replace_file(root / "plots" / "loss.png", b"\x89PNG another curve")
    assert restore_artifacts(LocalArtifacts(root), store, SET)["restored"] == ["model/model.pkl", "plots/loss.png"]
    assert {key: (root / key).read_bytes() for key in BEFORE} == BEFORE


@pytest.fixture
def production(tmp_path, mlflow_venvs, monkeypatch):
    """A real MLflow on MariaDB whose artifact store is a local root, both under the test's folder."""
    root = tmp_path / "mlartifacts"
    scenario = make_scenario("arts", tmp_path, 5164, 5165,
                             environment_settings={"production": {"artifacts": {"location": str(root)}}})
    with seeded_production(scenario, monkeypatch) as env:
        write_root(root, BEFORE)
        yield env, root


@pytest.mark.integration
def test_an_upgrade_that_loses_artifacts_fails_its_check_and_the_rollback_puts_them_back(production):
    env, root = production
    run, plan = "manual__arts", {"from": OLD, "to": NEW, "production": {"change": "major", "current": OLD,
                                                                         "target": NEW}}
    prepared = steps.backup(env, steps.PREPARE, run, OLD)
    assert recorded(env.store, prepared["backup_id"])["kept"]["hard_links"] == len(BEFORE)
    run_waits(steps.freeze(env, run, plan))
    final = steps.final_backup(env, run)
    manifest = steps.read_manifest(env.store, final["backup_id"])
    assert INVENTORY in manifest.files  # signed with the set
    steps.migrate(env, run)
    run_waits(steps.start(env, run))
    assert steps.verify_artifact_store(env, run)["deleted"] == []  # the new version alone lost nothing

    (root / "model" / "model.pkl").unlink()
    with open(root / "notes.txt", "r+b") as in_place:  # through the hard link: the set's copy changes too
        in_place.write(b"FIRST")
    write_root(root, {"new-run/metrics.json": b"{}"})
    with pytest.raises(steps.UpgradeError, match=r"production: the upgrade deleted or changed artifacts of "
                                                 rf"{root}: 1 deleted \(model/model.pkl\); 1 changed \(notes.txt\)\. "
                                                 rf"A rollback puts them back from backup {final['backup_id']}"):
        steps.verify_artifact_store(env, run)

    # an artifact that cannot be put back fails the rollback after the old release serves again
    with pytest.raises(steps.UpgradeError, match=rf"production: {OLD} serves again on the restored database, but "
                                                 r"the artifact store is not restored: .*notes.txt: its copy in the "
                                                 r"set changed with it.*clear this task: only the artifacts"):
        run_waits(steps.rollback(env, run))
    assert env.adapter.server_version() == OLD
    assert (root / "model" / "model.pkl").read_bytes() == BEFORE["model/model.pkl"]  # the rest was put back

    replace_file(root / "notes.txt", BEFORE["notes.txt"])  # on-call puts it back by hand, then clears the task
    os.killpg(env.driver.running_pid(), signal.SIGKILL)  # meanwhile the old server died (OOM-killed, say)
    deadline = time.monotonic() + 10
    while port_open("127.0.0.1", env.config.port) and time.monotonic() < deadline:
        time.sleep(0.1)
    rolled_back = run_waits(steps.rollback(env, run))
    assert rolled_back["version"] == OLD and rolled_back["fingerprint_equal"] is True
    assert env.adapter.server_version() == OLD  # the retry started it again
    assert rolled_back["artifacts"]["restored"] == []
    assert {key: (root / key).read_bytes() for key in BEFORE} == BEFORE
    assert (root / "new-run" / "metrics.json").exists()
    assert steps.marker_of_run(env, run) is None

    # on-call, later, about to roll back to that set: the gate says which artifacts would be put back
    (root / "plots" / "loss.png").unlink()
    plan = oncall.rollback_plan(env, final["backup_id"], [])
    assert (plan["artifacts"]["deleted"], plan["artifacts"]["changed"], plan["artifacts"]["added"]) == (
        ["plots/loss.png"], [], 1)
    body = render_confirm_body(plan)
    assert f"**The artifact store** ({root}): 1 deleted and 0 changed artifacts are put back from the set: " \
           "`plots/loss.png`; the 1 added since stay" in body


def render_confirm_body(plan: dict) -> str:
    """The rollback DAG's confirmation body as Airflow renders it (Jinja, the plan from XCom)."""
    import jinja2
    from airlock.rollback_dag import CONFIRM_BODY

    return jinja2.Environment().from_string("{% set plan = p %}" + CONFIRM_BODY).render(p=plan)
