"""What Airlock needs to know about a platform, whatever the platform."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from packaging.version import Version

from airlock.child_env import child_env
from airlock.http import ServerError, request_json, request_text
from airlock.platform_auth import AuthError, Credential
from airlock.redaction import MARK, redact_text, secret_name

CHECKS_DIR = Path(__file__).resolve().parent / "checks"
"""Scripts run inside a platform version's own virtualenv (they import the platform's client)."""


@dataclass(frozen=True)
class RunningRun:
    """A pipeline or training run that an upgrade would interrupt."""

    run_id: str
    name: str
    where: str
    started_at: str
    last_activity: str
    stale: bool

    def describe(self) -> str:
        state = "stale, not waited for" if self.stale else "active"
        return (f"run {self.run_id} ({self.name!r} in {self.where}, started {self.started_at}, "
                f"last activity {self.last_activity}, {state})")


@dataclass(frozen=True)
class Fingerprint:
    """One hash over a server's user data, read through its API, plus counts to tell what differs."""

    digest: str
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def of(sections: dict[str, list]) -> Fingerprint:
        canonical = json.dumps(sections, sort_keys=True, separators=(",", ":"), default=str)
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        return Fingerprint(digest, {name: len(items) for name, items in sections.items()})


@dataclass(frozen=True)
class Command:
    """A command line plus the environment it needs; secrets go in `secret_env`, never in argv."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, str] = field(default_factory=dict)
    masked_env: frozenset[str] = frozenset()
    """Names in `env` whose values are not shown (a target's own variables not marked safe)."""

    def describe(self) -> dict:
        """What is safe to log, store and show: argv, the values of Airlock's own variables and of
        those marked safe, and the names (only) of the rest."""
        env = {name: MARK if name in self.masked_env or secret_name(name) else value
               for name, value in self.env.items()}
        return {"argv": [redact_text(arg) for arg in self.argv], "env": env,
                "secret_env_names": sorted(self.secret_env)}


def millis_to_iso(millis: int | None) -> str:
    if not millis:
        return "unknown"
    return datetime.fromtimestamp(int(millis) / 1000, UTC).isoformat(timespec="seconds")


def is_stale(last_activity_millis: int, stale_after: timedelta, now: datetime | None = None) -> bool:
    now = now or datetime.now(UTC)
    return now - datetime.fromtimestamp(last_activity_millis / 1000, UTC) > stale_after


def iso_to_millis(text: str | None) -> int:
    """Milliseconds since the epoch of an ISO timestamp (naive ones are UTC), 0 when unknown."""
    if not text:
        return 0
    moment = datetime.fromisoformat(text)
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


class PlatformAdapter(ABC):
    """Talks to one running server of a platform through its public API."""

    name: str
    package: str
    client_rule: str
    """Which client versions work with a server version, in words (for reports)."""
    downgrade_note: str = ""
    """What the vendor says about downgrades, added to the planner's refusal."""
    self_written_tables: tuple[str, ...] = ()
    """Tables the server rewrites by itself on any request (activity timestamps): not the users'
    data, so Airlock compares only their row counts."""
    migration_rewrites: tuple[str, ...] = ()
    """Tables the vendor's migrations rewrite by design (values changed, columns dropped, rows of its
    own added), besides the schema's own version table: after a migration, Airlock checks only that
    none of their rows went."""

    def __init__(self, url: str, credential: Credential | None = None):
        self.url = url.rstrip("/")
        self.credential = credential

    def auth_headers(self) -> dict[str, str]:
        """Headers that log in to the server with `self.credential` (none without one)."""
        return {}

    def credential_env(self) -> dict[str, str]:
        """Environment that logs this platform's client in with `self.credential` (none without one)."""
        return {}

    def forget_session(self) -> bool:
        """Drop a session token the server no longer accepts (it restarted with a new signing key);
        True when there was one, so the call is worth one more try."""
        return False

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One JSON call to the server, logged in; a refused login says which credential to fix."""
        return self._logged_in(lambda: request_json(method, f"{self.url}{path}", body, headers=self.auth_headers()))

    def text(self, path: str, public: bool = False) -> str:
        """GET a plain-text endpoint; `public` ones (health) are asked without logging in, so a server
        that is down reads as down, not as a failed login."""
        return self._logged_in(lambda: request_text(f"{self.url}{path}", headers={} if public else self.auth_headers()))

    def _logged_in(self, call):
        for attempt in (1, 2):
            try:
                return call()
            except ServerError as error:
                if attempt == 1 and error.status == 401 and self.forget_session():
                    continue
                raise self.refused(error) from None

    def refused(self, error: ServerError) -> ServerError:
        """A 401/403 as an AuthError that names the environment's credential; other errors unchanged."""
        if error.status not in (401, 403):
            return error
        if self.credential is None:
            return AuthError(f"{self.name} at {self.url} requires a login (HTTP {error.status}) and this environment "
                             "has none: set its auth.conn_id to an Airflow connection with the server's user "
                             "name and password, or a token as the password. Nothing was touched.")
        kind = "user name and password" if self.credential.is_login else "token / API key"
        return AuthError(f"{self.credential.environment}: {self.name} at {self.url} refused the {kind} of "
                         f"{self.credential.where} (HTTP {error.status}): fix the connection (or the user's "
                         "permissions on the server) and clear the task. Nothing was touched.")

    def check_access(self) -> dict:
        """Preflight: one authenticated read, so a wrong or missing login stops the run before anything
        is touched. A server that does not answer is left to the health check."""
        try:
            self.access_probe()
        except AuthError:
            raise
        except ServerError as error:
            return {"login": "not checked", "why": str(error)}
        return {"login": "accepted" if self.credential else "none needed",
                **({"conn_id": self.credential.conn_id} if self.credential else {})}

    @abstractmethod
    def access_probe(self) -> None:
        """The cheapest call that needs a login on this platform."""

    @abstractmethod
    def health(self) -> None:
        """Raise ServerError unless the server answers its health check."""

    @abstractmethod
    def server_version(self) -> str: ...

    @abstractmethod
    def running_runs(self, stale_after: timedelta) -> list[RunningRun]: ...

    @abstractmethod
    def fingerprint(self) -> Fingerprint: ...

    @abstractmethod
    def smoke_test(self) -> dict:
        """Write something small through the API and read it back; raise on any difference."""

    @abstractmethod
    def install_requirements(self, version: str) -> list[str]:
        """Pip requirements of a virtualenv that runs this version's server."""

    @abstractmethod
    def server_command(self, bin_dir: str, host: str, port: int, db_uri: str, artifact_root: str) -> Command: ...

    @abstractmethod
    def migration_command(self, bin_dir: str, db_uri: str, artifact_root: str) -> Command:
        """The new version's migration of `db_uri`; `artifact_root` is the environment's own folder,
        as the server gets it."""

    @abstractmethod
    def client_problem(self, client: Version, server: Version) -> str | None:
        """None when a client of version `client` works with a server of version `server`, else why not."""

    @abstractmethod
    def client_env(self, scratch_dir: str) -> dict[str, str]:
        """Environment that points this platform's client at the server (config kept in `scratch_dir`)."""

    def follow_ups(self, new_version: str) -> dict:
        """The vendor's post-upgrade to-dos that Airlock can find through the API (none by default)."""
        return {}

    def load_recent_artifacts(self, venv: Path, count: int, timeout: float = 900) -> list[dict]:
        """Load the `count` most recent models/artifacts with the client installed in `venv` (the
        guides' "test artifact loading"); one {"id", "name", "ok", "error"?} per item. Loading unpickles
        models: the client gets a minimal environment (none of the worker's secrets) and a time limit."""
        script = CHECKS_DIR / f"{self.name}_artifacts.py"
        with tempfile.TemporaryDirectory(prefix="airlock-client-") as scratch:
            try:
                result = subprocess.run(
                    [str(venv / "bin" / "python"), str(script)], capture_output=True, text=True, timeout=timeout,
                    cwd=scratch, check=False,
                    env=child_env({**self.client_env(scratch), **self.credential_env(),
                                   "AIRLOCK_ARTIFACT_COUNT": str(count)}))
            except subprocess.TimeoutExpired:
                raise ServerError(f"loading the {count} most recent artifacts of {self.url} with the client in "
                                  f"{venv} did not finish within {timeout:.0f} s and was stopped; a model that "
                                  "hangs while loading is a finding: check it by hand") from None
        if result.returncode != 0:
            raise ServerError(f"the {self.name} client in {venv} could not list artifacts on {self.url} "
                              f"(exit {result.returncode}): {result.stderr.strip()[-1500:]}")
        return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]

    def is_healthy(self) -> bool:
        try:
            self.health()
        except ServerError:
            return False
        return True

    def wait_healthy(self, timeout: float, interval: float = 0.5) -> float:
        """Poll health until it answers; return how long it took. Raise with the last error."""
        started = time.monotonic()
        last_error = "no answer yet"
        while time.monotonic() - started < timeout:
            try:
                self.health()
                return time.monotonic() - started
            except ServerError as error:
                last_error = str(error)
            time.sleep(interval)
        raise ServerError(f"{self.name} at {self.url} not healthy after {timeout:.0f} s: {last_error}")

    def published_versions(self) -> list[str]:
        """Versions of the platform's package published on the package index (through pip)."""
        result = subprocess.run(
            [sys.executable, "-m", "pip", "index", "versions", self.package],
            capture_output=True, text=True, timeout=120, check=False,
            env=child_env(network=True, prefixes=("PIP_",)))
        match = re.search(r"Available versions:\s*(.+)", result.stdout)
        if result.returncode != 0 or not match:
            raise ServerError(
                f"could not list published {self.package} versions through pip "
                f"(exit {result.returncode}): {result.stderr.strip()[-300:]}"
            )
        return [v.strip() for v in match.group(1).split(",") if v.strip()]
