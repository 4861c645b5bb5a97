"""How long the Upgrades page takes with 1,000 recorded upgrades across 50 targets, asked through
Airflow's own API app (the plugin mounted, a logged-in user's token, the auth manager's checks), the
logs read from each target's folder as in production.

    .venv/bin/python bench/upgrades_page.py [--targets 50] [--upgrades 1000] [--rounds 5]

Prints the median of the rounds and, as its last line, the ratio to the bar (1 s).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BAR_SECONDS = 1.0
PHASES = ("preflight", "backup_and_prepare", "compatibility", "staging_upgrade", "uat", "window",
          "production_upgrade", "conclude")
OUTCOMES = ("upgraded",) * 16 + ("rolled_back", "rejected", "failed", "aborted")


def record(target: str, number: int, started: datetime, rng: random.Random) -> dict:
    """One upgrade's log record as the report task writes it, with plausible phase lengths."""
    spans, now = {}, started
    for phase in PHASES:
        seconds = rng.uniform(5, 60) if phase not in ("uat", "window") else rng.uniform(60, 7200)
        end = now + timedelta(seconds=seconds)
        spans[phase] = [now.isoformat(timespec="seconds"), end.isoformat(timespec="seconds")]
        now = end
    outcome = rng.choice(OUTCOMES)
    prod = spans["production_upgrade"]
    down_from = datetime.fromisoformat(prod[0]) + timedelta(seconds=3)
    downtime = rng.uniform(5, 400)
    minor = 10 + number // 10
    return {"date": started.isoformat(timespec="seconds"), "target": target, "run_id": f"manual__{number:05d}",
            "from": f"3.{minor}.0", "to": f"3.{minor + 1}.0", "outcome": outcome, "detail": f"{outcome} run",
            "rolled_back": outcome == "rolled_back", "approver": "alice", "phase_spans": spans,
            "phase_seconds": {p: round((datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds(), 1)
                              for p, (a, b) in spans.items()},
            "production_downtime_seconds": round(downtime, 1),
            "downtime_span": [down_from.isoformat(timespec="seconds"),
                              (down_from + timedelta(seconds=downtime)).isoformat(timespec="seconds")],
            "newest_release": "3.99.0",
            "versions_after": {"staging": f"3.{minor + 1}.0", "production": f"3.{minor + 1}.0"},
            "trigger": "manual", "windows": {}}


def write_world(folder: Path, targets: int, upgrades: int) -> Path:
    """A targets file of `targets` copies of the embedded target, each with its share of the upgrades
    in its log folder."""
    from airlock import upgrade_log
    from airlock.demo.fleet import demo_fleet, write_targets_file

    rng, start = random.Random(7), datetime(2025, 1, 1, tzinfo=UTC)
    config = demo_fleet([f"team_{number:02d}" for number in range(targets)], folder, 21000, log_dirs=True)
    for number, (name, target) in enumerate(config.items()):
        share = range(number, upgrades, targets)
        records = [record(name, n, start + timedelta(days=n // targets * 7, hours=number), rng) for n in share]
        log = Path(target["log_dir"])
        log.mkdir(parents=True)
        (log / upgrade_log.JSONL).write_text("".join(json.dumps(r) + "\n" for r in records))
    return write_targets_file(folder / "targets.yaml", config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--upgrades", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="airlock-page-bench-"))
    os.environ.update({"AIRFLOW_HOME": str(scratch / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                       "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
                       "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                       "AIRLOCK_TARGETS_FILE": str(write_world(scratch, args.targets, args.upgrades))})
    sys.path.insert(0, str(REPO / "include"))
    from airflow.api_fastapi.app import create_app
    from airflow.utils import db
    from fastapi.testclient import TestClient

    db.resetdb()
    client = TestClient(create_app("core"))
    token = client.get("/auth/token").json()["access_token"]
    timings = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        response = client.get("/airlock/upgrades", headers={"Authorization": f"Bearer {token}"})
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text[:500]
        assert response.text.count('class="timeline"') == args.upgrades, "not every upgrade was drawn"
    median = statistics.median(timings)
    print(f"{args.upgrades} upgrades across {args.targets} targets: page {median:.3f} s (median of {args.rounds}; "
          f"best {min(timings):.3f} s, {len(response.content) / 1e6:.1f} MB of HTML)")
    print(f"page vs bar {BAR_SECONDS} s: ratio {median / BAR_SECONDS:.2f}x")


if __name__ == "__main__":
    main()
