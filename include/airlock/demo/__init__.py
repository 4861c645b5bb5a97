"""Demo material: scripts that run inside a platform's own virtualenv."""

from pathlib import Path

SEED_MLFLOW = Path(__file__).with_name("seed_mlflow.py")
