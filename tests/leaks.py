"""The secret scan: unique planted secrets for every credential the suite hands Airlock, and a watch
that fails any test after which one of them shows up where it must not.

Planted (each with characters URL quoting changes): the database password of every MySQL and
PostgreSQL connection, the S3 secret key, the Kubernetes token Airlock deploys with, the password of
the Airflow API connection, the backup signing key, the platform servers' login (MLflow password and
token, Sematic API key), and secrets only the worker holds (its cloud keys, an unused Airflow
connection). Looked for, as written and URL-quoted:
- files the tests' servers and Airflow write: task logs, the Airflow metadata database (XCom,
  rendered templates, trigger events), reports, configuration backups, upgrade logs, server logs;
- the argv of every process Airlock starts (platform servers, migrations, artifact checks, database
  tools, pip, helm), and its environment: no worker secret and no AIRFLOW_/AWS_ variable at all; the
  database password only in the one variable a server or migration reads its database URL from, the
  platform login only in the one a client (the artifact check) reads it from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote, quote_plus

MARK = "Pl4nt"
PLANTED = {
    "database": f"db-{MARK}@d/:%#-pw",
    "s3": f"s3-{MARK}@d/:%#-key",
    "kubernetes": f"kube-{MARK}@d/:%#-token",
    "airflow_api": f"api-{MARK}@d/:%#-pw",
    "signing_key": f"sign-{MARK}@d/:%#-key-0123456789",
    "platform": f"plat-{MARK}@d/:%#-login",
    "worker_cloud_key": f"aws-{MARK}@d/:%#-worker",
    "worker_connection": f"conn-{MARK}@d/:%#-worker",
}
WORKER_ENV = {
    "AWS_SECRET_ACCESS_KEY": PLANTED["worker_cloud_key"],
    "AWS_ACCESS_KEY_ID": "AKIAPLANTEDWORKER",
    "AIRFLOW_CONN_AIRLOCK_PLANTED_UNUSED": f"mysql://u:{quote(PLANTED['worker_connection'], safe='')}@db:3306/x",
    "AIRFLOW_VAR_AIRLOCK_BACKUP_SIGNING_KEY": PLANTED["signing_key"],
}
"""What a worker's environment holds and no process Airlock starts may inherit."""
DATABASE_URL_VARIABLES = {"MLFLOW_BACKEND_STORE_URI", "ZENML_STORE_URL", "DATABASE_URL", "AIRLOCK_DB_URI"}
"""Where a server or a migration legitimately reads its database URL (with the password) from."""
CLIENT_LOGIN_VARIABLES = {"MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "ZENML_STORE_API_KEY",
                          "ZENML_STORE_PASSWORD", "SEMATIC_API_KEY"}
"""Where a platform's client (the artifact check) reads the login Airlock gives it."""
AIRLOCK_TOOLS = {"mydumper", "myloader", "mysqldump", "mysql", "mariadb", "pg_dump", "pg_restore", "psql",
                 "zstd", "helm"}
TEST_OWNED = ("/tests/", "/demo/seed_", "sematic_slow_pipeline", "zenml_run_state")
"""Command lines of processes the tests start themselves (seeding, a team's pipeline)."""
CREDENTIAL_FILES = ("kubeconfig", "tokens.csv", "simple_auth_manager_passwords", ".cnf")
"""Files where the tests keep credentials on purpose (they are the clusters' and servers' own)."""
PLANTED_ON_PURPOSE = b"AIRLOCK_SECRET_SCAN_PLANTED=1"
"""In the environment of the processes tests/test_secret_scan.py starts with leaks, to see them caught:
the suite-wide watch (of every pytest worker on the machine) leaves them to that test."""
SERVERS_OWN = {"server.sqlite3": ("platform",)}
"""Secrets a platform server keeps in its own database by design (Sematic: its users' API keys, in
clear); every other planted secret is still looked for there."""


def variants(secret: str) -> set[str]:
    return {secret, quote(secret), quote(secret, safe=""), quote_plus(secret)}


SPELLINGS = {name: variants(secret) for name, secret in PLANTED.items()}


def hits_in(text: str, names: tuple[str, ...] | None = None) -> list[str]:
    """Which planted secrets (by name) appear in `text`, in any spelling."""
    if MARK not in text:
        return []
    return [name for name, forms in SPELLINGS.items() if (names is None or name in names)
            and any(form in text for form in forms)]


def venv_root() -> str:
    return str(Path(os.environ.get("AIRLOCK_VENV_ROOT") or Path.home() / ".cache" / "airlock" / "venvs"))


def started_by_airlock(argv: list[str]) -> bool:
    if not argv:
        return False
    line = " ".join(argv)
    program = argv[0]
    if os.path.basename(program).startswith("python") and len(argv) > 1 and argv[1] == "-m":
        program = argv[2] if len(argv) > 2 else program
    by_airlock = os.path.basename(program) in AIRLOCK_TOOLS or program.startswith(venv_root())
    return by_airlock and not any(owned in line for owned in TEST_OWNED)


