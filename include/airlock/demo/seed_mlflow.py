"""Seed an MLflow server with experiments, runs, metric histories and a registered model whose
versions hold real pyfunc models (so that the new client's artifact check has something to load).

Runs inside the platform's own virtualenv (it imports mlflow), so the data is written by a real
client of the version being upgraded: `<venv>/bin/python seed_mlflow.py URL`. Idempotent.
"""

import sys

import mlflow
from mlflow import MlflowClient


class ChurnScorer(mlflow.pyfunc.PythonModel):
    """A tiny pyfunc model: enough for a client of another version to load and call."""

    def predict(self, context, model_input, params=None):
        return [0.5 for _ in range(len(model_input))]


def seed(url: str) -> None:
    client = MlflowClient(tracking_uri=url)
    if client.get_experiment_by_name("churn-model"):
        return
    run_ids = []
    for team in ("churn-model", "fraud-detection"):
        experiment_id = client.create_experiment(team, tags={"owner": f"team-{team.split('-')[0]}"})
        for attempt in range(3):
            run = client.create_run(experiment_id, run_name=f"{team}-train-{attempt}", tags={"git_sha": "1a2b3c"})
            run_id = run.info.run_id
            client.log_param(run_id, "learning_rate", str(0.01 * (attempt + 1)))
            client.log_param(run_id, "epochs", "5")
            for step in range(5):
                client.log_metric(run_id, "loss", 1.0 / (step + 1 + attempt), step=step,
                                  timestamp=1_700_000_000_000 + step)
            client.log_metric(run_id, "auc", 0.8 + attempt / 100, step=5, timestamp=1_700_000_000_100)
            client.set_terminated(run_id)
            run_ids.append(run_id)
    client.create_registered_model("churn-classifier", tags={"domain": "retention"}, description="Churn model")
    mlflow.set_tracking_uri(url)
    for run_id in run_ids[:2]:
        with mlflow.start_run(run_id=run_id):
            mlflow.pyfunc.log_model("model", python_model=ChurnScorer(), pip_requirements=[])
        client.create_model_version("churn-classifier", f"runs:/{run_id}/model", run_id=run_id,
                                    tags={"validated": "yes"})
    client.set_registered_model_alias("churn-classifier", "champion", "2")


if __name__ == "__main__":
    seed(sys.argv[1])
