"""Seed a Sematic server with real pipeline runs, written by the server version's own client.

Usage: SEMATIC_API_ADDRESS=URL python seed_sematic.py [RUNS]. The runs execute in this process
(the local runner) and their runs, edges and artifacts land on the server.
"""

import sys

import sematic


@sematic.func
def add(a: float, b: float) -> float:
    return a + b


@sematic.func
def scale(value: float, factor: float) -> float:
    return value * factor


@sematic.func
def pipeline(a: float, b: float) -> float:
    return scale(add(a, b), 2.5)


def main(runs: int) -> None:
    for index in range(runs):
        future = pipeline(float(index), 1.5).set(name=f"airlock seed {index}", tags=["airlock-seed"])
        print(sematic.LocalRunner().run(future))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
