"""Airflow's hostname callable for the distributed tests: each worker has its own name (AIRLOCK_TEST_HOSTNAME),
as two machines would, so a task instance's `hostname` says which worker ran it."""

import os
import socket


def hostname() -> str:
    return os.environ.get("AIRLOCK_TEST_HOSTNAME") or socket.getfqdn()
