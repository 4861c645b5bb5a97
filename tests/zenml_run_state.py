"""Run inside a ZenML virtualenv: start a pipeline run that stays "running", or remove it.

Usage: python zenml_run_state.py start | remove RUN_ID (ZENML_STORE_URL points at the server).
What an orchestrator does for a long training run, without running one. (ZenML derives a run's
status from its steps and ignores a status set by hand, so the run is removed instead of finished.)
"""

import sys
from uuid import UUID, uuid4

from zenml.client import Client
from zenml.enums import ExecutionStatus
from zenml.models import PipelineRunRequest


def start() -> None:
    client = Client()
    last = client.list_pipeline_runs(sort_by="desc:created", size=1).items[0]
    snapshot = "snapshot" if "snapshot" in PipelineRunRequest.model_fields else "deployment"
    run, _ = client.zen_store.get_or_create_run(PipelineRunRequest(
        name=f"nightly-retrain-{uuid4().hex[:6]}", status=ExecutionStatus.RUNNING, project=client.active_project.id,
        orchestrator_run_id=uuid4().hex, **{snapshot: getattr(last, snapshot).id}))
    print(run.id)


def remove(run_id: str) -> None:
    Client().delete_pipeline_run(UUID(run_id))


if __name__ == "__main__":
    start() if sys.argv[1] == "start" else remove(sys.argv[2])
