"""Upgrade targets, declared in YAML and validated on load.

Every error names the file, the target and the field, so that a broken file shows up as a clear
import error of the DAG file instead of a half-built DAG. Unknown keys are errors too: a typo in
`stale_after_minutes` must not silently fall back to a default on a production server.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from packaging.version import InvalidVersion, Version

from airlock.config_operations import (
    FleetConfig,
    MaintenanceConfig,
    NotifyConfig,
    ReleaseSource,
    ScheduleConfig,
    TeamsConfig,
)
from airlock.config_reader import CONN_ID, MINUTES_MAX, SECONDS_MAX, ConfigError, Reader, shown
from airlock.registry import DATABASE_KINDS, DRIVER_KINDS, PLATFORM_DATABASES, PLATFORMS
from airlock.release_notes import BreakingNote

DEFAULT_TARGETS_FILE = Path(__file__).resolve().parent.parent / "targets.yaml"
TARGETS_FILE_ENV = "AIRLOCK_TARGETS_FILE"
ENVIRONMENTS = ("staging", "production")
TARGET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
DB_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
RDS_ID = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
IMAGE_TAG = re.compile(r"[A-Za-z0-9_.-]{0,40}\{version\}[A-Za-z0-9_.-]{0,40}")
S3_URL = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\x00-\x1f]*)?")
USER_NAME = re.compile(r"[A-Za-z0-9_.@+-]{1,256}")
DAG_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")
QUEUE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
POOL = re.compile(r"^[A-Za-z0-9_.-]{1,256}$")


DEFAULT_SIGNING_VARIABLE = "airlock_backup_signing_key"
WATCH_MINUTES_MAX = 7 * 24 * 60


@dataclass(frozen=True)
class RdsConfig:
    """An RDS-hosted database: a manual snapshot is taken with the server stopped, and a rollback
    restores it into a new instance that takes over the old instance's name (and so its endpoint)."""

    instance_id: str
    aws_conn_id: str = "aws_default"
    rollback: str = "snapshot"
    snapshot_timeout_minutes: float = 60

    @classmethod
    def read(cls, r: Reader) -> RdsConfig:
        config = cls(instance_id=r.text("instance_id", pattern=RDS_ID, expand=True),
                     aws_conn_id=r.text("aws_conn_id", default="aws_default", pattern=CONN_ID, expand=True),
                     rollback=r.choice("rollback", ["snapshot", "dump"], default="snapshot"),
                     snapshot_timeout_minutes=r.number("snapshot_timeout_minutes", 60, minimum=1, maximum=MINUTES_MAX))
        r.done()
        return config


@dataclass(frozen=True)
class DatabaseConfig:
    """Where an environment keeps its metadata: a SQLite file, or a MySQL/PostgreSQL database
    (optionally hosted on RDS)."""

    kind: str
    path: str | None = None
    conn_id: str | None = None
    database: str | None = None
    rds: RdsConfig | None = None

    @classmethod
    def read(cls, r: Reader) -> DatabaseConfig:
        kind = r.choice("kind", sorted(DATABASE_KINDS))
        if kind == "sqlite":
            config = cls(kind, path=r.path("path"))
        else:
            rds = RdsConfig.read(r.child("rds")) if r.data.get("rds") is not None else None
            r.used.add("rds")
            config = cls(kind, conn_id=r.text("conn_id", pattern=CONN_ID, expand=True),
                         database=r.text("database", pattern=DB_NAME, expand=True), rds=rds)
        r.done()
        return config


