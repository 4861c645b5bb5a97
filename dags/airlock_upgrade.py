"""Airflow DAGs: one upgrade DAG per target of the targets file.

The targets file is include/targets.yaml, or the file named by $AIRLOCK_TARGETS_FILE. A broken
file raises here, so it shows as this file's import error with the file, target and field.
"""

from airlock.dag_factory import build_upgrade_dags

globals().update(build_upgrade_dags())
