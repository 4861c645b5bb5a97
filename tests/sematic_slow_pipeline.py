"""Run inside a Sematic virtualenv: a pipeline that keeps running until a file appears.

Usage: SEMATIC_API_ADDRESS=URL python sematic_slow_pipeline.py RELEASE_FILE. A long training run
as the drain sees it: its root run stays in progress on the server while this process works.
"""

import sys
import time
from pathlib import Path

import sematic


@sematic.func
def train_until_released(release_file: str) -> str:
    while not Path(release_file).exists():
        time.sleep(0.2)
    return "trained"


@sematic.func
def nightly_retrain(release_file: str) -> str:
    return train_until_released(release_file)


if __name__ == "__main__":
    print(sematic.LocalRunner().run(nightly_retrain(sys.argv[1]).set(name="nightly retrain")))
