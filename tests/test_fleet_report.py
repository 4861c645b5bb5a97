"""What a fleet's report says of each target: the outcome its upgrade log recorded for the fleet's
run, and plain words when there is none or the log cannot be read."""

from __future__ import annotations

import json

import yaml
from airlock import upgrade_log
from airlock.config import load_targets
from airlock.fleet_dag import outcome_of

RUN = "fleet_all__manual__1"


def environments(root, port: int) -> dict:
    return {name: {"url": f"http://127.0.0.1:{port + offset}", "driver": {"kind": "process", "state_dir": str(
        root / name)}, "database": {"kind": "sqlite", "path": str(root / f"{name}.db")}}
            for offset, name in enumerate(("staging", "production"))}


def targets(tmp_path):
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump({"targets": {
        name: {"platform": "mlflow", "approvers": ["a"], "backup": {"location": str(tmp_path / name / "b")},
               "environments": environments(tmp_path / name, 5001 + 2 * number)}
        for number, name in enumerate(("done", "broken_log", "silent", "later"))}}))
    return load_targets(str(path))


def test_each_target_is_told_by_its_log_or_in_plain_words(tmp_path):
    found = targets(tmp_path)
    (tmp_path / "done" / "b").mkdir(parents=True)
    (tmp_path / "done" / "b" / upgrade_log.JSONL).write_text(json.dumps(
        {"run_id": RUN, "target": "done", "outcome": "upgraded"}) + "\n")
    (tmp_path / "broken_log" / "b").mkdir(parents=True)
    (tmp_path / "broken_log" / "b" / upgrade_log.JSONL).write_text('{"run_id": "cut short')  # unreadable

    assert outcome_of(found["done"], RUN, started=True) == "upgraded"
    assert outcome_of(found["broken_log"], RUN, started=True).startswith(
        "unknown (its upgrade log could not be read: ")
    assert outcome_of(found["silent"], RUN, started=True) == \
        f"started, no record in its upgrade log (see its run {RUN})"
    assert outcome_of(found["later"], RUN, started=False) == "not started"