@dataclass(frozen=True)
class HelmConfig:
    """A server deployed by a Helm chart: the release, the chart and its values, the image tag's
    values path, the Airflow Kubernetes connection, and what the chart creates (the server
    Deployment and Service, and the migration Job that `migration_values` switches on)."""

    release: str
    namespace: str
    chart: str
    deployment: str
    service: str
    migration_job: str
    chart_version: str | None = None
    values_files: list[str] = field(default_factory=list)
    overrides: dict = field(default_factory=dict)
    image_tag_path: str = "image.tag"
    image_tag: str = "{version}"
    """The tag of a version's image, for charts whose tags are not the bare version (`v{version}`,
    `{version}-slim`)."""
    migration_values: dict = field(default_factory=dict)
    migration: str = "job"
    """job: Airlock renders the chart's migration Job (`migration_values` switch it on) and runs it
    before the release changes. hook: the chart migrates in a pre-upgrade hook Job named
    `migration_job` (ZenML's chart), which `helm upgrade` runs and waits for; Airlock keeps its logs."""
    kubernetes_conn_id: str = "kubernetes_default"
    backend: str = "auto"
    timeout_seconds: float = 300
    method: str = "rolling"
    """rolling: the release is upgraded in place. blue-green: the new version comes up as a second
    release (`release` + `green_suffix`) and `service` (which belongs to neither release) switches
    to it once it passes its checks; the old release stays, scaled to zero, for a fast switch back."""
    green_suffix: str = "-green"
    release_urls: dict = field(default_factory=dict)
    """blue-green: each release's own URL (its chart Service), for the checks before the switch."""

    @property
    def releases(self) -> tuple[str, str]:
        return self.release, f"{self.release}{self.green_suffix}"

    @property
    def deployments(self) -> tuple[str, str]:
        """The charts name their Deployment after the release: the green one has the same suffix."""
        return self.deployment, f"{self.deployment}{self.green_suffix}"

    @staticmethod
    def read_image_tag(r: Reader) -> str:
        template = r.text("image_tag", default="{version}")
        if not IMAGE_TAG.fullmatch(template):
            r.fail("image_tag", f"{template!r} must hold {{version}} once, with only letters, digits, '.', '_' "
                                "or '-' around it (e.g. v{version} or {version}-slim)")
        return template

    @classmethod
    def read(cls, r: Reader) -> HelmConfig:
        k8s_name = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
        overrides = r._get("set", False, {})
        migration_values = r._get("migration_values", False, {"migration": {"enabled": True}})
        for key, value in (("set", overrides), ("migration_values", migration_values)):
            if not isinstance(value, dict):
                r.fail(key, f"must be a mapping (got {value!r})")
        config = cls(
            release=r.text("release", pattern=k8s_name), namespace=r.text("namespace", pattern=k8s_name),
            chart=r.text("chart", expand=True), deployment=r.text("deployment", pattern=k8s_name),
            service=r.text("service", pattern=k8s_name), migration_job=r.text("migration_job", pattern=k8s_name),
            chart_version=r.optional_text("chart_version"), values_files=r.paths("values_files"),
            overrides=overrides, image_tag_path=r.text("image_tag_path", default="image.tag",
                                                       pattern=re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")),
            image_tag=cls.read_image_tag(r),
            migration_values=migration_values, migration=r.choice("migration", ["job", "hook"], default="job"),
            kubernetes_conn_id=r.text("kubernetes_conn_id", default="kubernetes_default", pattern=CONN_ID,
                                      expand=True),
            backend=r.choice("backend", ["auto", "sdk", "cli"], default="auto"),
            timeout_seconds=r.number("timeout_seconds", 300, minimum=1, maximum=SECONDS_MAX),
            method=r.choice("method", ["rolling", "blue-green"], default="rolling"),
            green_suffix=r.text("green_suffix", default="-green", pattern=re.compile(r"^-[a-z0-9-]{1,20}$")),
            release_urls=r.urls("release_urls"))
        if config.method == "blue-green" and sorted(config.release_urls) != sorted(config.releases):
            r.fail("release_urls", f"blue-green needs the URL of each release: {', '.join(config.releases)} "
                                   f"(got {sorted(config.release_urls)})")
        if config.method == "blue-green" and config.migration == "hook":
            r.fail("migration", "hook works with method: rolling only (with blue-green each release would run "
                                "its own install hook, under a name of its own)")
        r.done()
        return config


@dataclass(frozen=True)
class DriverConfig:
    """How Airlock deploys the server of one environment."""

    kind: str
    state_dir: str
    start_timeout_seconds: float
    stop_timeout_seconds: float
    artifact_root: str
    migration_timeout_seconds: float = 3600
    env: dict[str, str] = field(default_factory=dict)
    """Extra, non-secret environment of the server process (e.g. ZENML_SERVER_AUTH_SCHEME)."""
    helm: HelmConfig | None = None
    safe_env: frozenset[str] = frozenset()
    """Names in `env` marked safe: their values are shown in configuration backups, others masked."""
    secret_env: dict[str, str] = field(default_factory=dict)
    """Secret environment of a process server (e.g. MLFLOW_FLASK_SERVER_SECRET_KEY): NAME → the Airflow
    connection whose password is the value, read when the server starts, never written anywhere."""

    @property
    def migrates_at_start(self) -> bool:
        """The chart's hook migrates inside `helm upgrade`: the new server starts as the migration ends."""
        return self.helm is not None and self.helm.migration == "hook"
    args: list[str] = field(default_factory=list)
    """Extra arguments of a process server's command line, e.g. MLflow's `--app-name basic-auth`
    (argv is visible to every user of the machine: never a secret here, use `env`)."""

    @classmethod
    def read(cls, r: Reader) -> DriverConfig:
        kind = r.choice("kind", sorted(DRIVER_KINDS))
        state_dir = r.path("state_dir")
        env, safe_env = r.environment_variables("env")
        config = cls(
            kind=kind,
            state_dir=state_dir,
            start_timeout_seconds=r.number("start_timeout_seconds", 180, minimum=1, maximum=SECONDS_MAX),
            stop_timeout_seconds=r.number("stop_timeout_seconds", 30, minimum=1, maximum=SECONDS_MAX),
            artifact_root=r.path("artifact_root", default=os.path.join(state_dir, "artifacts")),
            migration_timeout_seconds=r.number("migration_timeout_seconds", 3600, minimum=1, maximum=SECONDS_MAX),
            env=env,
            helm=HelmConfig.read(r.child("helm")) if kind == "helm" else None,
            safe_env=safe_env,
            secret_env=r.secret_variables("secret_env", CONN_ID),
            args=r.names("args"),
        )
        for key in ("args", "secret_env"):
            if kind != "process" and getattr(config, key):
                r.fail(key, "is only for kind: process (a chart sets its server's in its values and Secrets)")
        if kind != "helm" and r.data.get("helm") is not None:
            r.fail("helm", "is only for kind: helm")
        r.done()
        return config


def read_location(r: Reader) -> str:
    """A store's `location`: an absolute path on the worker or an s3://bucket/prefix URL."""
    raw = r.data.get("location")
    location = r.text("location", expand=True)
    if location.startswith("s3://"):
        if not S3_URL.fullmatch(location):
            r.fail("location", f"{shown(raw, location)} is not an s3://bucket/prefix URL")
    elif not os.path.isabs(location):
        r.fail("location", f"must be an absolute path or an s3:// URL (got {shown(raw, location)})")
    return location


@dataclass(frozen=True)
class ArtifactsConfig:
    """The environment's artifact store (the MLflow guide's "backup artifacts"): a local artifact root
    or s3://bucket/prefix. Its inventory goes into each backup set, with a copy of what the store
    itself cannot give back (a local root's files, hard-linked where the filesystem allows; the
    objects of an unversioned bucket); a versioned bucket's previous versions are its copy."""

    location: str
    aws_conn_id: str = "aws_default"

    @property
    def is_s3(self) -> bool:
        return self.location.startswith("s3://")

    @classmethod
    def read(cls, r: Reader) -> ArtifactsConfig:
        location = read_location(r)
        config = cls(location.rstrip("/") or "/", r.text("aws_conn_id", default="aws_default", pattern=CONN_ID,
                                                          expand=True))
        if not config.is_s3 and r.data.get("aws_conn_id") is not None:
            r.fail("aws_conn_id", "is only for an s3:// location")
        r.done()
        return config


@dataclass(frozen=True)
class EnvironmentConfig:
    """One environment (staging or production) of a target."""

    name: str
    url: str
    driver: DriverConfig
    database: DatabaseConfig
    pause_dags: list[str] = field(default_factory=list)
    """Airflow DAGs (the teams' training DAGs) paused from the drain until this environment's
    upgrade ends, whatever the outcome; DAGs that were already paused are left paused."""
    auth_conn_id: str | None = None
    """The Airflow connection Airlock logs in to this environment's server with (every call)."""
    maintenance: MaintenanceConfig | None = None
    """When set, the environment's upgrade waits (deferred: no worker slot) for a window it fits in."""
    artifacts: ArtifactsConfig | None = None
    """When set, the artifact store is inventoried (and kept) in each backup set, compared after the
    upgrade and restored by a rollback."""

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parsed = urlparse(self.url)
        return parsed.port or (443 if parsed.scheme == "https" else 80)

    @classmethod
    def read(cls, name: str, r: Reader) -> EnvironmentConfig:
        auth = r.child("auth", required=False)
        auth_conn_id = auth.text("conn_id", pattern=CONN_ID, expand=True) if auth.data else None
        auth.done()
        maintenance = MaintenanceConfig.read(r.child("maintenance")) if r.data.get("maintenance") is not None else None
        artifacts = ArtifactsConfig.read(r.child("artifacts")) if r.data.get("artifacts") is not None else None
        r.used.update({"maintenance", "artifacts"})
        config = cls(name, r.url("url"), DriverConfig.read(r.child("driver")), DatabaseConfig.read(r.child("database")),
                     r.names("pause_dags"), auth_conn_id, maintenance, artifacts)
        for index, dag_id in enumerate(config.pause_dags):
            if not DAG_ID.fullmatch(dag_id):
                r.fail(f"pause_dags[{index}]", f"{dag_id!r} is not a DAG id")
        r.done()
        return config


@dataclass(frozen=True)
class DrainConfig:
    """How long to wait for running pipelines before touching a server, how long on-call has to
    answer when they are still running (no answer = abort), and the Airflow connection used to
    pause the teams' DAGs (each environment's `pause_dags`) while its server is upgraded."""

    timeout_minutes: float = 60
    poll_interval_seconds: float = 30
    stale_after_minutes: float = 24 * 60
    decision_timeout_minutes: float = 60
    airflow_api_conn_id: str = "airlock_airflow_api"

    @classmethod
    def read(cls, r: Reader) -> DrainConfig:
        config = cls(
            timeout_minutes=r.number("timeout_minutes", cls.timeout_minutes, minimum=0, maximum=7 * 24 * 60),
            poll_interval_seconds=r.number("poll_interval_seconds", cls.poll_interval_seconds, minimum=0.1,
                                           maximum=3600),
            stale_after_minutes=r.number("stale_after_minutes", cls.stale_after_minutes, minimum=1,
                                         maximum=MINUTES_MAX),
            decision_timeout_minutes=r.number("decision_timeout_minutes", cls.decision_timeout_minutes, minimum=1,
                                              maximum=MINUTES_MAX),
            airflow_api_conn_id=r.text("airflow_api_conn_id", default=cls.airflow_api_conn_id, pattern=CONN_ID,
                                       expand=True),
        )
        r.done()
        return config


@dataclass(frozen=True)
class WatchConfig:
    """How production is judged after its upgrade. One failed probe is not a verdict: a failure
    streak becomes one only once it has lasted `consecutive_failures` checks AND `unhealthy_seconds`
    (long enough for a pod to restart). A server still answering then is not rolled back without a
    human (`decision_timeout_minutes`, no answer = keep the new version): a rollback loses what was
    written since the upgrade."""

    interval_seconds: float = 2
    consecutive_failures: int = 3
    unhealthy_seconds: float = 60
    decision_timeout_minutes: float = 60
    minutes: float = 30
    """How long production is watched (the trigger param watch_seconds overrides it for one run)."""
    smoke_interval_seconds: float = 600
    """How often the smoke test (it writes a little) runs during the watch; health and version every interval."""

    @classmethod
    def read(cls, r: Reader) -> WatchConfig:
        config = cls(
            minutes=r.number("minutes", cls.minutes, minimum=0, maximum=WATCH_MINUTES_MAX),
            smoke_interval_seconds=r.number("smoke_interval_seconds", cls.smoke_interval_seconds, minimum=1,
                                            maximum=SECONDS_MAX),
            interval_seconds=r.number("interval_seconds", cls.interval_seconds, minimum=0.1, maximum=3600),
            consecutive_failures=int(r.number("consecutive_failures", cls.consecutive_failures, minimum=1, maximum=1000,
                                              integer=True)),
            unhealthy_seconds=r.number("unhealthy_seconds", cls.unhealthy_seconds, minimum=0, maximum=SECONDS_MAX),
            decision_timeout_minutes=r.number("decision_timeout_minutes", cls.decision_timeout_minutes, minimum=1,
                                              maximum=MINUTES_MAX),
        )
        r.done()
        return config


@dataclass(frozen=True)
class CompatibilityConfig:
    """Client compatibility: the teams' requirement or lock files to check against the new server
    version, what an incompatible one does (fail the phase, or warn), and how many of the most
    recent models/artifacts the new client must load from upgraded staging."""

    client_files: list[str] = field(default_factory=list)
    on_incompatible: str = "fail"
    recent_artifacts: int = 5
    resolve: bool = True
    """Also check each file's Python against the new client's Requires-Python and resolve its
    requirements with the new client through pip (dry run, the workers' package index)."""

    @classmethod
    def read(cls, r: Reader) -> CompatibilityConfig:
        config = cls(client_files=r.paths("client_files"),
                     on_incompatible=r.choice("on_incompatible", ["fail", "warn"], default="fail"),
                     recent_artifacts=int(r.number("recent_artifacts", 5, minimum=0, maximum=1000, integer=True)),
                     resolve=r.flag("resolve", True))
        r.done()
        return config


@dataclass(frozen=True)
class BackupConfig:
    """Where backup sets go (a local directory or s3://bucket/prefix) and how long they stay."""

    location: str
    aws_conn_id: str = "aws_default"
    sse: str | None = None
    kms_key_id: str | None = None
    keep_last: int = 10
    keep_days: float = 30
    signing_key: tuple[str, str] = ("variable", DEFAULT_SIGNING_VARIABLE)
    """Where the key that signs manifests lives: ("variable", name) or ("conn_id", name): its password."""

    @property
    def is_s3(self) -> bool:
        return self.location.startswith("s3://")

    @classmethod
    def read(cls, r: Reader) -> BackupConfig:
        location = read_location(r)
        sse = r.choice("sse", ["none", "AES256", "aws:kms"], default="none")
        config = cls(
            location=location,
            aws_conn_id=r.text("aws_conn_id", default="aws_default", pattern=CONN_ID, expand=True),
            sse=None if sse == "none" else sse,
            kms_key_id=r.optional_text("kms_key_id", expand=True),
            keep_last=int(r.number("keep_last", 10, minimum=1, maximum=10_000, integer=True)),
            keep_days=r.number("keep_days", 30, minimum=0, maximum=3650),
            signing_key=read_signing_key(r.child("signing_key", required=False)),
        )
        if config.kms_key_id and config.sse != "aws:kms":
            r.fail("kms_key_id", "needs sse: aws:kms")
        r.done()
        return config


def read_signing_key(r: Reader) -> tuple[str, str]:
    """`{variable: NAME}` or `{conn_id: NAME}`; the default variable when absent."""
    given = [kind for kind in ("variable", "conn_id") if r.data.get(kind) is not None]
    if len(given) > 1:
        r.fail("", "names either a variable or a conn_id, not both")
    kind = given[0] if given else "variable"
    name = r.text(kind, default=DEFAULT_SIGNING_VARIABLE if kind == "variable" else None, pattern=CONN_ID)
    r.used.update(("variable", "conn_id"))
    r.done()
    return kind, name


@dataclass(frozen=True)
class TargetConfig:
    """One upgrade target: a platform with a staging and a production environment."""

    name: str
    platform: str
    description: str
    approvers: list[str]
    backup: BackupConfig
    log_dir: str | None
    allow_minor_skips: bool
    drain: DrainConfig
    compatibility: CompatibilityConfig = field(default_factory=CompatibilityConfig)
    environments: dict[str, EnvironmentConfig] = field(default_factory=dict)
    watch: WatchConfig = field(default_factory=WatchConfig)
    approval_timeout_minutes: float = 3 * 24 * 60
    """How long the UAT gate waits for an approver; no answer by then is a Reject."""
    scratch_conn_id: str | None = None
    """Another server (of production's database kind) for verification and rehearsal copies, so they
    neither load nor fill production's server; production's own server when unset."""
    queue: str | None = None
    """The Airflow worker queue every task of this target goes to: where a process target's servers,
    state and local backups live (a Celery worker started with `--queues` including it)."""
    schedule: ScheduleConfig | None = None
    auto_approve: str = "none"
    """patch: a patch upgrade (scheduled or not) passes the UAT gate without a human, and the log says
    so; minor and major upgrades always wait for an approver."""
    releases: ReleaseSource = field(default_factory=ReleaseSource)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    teams: TeamsConfig = field(default_factory=TeamsConfig)
    release_notes: tuple[BreakingNote, ...] = ()
    """The target's own breaking notes for hops, beside Airlock's table (release_notes.py)."""
    production_pool: str | None = None
    """The Airflow pool whose slot a production upgrade of this target holds from its start to the
    run's end (airlock/production_slot.py): `airlock_<platform>` by default, shared by the platform's
    targets; "none" lets this target's production run beside any other."""
    source: str = ""
    downtime_goal_minutes: float = 5
    """How long production may be down in one upgrade: the Upgrades page holds each upgrade's downtime
    against it (goals.downtime_minutes)."""

    @property
    def dag_id(self) -> str:
        return f"airlock_upgrade__{self.name}"

    def environment(self, name: str) -> EnvironmentConfig:
        return self.environments[name]

    @classmethod
    def read(cls, name: str, r: Reader) -> TargetConfig:
        platform = r.choice("platform", sorted(PLATFORMS))
        description = r.text("description", default=f"{platform} target {name}")
        approvers = r.names("approvers")
        if not approvers:
            r.fail("approvers", "is required: the Airflow users who may answer this target's gates "
                                "(nobody else can), e.g. approvers: [alice, bob]")
        for index, user in enumerate(approvers):
            if not USER_NAME.fullmatch(user):
                r.fail(f"approvers[{index}]", f"{user!r} is not an Airflow user name")
        backup = BackupConfig.read(r.child("backup"))
        if backup.is_s3 and r.data.get("log_dir") is None:  # the log goes into the S3 store, beside the backups
            r.used.add("log_dir")
            log_dir = None
        else:
            log_dir = r.path("log_dir", default=None if backup.is_s3 else backup.location)
        upgrade = r.child("upgrade", required=False)
        allow_minor_skips = upgrade.flag("allow_minor_skips", False)
        upgrade.done()
        drain = DrainConfig.read(r.child("drain", required=False))
        compatibility = CompatibilityConfig.read(r.child("compatibility", required=False))
        watch = WatchConfig.read(r.child("watch", required=False))
        approval = r.child("approval", required=False)
        approval_timeout_minutes = approval.number("timeout_minutes", 3 * 24 * 60, minimum=1, maximum=MINUTES_MAX)
        approval.done()
        scratch = r.child("scratch", required=False)
        scratch_conn_id = scratch.text("conn_id", pattern=CONN_ID, expand=True) if scratch.data else None
        scratch.done()
        queue = r.optional_text("queue")
        if queue is not None and not QUEUE.fullmatch(queue):
            r.fail("queue", f"{queue!r} is not a queue name (letters, digits, '_', '.', '-'; at most 64)")
        envs = r.child("environments")
        environments = {env: EnvironmentConfig.read(env, envs.child(env)) for env in ENVIRONMENTS}
        envs.done()
        auto_upgrade = r.choice("auto_upgrade", ["patch"]) if r.data.get("auto_upgrade") is not None else None
        r.used.add("auto_upgrade")
        schedule = (ScheduleConfig.read(r.child("schedule"), auto_upgrade) if r.data.get("schedule") is not None
                    else None)
        r.used.add("schedule")
        if auto_upgrade and schedule is None:
            r.fail("auto_upgrade", "needs a schedule: {cron: ..., timezone: ...} to run on")
        auto_approve = r.choice("auto_approve", ["none", "patch"], default="none")
        releases = ReleaseSource.read(r.child("releases", required=False))
        notify = NotifyConfig.read(r.child("notify", required=False))
        teams = TeamsConfig.read(r.child("teams", required=False), notify.from_email)
        notes = read_release_notes(r)
        pool = r.text("production_pool", default=f"airlock_{platform}", pattern=POOL)
        goals = r.child("goals", required=False)
        downtime_goal = goals.number("downtime_minutes", cls.downtime_goal_minutes, minimum=0, maximum=MINUTES_MAX)
        goals.done()
        r.done()
        target = cls(name, platform, description, approvers, backup, log_dir, allow_minor_skips, drain,
                     compatibility, environments, watch, approval_timeout_minutes, scratch_conn_id, queue,
                     schedule, auto_approve, releases, notify, teams, notes, None if pool == "none" else pool,
                     r.source, downtime_goal)
        target.check_database_kinds(r)
        return target

    def check_database_kinds(self, r: Reader) -> None:
        supported = PLATFORM_DATABASES[self.platform]
        for name, env in self.environments.items():
            if env.database.kind not in supported:
                r.fail(f"environments.{name}.database.kind", f"{self.platform} servers do not run on "
                                                            f"{env.database.kind} (supported: {', '.join(supported)})")

    def places(self) -> Iterator[tuple[str, str, tuple]]:
        """(environment, field, identity) of everything an environment must not share with another:
        its server, its database, its state directory and its Helm releases."""
        for name, env in self.environments.items():
            yield name, "url", ("server", loopback_or(env.host), env.port)
            database = env.database
            if database.kind == "sqlite":
                yield name, "database.path", ("sqlite", os.path.normpath(database.path or ""))
            else:
                yield name, "database", ("database", database.conn_id, database.database)
            yield name, "driver.state_dir", ("state_dir", os.path.normpath(env.driver.state_dir))
            helm = env.driver.helm
            for release in (helm.releases if helm else ()):
                yield name, "driver.helm.release", ("helm", helm.namespace, release)


def read_release_notes(r: Reader) -> tuple[BreakingNote, ...]:
    """`release_notes: [{version, note, runs_fail, uninstall_first}]`: the target's own breaking notes."""
    entries = r._get("release_notes", False, [])
    if not isinstance(entries, list):
        r.fail("release_notes", "must be a list, e.g. [{version: 0.42.0, note: '…', runs_fail: true}]")
    notes = []
    for index, entry in enumerate(entries):
        item = Reader(entry, f"{r.where}.release_notes[{index}]".lstrip("."), r.source, r.target)
        version = item.text("version")
        try:
            Version(version)
        except InvalidVersion:
            item.fail("version", f"{version!r} is not a version number")
        notes.append(BreakingNote(version, item.text("note"), item.flag("runs_fail", False),
                                  item.flag("uninstall_first", False), f"the targets file {r.source}"))
        item.done()
    return tuple(notes)


LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "::1", "0.0.0.0", "::"}


