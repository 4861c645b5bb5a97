"""Load the most recent registered model versions with this MLflow client (MLFLOW_TRACKING_URI)."""

import json
import os

import mlflow
from mlflow import MlflowClient

count = int(os.environ["AIRLOCK_ARTIFACT_COUNT"])
versions = MlflowClient().search_model_versions(max_results=count, order_by=["creation_timestamp DESC"])
for version in versions[:count]:
    item = {"id": f"{version.name}/{version.version}", "name": f"model {version.name} version {version.version}"}
    try:
        model = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
        print(json.dumps({**item, "ok": True, "loaded": type(model).__name__}), flush=True)
    except Exception as error:  # every failure is reported, one line per model version
        print(json.dumps({**item, "ok": False, "error": f"{type(error).__name__}: {error}"[:600]}), flush=True)
