"""How long the DAG file takes to parse as the number of targets grows, against `import airflow.sdk`
alone (the floor every DAG file pays), each in a fresh interpreter, best of a few rounds.

    .venv/bin/python bench/dag_parse.py [--targets 10 100 1000] [--rounds 3]

Per size: the import alone, the DAG file (import included), the file's own cost beyond the import,
its cost per target, and how the cost beyond the import grows from size to size (linear: ×10 for
10× the targets). Also the parse a worker does to run one task (Airflow's parsing context names
its DAG). The last line: the DAG file's cost beyond the import at 100 targets, against the bar
(0.2 s), as a ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from airlock.demo.fleet import demo_fleet, write_targets_file

REPO = Path(__file__).resolve().parent.parent
BAR_SECONDS = 0.2
SHARD_FROM, SHARD_TARGETS = 500, 250
"""From this many targets, also the parse of one shard file holding about SHARD_TARGETS of them."""
TIMED = """
import time, runpy, sys
started = time.perf_counter()
import airflow.sdk  # noqa: F401
imported = time.perf_counter()
if sys.argv[1] != "-":
    runpy.run_path(sys.argv[1])
print(imported - started, time.perf_counter() - started)
"""


def targets_file(folder: Path, count: int) -> Path:
    """`count` copies of the embedded default target, each on its own ports and folders."""
    targets = demo_fleet([f"t{number}" for number in range(count)], Path("/srv/bench"), 20000)
    return write_targets_file(folder / f"targets-{count}.yaml", targets)


def timed(dag_file: str, targets: Path | None, dag_id: str | None = None) -> tuple[float, float]:
    """(import airflow.sdk, import + the DAG file) in a fresh interpreter, in seconds."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "include"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    if targets:
        env["AIRLOCK_TARGETS_FILE"] = str(targets)
    if dag_id:
        env["_AIRFLOW_PARSING_CONTEXT_DAG_ID"] = dag_id
    out = subprocess.run([sys.executable, "-c", TIMED, dag_file], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[-2]), float(out[-1])


def best(rounds: int, dag_file: str, targets: Path | None, dag_id: str | None = None) -> tuple[float, float]:
    runs = [timed(dag_file, targets, dag_id) for _ in range(rounds)]
    return min(run[0] for run in runs), min(run[1] for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    dag_file = str(REPO / "dags" / "airlock_upgrade.py")
    beyond_at: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="airlock-parse-") as scratch:
        floor, _ = best(args.rounds, "-", None)
        print(f"import airflow.sdk alone: {floor:.3f} s")
        previous = None
        for count in args.targets:
            path = targets_file(Path(scratch), count)
            _, total = best(args.rounds, dag_file, path)
            beyond = max(total - floor, 0.0)
            beyond_at[count] = beyond
            growth = (f", ×{beyond / beyond_at[previous]:.1f} for ×{count / previous:g} the targets"
                      if previous and beyond_at[previous] > 0 else "")
            print(f"{count:5d} targets: DAG file {total:.3f} s, {beyond:.3f} s beyond the import, "
                  f"{1000 * beyond / count:.1f} ms per target{growth}")
            _, one = best(args.rounds, dag_file, path, dag_id="airlock_upgrade__t0")
            print(f"{'':5s}          a worker's parse for one task (one DAG of {count}): {one:.3f} s, "
                  f"{max(one - floor, 0):.3f} s beyond the import")
            if count >= SHARD_FROM:
                shards = -(-count // SHARD_TARGETS)
                shard_file = Path(scratch) / f"airlock_upgrade_1of{shards}.py"
                shard_file.write_text(Path(dag_file).read_text())
                _, part = best(args.rounds, str(shard_file), path)
                print(f"{'':5s}          in {shards} shard files (airlock_upgrade_<i>of{shards}.py): one file "
                      f"{part:.3f} s, import included (Airflow's import timeout: 30 s)")
            previous = count
    at_100 = beyond_at.get(100)
    if at_100 is None:
        print("(no 100-target size measured: the bar is for 100 targets)")
        return
    print(f"parse beyond import at 100 targets {at_100:.3f} s vs bar {BAR_SECONDS} s: "
          f"ratio {at_100 / BAR_SECONDS:.1f}x")


if __name__ == "__main__":
    main()