def loopback_or(host: str) -> str:
    """One spelling for the local machine (localhost, 127.0.0.1, 127.1.2.3, ::1), so two spellings of
    one server are seen as one."""
    host = host.lower().rstrip(".")
    return "loopback" if host in LOOPBACK_NAMES or host.startswith("127.") else host


def check_targets_are_distinct(source: str, targets: dict[str, TargetConfig]) -> None:
    """Two environments (of one target or of two) sharing a server, database, state directory or Helm
    release would let one upgrade stop, migrate or restore what another one is using."""
    seen: dict[tuple, tuple[str, str, str]] = {}
    for target in targets.values():
        for env, key, identity in target.places():
            here = (target.name, env, key)
            if identity in seen:
                other_target, other_env, other_key = seen[identity]
                raise ConfigError(
                    f"{source}: target {target.name}: environments.{env}.{key}: reaches the same "
                    f"{identity[0].replace('_', ' ')} as target {other_target}'s environments.{other_env}.{other_key}; "
                    "each environment must have its own")
            seen[identity] = here


def targets_file() -> Path:
    """The targets file in force: $AIRLOCK_TARGETS_FILE, else the embedded default."""
    return Path(os.environ.get(TARGETS_FILE_ENV) or DEFAULT_TARGETS_FILE)


