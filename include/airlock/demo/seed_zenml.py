"""Seed a ZenML server the way a team would: a stack of its own, real pipeline runs on it (with
artifacts and a model), and a schedule. Written by the server version's own client.

Usage: python seed_zenml.py ARTIFACT_DIR [RUNS], with ZENML_STORE_URL pointing at the server and
ZENML_CONFIG_PATH at a scratch dir (the client's own config). Runs execute locally (local
orchestrator) and store their artifacts under ARTIFACT_DIR; their records land on the server.
"""

import sys

from zenml import Model, pipeline, step
from zenml.client import Client
from zenml.enums import StackComponentType
from zenml.models import ScheduleRequest

STACK = "team_stack"


@step
def load_numbers(count: int) -> list[int]:
    return list(range(count))


@step
def train(numbers: list[int]) -> dict:
    return {"weights": [n * 0.5 for n in numbers], "bias": 1.25}


@step
def evaluate(model: dict) -> float:
    return sum(model["weights"]) + model["bias"]


@pipeline(model=Model(name="airlock_seed_model"))
def training(count: int = 5):
    evaluate(train(load_numbers(count)))


def team_stack(client: Client, artifact_dir: str) -> None:
    """An artifact store with an explicit path (so any client finds the artifacts) in a stack."""
    store = client.create_stack_component(name="team_store", flavor="local",
                                          component_type=StackComponentType.ARTIFACT_STORE,
                                          configuration={"path": artifact_dir})
    orchestrator = client.get_stack_component(StackComponentType.ORCHESTRATOR, "default")
    client.create_stack(name=STACK, components={StackComponentType.ARTIFACT_STORE: store.id,
                                                StackComponentType.ORCHESTRATOR: orchestrator.id})


def main(artifact_dir: str, runs: int) -> None:
    client = Client()
    if any(stack.name == STACK for stack in client.list_stacks()):
        return
    team_stack(client, artifact_dir)
    client.activate_stack(STACK)
    for count in range(3, 3 + runs):
        training.with_options(enable_cache=False)(count=count)
    pipeline_model = client.list_pipelines(name="training")[0]
    client.zen_store.create_schedule(ScheduleRequest(
        name="nightly-training", active=True, cron_expression="0 3 * * *", project=client.active_project.id,
        orchestrator_id=client.active_stack_model.components[StackComponentType.ORCHESTRATOR][0].id,
        pipeline_id=pipeline_model.id))
    print(f"seeded {runs} run(s), stack {STACK} and a schedule")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2)
