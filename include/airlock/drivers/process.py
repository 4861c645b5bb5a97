"""Runs a platform server as a local process from a virtualenv of its own, one per version.

How many teams run MLflow on a VM: a virtualenv per version (cached, so a rollback does not
reinstall), a pid file, a log file and a port. State lives in the environment's `state_dir`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from airlock.airflow_connections import airflow_secret
from airlock.child_env import child_env
from airlock.config import EnvironmentConfig
from airlock.databases.base import Database
from airlock.platforms.base import Command, PlatformAdapter
from airlock.redaction import redact_text
from airlock.registry import platform_key
from airlock.waits import Wait, WaitFailed, Waiting, run_waits

VENV_ROOT_ENV = "AIRLOCK_VENV_ROOT"
READY_MARKER = ".airlock-ready"
KILL_WAIT_SECONDS = 30
STUCK = "(stuck in the kernel, e.g. on a hung disk); check the host before retrying this task"
"""Why a killed process outlives its kill: what on-call checks before a retry."""


class DriverError(RuntimeError):
    """The server could not be installed, started or stopped; the message says what to look at."""


LOG_TAIL_LINES = 30
"""How much of a server's log a failed start shows."""


def serving_wait(env: EnvironmentConfig, adapter: PlatformAdapter, version: str, url: str | None = None,
                 process: dict | None = None, check_version: bool = False, hint: str = "") -> Wait:
    """Until the server at `url` (the environment's by default) answers its health check (and, with
    `check_version`, serves `version`), for at most the driver's `start_timeout_seconds`; for a local
    `process` ({pid, identity, host, log, mask_conn_ids}), until it exits, if the check runs on its
    host. A local process that never answers is stopped, and its log's last lines end the error."""
    url = url or adapter.url
    return Wait(what=f"{env.name}: {adapter.name} {version} answering at {url}",
                check="airlock.triggers:serving_check",
                kwargs={"platform": platform_key(adapter), "url": url, "auth_conn_id": env.auth_conn_id,
                        "environment": env.name, "version": version if check_version else None, "process": process},
                timeout_seconds=env.driver.start_timeout_seconds, poll_interval=1, hint=hint,
                on_failure="airlock.drivers.process:failed_start_report" if process else "")


def failed_start_report(process: dict, **_: object) -> str:
    """After a local start that never answered: the server (and whatever it spawned, e.g. gunicorn's
    workers) stopped and its log's last lines (secrets masked), where this runs on its host;
    elsewhere, where to look."""
    log = Path(process["log"])
    if process["host"] != socket.gethostname():
        return f"It may still be running on {process['host']} (the rollback stops it); its log is {log} there."
    pid = process["pid"]
    stopped = "had exited"
    if process_alive(pid) and process_identity(pid) == process["identity"]:
        signal_group(pid, signal.SIGTERM)
        stopped = f"was stopped (SIGTERM to its process group {pid})"
    return f"The server {stopped}.\n{masked_log_tail(log, process.get('mask_conn_ids', []))}"


def masked_log_tail(log: Path, mask_conn_ids: list[str]) -> str:
    """A log's last lines with the secrets it could hold masked; withheld (the path given) when one
    of those secrets cannot be read now, since an unmasked secret must never reach a task log."""
    if not log.is_file():
        return f"(no log at {log})"
    try:
        secrets = [airflow_secret(conn_id) for conn_id in mask_conn_ids]
    except Exception as error:
        return (f"(its last lines are not shown: the secrets to mask in them could not be read: "
                f"{type(error).__name__}; read {log} on this host)")
    lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return f"--- last lines of {log} ---\n" + redact_text("\n".join(lines), secrets)


def signal_group(pid: int, signum: int) -> None:
    """Signal a server's process group (it was started as the leader of a new session): a server's
    own children would otherwise outlive it."""
    with suppress(ProcessLookupError):
        os.killpg(pid, signum)


def exited(process: dict | None) -> bool:
    """A process a start spawned ({pid, identity, host}) is known to have exited: only on its host."""
    if not process or process["host"] != socket.gethostname():
        return False
    return not process_alive(process["pid"]) or process_identity(process["pid"]) != process["identity"]