def read_file(path: str | Path | None) -> tuple[str, Reader]:
    """The targets file's top level, where `targets` and `fleets` are."""
    path = Path(path) if path else targets_file()
    source = str(path)
    try:
        stat = path.stat()
        raw = parsed_yaml(source, stat.st_mtime_ns, stat.st_size)
    except FileNotFoundError:
        raise ConfigError(f"{source}: targets file not found (set {TARGETS_FILE_ENV})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}") from None
    return source, Reader(raw if raw is not None else {}, "", source, None)


@functools.lru_cache(maxsize=8)
def parsed_yaml(source: str, mtime_ns: int, size: int) -> Any:
    """The file's YAML, parsed once per version of the file (one DAG file parse reads it for the
    upgrade, rollback and fleet DAGs alike); libyaml's parser where PyYAML has it. Readers never
    change what they read, so the parse is shared; ${VAR}s are expanded when each field is read."""
    return yaml.load(Path(source).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_targets(path: str | Path | None = None) -> dict[str, TargetConfig]:
    """Load and validate every target of a targets file."""
    source, top = read_file(path)
    entries = top.child("targets")
    top.used.add("fleets")
    top.done()
    if not entries.data:
        entries.fail("", "declares no targets")
    targets = {}
    for name in entries.data:
        if not isinstance(name, str) or not TARGET_NAME.fullmatch(name):
            entries.fail(str(name), f"target names must match {TARGET_NAME.pattern}")
        targets[name] = TargetConfig.read(name, Reader(entries.data[name], "", source, name))
    check_targets_are_distinct(source, targets)
    return targets


def load_fleets(path: str | Path | None = None, known: set[str] | None = None) -> dict[str, FleetConfig]:
    """The file's fleets (`fleets: {name: {targets: [...], wave_size, pause_minutes}}`), each naming
    targets of the same file (`known`: their names, when the caller has read them already)."""
    known = set(load_targets(path)) if known is None else known
    source, top = read_file(path)
    entries = top.child("fleets", required=False)
    return {name: FleetConfig.read(str(name), Reader(entries.data[name], f"fleets.{name}", source, None), known)
            for name in entries.data}


def load_target(name: str, path: str | Path | None = None) -> TargetConfig:
    """One target by name, with an error that lists the ones that exist."""
    targets = load_targets(path)
    if name not in targets:
        raise ConfigError(f"{path or targets_file()}: no target {name!r} (have: {', '.join(targets)})")
    return targets[name]
