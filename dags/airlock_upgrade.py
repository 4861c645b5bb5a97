"""Airflow DAGs: per target of the targets file, its upgrade DAG and its on-call rollback DAG; per
fleet, its DAG of waves.

The targets file is include/targets.yaml, or the file named by $AIRLOCK_TARGETS_FILE. A broken
file raises here, so it shows as this file's import error with the file, target and field. Copies of
this file named airlock_upgrade_<i>of<n>.py each build one shard of a big fleet (airlock/dag_shards.py).
"""

from airflow.sdk import get_parsing_context
from airlock.config import load_targets
from airlock.dag_factory import build_upgrade_dags
from airlock.dag_shards import shard_of_file
from airlock.fleet_dag import build_fleet_dags
from airlock.rollback_dag import build_rollback_dags

# A worker that parses this file to run a task builds that task's DAG alone (None: every DAG).
only, shard = get_parsing_context().dag_id, shard_of_file(__file__)
targets = load_targets()  # read and checked once for all three kinds of DAG (most of a worker's parse)
globals().update(build_upgrade_dags(targets, only=only, shard=shard))
globals().update(build_rollback_dags(targets, only=only, shard=shard))
globals().update(build_fleet_dags(targets, only=only, shard=shard))