def venv_root() -> Path:
    return Path(os.environ.get(VENV_ROOT_ENV) or Path.home() / ".cache" / "airlock" / "venvs")


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise installs of one virtualenv across tasks and processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def process_alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as gone."""
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


PF_EXITING = 0x4
"""The kernel's flag (/proc/<pid>/stat, field 9) on a process that has begun to exit."""
SIGKILL_BIT = 1 << (signal.SIGKILL - 1)


def process_dying(pid: int) -> bool:
    """A process killed or exiting (SIGKILL pending, or exit begun): alive for a moment more, while
    the kernel frees its memory (about 0.1 s a GB), but never again a server to keep."""
    try:
        flags = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[6])
        pending = [line.split(":")[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith(("SigPnd:", "ShdPnd:"))]
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return False
    return bool(flags & PF_EXITING) or any(int(mask, 16) & SIGKILL_BIT for mask in pending)


def process_identity(pid: int) -> dict | None:
    """What tells a process apart from a later one given the same pid: its start time (clock ticks
    since boot) and boot id. (Not its command line: a server may exec another program in place.)"""
    try:
        start_ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None
    return {"start_ticks": start_ticks, "boot_id": boot_id}


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def platform_venv(adapter: PlatformAdapter, version: str) -> Path:
    return venv_root() / f"{adapter.name}-{version}"


def ensure_platform_venv(adapter: PlatformAdapter, version: str) -> Path:
    """Install a platform version into its own virtualenv once; later calls reuse it."""
    venv = platform_venv(adapter, version)
    requirements = adapter.install_requirements(version)
    with file_lock(venv.with_suffix(".lock")):
        marker = venv / READY_MARKER
        if marker.is_file() and json.loads(marker.read_text()) == requirements:
            return venv
        if venv.exists():
            shutil.rmtree(venv)  # a half-finished install from an earlier try
        run_or_fail([sys.executable, "-m", "venv", str(venv)], f"create virtualenv {venv}")
        run_or_fail([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                     "--disable-pip-version-check", *requirements],
                    f"install {' '.join(requirements)} into {venv}")
        marker.write_text(json.dumps(requirements))
    return venv


INSTALL_TIMEOUT_SECONDS = 1800


def run_or_fail(argv: list[str], what: str) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=INSTALL_TIMEOUT_SECONDS,
                                env=child_env(network=True, prefixes=("PIP_", "UV_")))
    except subprocess.TimeoutExpired:
        raise DriverError(f"could not {what}: still running after {INSTALL_TIMEOUT_SECONDS} s (stopped); "
                          "check the package index, then clear the task") from None
    if result.returncode != 0:
        raise DriverError(f"could not {what} (exit {result.returncode}): {result.stderr.strip()[-1500:]}")


