"""A fleet made of copies of the demo target, each on its own ports and folders (the targets file
refuses two environments on one server): what the benches and tests that need many targets use."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

EMBEDDED = Path(__file__).resolve().parents[2] / "targets.yaml"


def demo_fleet(names: list[str], folder: Path, first_port: int, log_dirs: bool = False) -> dict[str, dict]:
    """Targets named `names`, their servers on ports from `first_port` and their state under `folder`
    (and, with `log_dirs`, each its own upgrade-log folder)."""
    base = yaml.safe_load(EMBEDDED.read_text())["targets"]["mlflow_demo"]
    targets = {}
    for number, name in enumerate(names):
        target = copy.deepcopy(base)
        target["backup"]["location"] = str(folder / "backups")
        if log_dirs:
            target["log_dir"] = str(folder / name / "log")
        for offset, env in enumerate(("staging", "production")):
            settings = target["environments"][env]
            settings["url"] = f"http://127.0.0.1:{first_port + 2 * number + offset}"
            settings["driver"]["state_dir"] = str(folder / name / env)
            settings["database"]["path"] = str(folder / name / env / "mlflow.db")
        targets[name] = target
    return targets


def write_targets_file(path: Path, targets: dict[str, dict]) -> Path:
    path.write_text(yaml.safe_dump({"targets": targets}))
    return path
