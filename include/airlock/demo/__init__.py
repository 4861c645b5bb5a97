"""Demo material: scripts that run inside a platform's own virtualenv."""

from pathlib import Path

SEED_MLFLOW = Path(__file__).with_name("seed_mlflow.py")
SEED_ZENML = Path(__file__).with_name("seed_zenml.py")
SEED_SEMATIC = Path(__file__).with_name("seed_sematic.py")