class ProcessDriver:
    """Deploys one environment's server as a local process."""


    def __init__(self, env: EnvironmentConfig, adapter: PlatformAdapter, database: Database):
        self.env, self.adapter, self.database = env, adapter, database
        self.state_dir = Path(env.driver.state_dir)
        self.pid_file = self.state_dir / "server.pid"
        self.log_file = self.state_dir / "server.log"
        self.record_file = self.state_dir / "deployment.json"

    # -- virtualenvs ---------------------------------------------------------------------------
    def venv_path(self, version: str) -> Path:
        return platform_venv(self.adapter, version)

    def ensure_installed(self, version: str) -> Path:
        return ensure_platform_venv(self.adapter, version)

    # -- commands ------------------------------------------------------------------------------
    def server_command(self, version: str) -> Command:
        bin_dir = str(self.venv_path(version) / "bin")
        command = self.adapter.server_command(bin_dir, self.env.host, self.env.port,
                                              self.database.sqlalchemy_uri(), self.env.driver.artifact_root)
        own = self.env.driver.env
        secrets = {name: self.secret_value(name, conn_id) for name, conn_id in self.env.driver.secret_env.items()}
        return Command(command.argv + self.env.driver.args, {**command.env, **own}, {**command.secret_env, **secrets},
                       masked_env=frozenset(own) - self.env.driver.safe_env)

    def secret_value(self, name: str, conn_id: str) -> str:
        """A `driver.secret_env` value: its connection's password; a missing or empty one stops the start
        here, named, instead of a server that fails later for want of its key."""
        from airflow.sdk.exceptions import AirflowNotFoundException

        where = f"{self.env.name}: driver.secret_env.{name} names Airflow connection {conn_id!r}"
        try:
            value = airflow_secret(conn_id=conn_id)
        except AirflowNotFoundException:
            raise DriverError(f"{where}, which does not exist on this worker; create it with the value as its "
                              "password, then clear the task") from None
        if not value:
            raise DriverError(f"{where}, whose password is empty; put the value in it, then clear the task")
        return value

    def migration_command(self, version: str, database: Database | None = None) -> Command:
        database = database or self.database
        return self.adapter.migration_command(str(self.venv_path(version) / "bin"), database.sqlalchemy_uri(),
                                              self.env.driver.artifact_root)

    def configuration(self) -> dict:
        """The deployment as the driver sees it, without secret values (for the backup set)."""
        record = self.deployed() or {}
        return {"driver": "process", "url": self.env.url, "state_dir": str(self.state_dir),
                "database": self.database.describe(), **record}

    def deployed(self) -> dict | None:
        return json.loads(self.record_file.read_text()) if self.record_file.is_file() else None

    # -- lifecycle -----------------------------------------------------------------------------
    def running_pid(self) -> int | None:
        """The server's pid, only if that process is the one Airlock started: a pid file left by a
        crash may name a pid the system has since given to something else."""
        if not self.pid_file.is_file():
            return None
        try:
            recorded = json.loads(self.pid_file.read_text())
            pid = int(recorded["pid"])
        except (ValueError, KeyError, TypeError):
            return None  # not a pid file of this version of Airlock: nothing it can prove it started
        if not process_alive(pid) or process_identity(pid) != recorded.get("identity"):
            return None
        return pid

    def write_pid_file(self, pid: int) -> None:
        self.pid_file.write_text(json.dumps({"pid": pid, "identity": process_identity(pid)}))

    def start(self, version: str) -> dict:
        """Start the server of `version` and wait here until it is healthy (outside the DAG, where
        `launch` hands the wait to the triggerer). Idempotent."""
        try:
            return run_waits(self.launch(version))
        except WaitFailed as failure:
            raise DriverError(str(failure)) from None

    def launch(self, version: str, state: dict | None = None) -> Waiting:
        """Start the server of `version` (idempotent: one already serving it is kept) and wait for it
        to answer: a Wait, so no worker slot is held however slow the start. A server that exits
        while starting fails the wait at once where the check runs on its host. (`state`, what
        `snapshot` recorded, holds nothing a process needs.)"""
        record = self.spawn(version)
        masked = [conn_id for conn_id in (self.env.database.conn_id, *self.env.driver.secret_env.values()) if conn_id]
        yield serving_wait(self.env, self.adapter, version, process={
            "pid": record["pid"], "identity": process_identity(record["pid"]), "host": socket.gethostname(),
            "log": str(self.log_file), "mask_conn_ids": masked})
        return {**record, "healthy_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def spawn(self, version: str) -> dict:
        """The server of `version` running, started now unless it already is."""
        pid = self.running_pid()
        if pid and process_dying(pid):
            self.wait_until_gone(pid)
            pid = None
        record = self.deployed() or {}
        if pid and record.get("version") == version:
            return {**record, "already_running": True}
        if pid:
            raise DriverError(f"{self.env.name}: {self.adapter.name} {record.get('version')} is still running "
                              f"(pid {pid}); stop it before starting {version}")
        if port_open(self.env.host, self.env.port):
            raise DriverError(f"{self.env.name}: something that Airlock did not start answers on "
                              f"{self.env.host}:{self.env.port}; stop it or fix the target's url")
        venv = self.ensure_installed(version)
        command = self.server_command(version)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        Path(self.env.driver.artifact_root).mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"\n--- airlock: starting {self.adapter.name} {version} ---\n".encode())
            log.flush()
            process = subprocess.Popen(
                command.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.state_dir, env=child_env({**command.env, **command.secret_env}),
                start_new_session=True)
        self.write_pid_file(process.pid)
        record = {"version": version, "venv": str(venv), "pid": process.pid,
                  "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "log_file": str(self.log_file), "host": socket.gethostname(), **command.describe()}
        self.record_file.write_text(json.dumps(record, indent=2))
        return record

    def wait_until_gone(self, pid: int) -> None:
        """A server killed moments ago (a crash, the OOM killer, a stop) is still exiting: a start now
        (on-call retrying at once) waits for it and its port to go instead of keeping it as the server
        already running, whose wait would fail with "exited while starting"."""
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if process_alive(pid):
            raise DriverError(f"{self.env.name}: the server (pid {pid}) was killed but is still exiting after "
                              f"{KILL_WAIT_SECONDS} s {STUCK}")
        self.wait_for_port_release(deadline)
        self.pid_file.unlink(missing_ok=True)

    def wait_for_port_release(self, deadline: float) -> None:
        """The server's worker processes, stopped or killed with it, let go of its port last."""
        while port_open(self.env.host, self.env.port) and time.monotonic() < deadline:
            time.sleep(0.2)

    def launch_migration(self, version: str, attempt: int = 1) -> dict:
        """A local migration is short: it runs (and is waited for) inside the task."""
        return self.migrate(version)

    def snapshot(self) -> dict:
        """What a rollback needs besides the version: nothing (the version's virtualenv is kept)."""
        return {}

    def restore(self, version: str, state: dict) -> Waiting:
        """Start the version that ran before the upgrade."""
        return self.launch(version)

    def stop(self, state: dict | None = None) -> dict:
        """Stop the server (SIGTERM, then SIGKILL after the timeout). Idempotent. (`state`, what
        `snapshot` recorded, holds nothing a process needs.)"""
        pid = self.running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            if port_open(self.env.host, self.env.port):
                raise DriverError(f"{self.env.name}: no server of Airlock's is running but something answers "
                                  f"on {self.env.host}:{self.env.port}; refusing to go on as if it were stopped")
            return {"stopped": False, "reason": "not running"}
        started = time.monotonic()
        signal_group(pid, signal.SIGTERM)
        deadline = started + self.env.driver.stop_timeout_seconds
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        killed = process_alive(pid)
        if killed:
            signal_group(pid, signal.SIGKILL)
            kill_deadline = time.monotonic() + KILL_WAIT_SECONDS
            while process_alive(pid) and time.monotonic() < kill_deadline:
                time.sleep(0.1)
            if process_alive(pid):
                raise DriverError(f"{self.env.name}: the server (pid {pid}) survived SIGKILL for "
                                  f"{KILL_WAIT_SECONDS} s {STUCK}")
        self.wait_for_port_release(deadline + 10)
        self.pid_file.unlink(missing_ok=True)
        return {"stopped": True, "pid": pid, "killed": killed, "seconds": round(time.monotonic() - started, 3)}

    def migrate(self, version: str, database: Database | None = None) -> dict:
        """Run the new version's schema migration against the (stopped) server's database, or
        against another database (a rehearsal on a restored copy)."""
        database = database or self.database
        self.ensure_installed(version)
        Path(self.env.driver.artifact_root).mkdir(parents=True, exist_ok=True)
        command = self.migration_command(version, database)
        started, limit = time.monotonic(), self.env.driver.migration_timeout_seconds
        try:
            result = subprocess.run(command.argv, capture_output=True, text=True, check=False, timeout=limit,
                                    env=child_env({**command.env, **command.secret_env}))
        except subprocess.TimeoutExpired:
            raise DriverError(f"{self.env.name}: migration of {database.describe()} to {self.adapter.name} {version} "
                              f"did not finish within {limit:.0f} s (driver.migration_timeout_seconds) and was "
                              "stopped; the database may be half-migrated: the rollback restores it") from None
        output = database.redact((result.stdout + result.stderr).strip())
        if result.returncode != 0:
            raise DriverError(f"{self.env.name}: migration of {database.describe()} to {self.adapter.name} "
                              f"{version} failed (exit {result.returncode}):\n{output[-3000:]}")
        return {"seconds": round(time.monotonic() - started, 3), "output_tail": output[-1000:]}