def read_proc(pid: str, name: str) -> bytes | None:
    """/proc/<pid>/<name>, or None once the process is gone."""
    try:
        fd = os.open(f"/proc/{pid}/{name}", os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = [os.read(fd, 65536)]
        while chunks[-1]:
            chunks.append(os.read(fd, 65536))
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def process_problems(pid: str, *, planted_too: bool = True) -> list[str]:
    """What is wrong with one running process's argv and environment, if Airlock started it
    (`planted_too=False`: nothing, for a process planted on purpose)."""
    cmdline = read_proc(pid, "cmdline") or b""
    argv = [part.decode(errors="replace") for part in cmdline.split(b"\0") if part]
    if not started_by_airlock(argv) or (environ_bytes := read_proc(pid, "environ")) is None:
        return []
    if read_proc(pid, "cmdline") != cmdline:
        return []  # it exec'd another program between the two reads: the next rounds look at that one
    environ = environ_bytes.split(b"\0")
    if not planted_too and PLANTED_ON_PURPOSE in environ:
        return []
    what = os.path.basename(argv[0]) + (f" {argv[1]}" if len(argv) > 1 else "")
    problems = [f"argv of {what!r} holds the {name} secret" for name in hits_in("\0".join(argv))]
    planted = MARK.encode()  # every planted secret, in every spelling, carries it
    for entry in environ:
        name, _, value = entry.decode(errors="replace").partition("=")
        if name.startswith(("AIRFLOW_", "AIRFLOW__", "AWS_")):
            problems.append(f"{what!r} inherited {name}")
        if planted not in entry:
            continue
        allowed = ("database",) if name in DATABASE_URL_VARIABLES else ("platform",) \
            if name in CLIENT_LOGIN_VARIABLES else ()
        problems += [f"{what!r} has the {secret} secret in {name}" for secret in hits_in(value)
                     if secret not in allowed]
    return problems


class ProcessWatch:
    """Samples every process on the machine a few times a second (servers live for minutes, dumps and
    migrations for seconds) and remembers what it found wrong.

    Cheap, since every pytest session runs one beside the tests: a round lists /proc and looks only
    at processes that are new (a pid cannot be reused between two rounds: that takes 32,768 forks),
    or still young (a fork execs its program within moments of starting); every `recheck_rounds`
    rounds it looks at all, in case an older one exec'd another program. Processes planted on
    purpose are left to the test that planted them (`planted_too`: looked at too)."""

    def __init__(self, interval: float = 0.25, young_seconds: float = 5.0, recheck_rounds: int = 20,
                 planted_too: bool = False):
        self.interval, self.found, self.stopping = interval, [], threading.Event()
        self.young_seconds, self.recheck_rounds, self.planted_too = young_seconds, recheck_rounds, planted_too
        self.thread = threading.Thread(target=self.run, daemon=True, name="leak-watch")

    def run(self) -> None:
        seen: set[str] = set()
        first_seen: dict[str, float] = {}  # pid → when a round first found it
        rounds = 0
        while not self.stopping.wait(self.interval):
            rounds, now = rounds + 1, time.monotonic()
            first_seen = {pid: first_seen.get(pid, now) for pid in os.listdir("/proc") if pid.isdigit()}
            for pid, since in first_seen.items():
                if now - since > self.young_seconds and rounds % self.recheck_rounds:
                    continue
                for problem in process_problems(pid, planted_too=self.planted_too):
                    if problem not in seen:
                        seen.add(problem)
                        self.found.append(problem)

    def take(self) -> list[str]:
        found, self.found = self.found, []
        return found


def files_problems(roots: list[Path], since: float) -> list[str]:
    """Planted secrets in files written since `since` under `roots` (compressed dumps excluded:
    they hold the teams' data, not credentials)."""
    problems = []
    for root in roots:
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            try:
                if (not path.is_file() or path.is_symlink() or path.stat().st_mtime < since
                        or path.stat().st_size > 200 * 1024 * 1024 or path.suffix in (".zst", ".gz")
                        or any(mark in path.name for mark in CREDENTIAL_FILES)):
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            if MARK.encode() not in data:  # every planted secret, in every spelling, carries it
                continue
            text = data.decode("latin-1")
            problems += [f"{path} holds the {name} secret" for name in hits_in(text)
                         if name not in SERVERS_OWN.get(path.name, ())]
    return problems


def files_problems_elsewhere(roots: list[Path], since: float) -> list[str]:
    """`files_problems` in a process of its own: closing a descriptor of a SQLite file (Airflow's
    metadata database, an MLflow store) drops every POSIX lock this process holds on it, which
    breaks the test's own connections ("disk I/O error")."""
    result = subprocess.run([sys.executable, __file__, str(since), *map(str, roots)], capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout)


if __name__ == "__main__":
    print(json.dumps(files_problems([Path(root) for root in sys.argv[2:]], float(sys.argv[1]))))
