"""One environment of a target, with its adapter, database, driver and backup store wired up."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from airlock.artifacts.base import ArtifactStore
from airlock.artifacts.local import LocalArtifacts
from airlock.config import ArtifactsConfig, DatabaseConfig, EnvironmentConfig, TargetConfig, loopback_or
from airlock.databases.base import Database, ServerParams
from airlock.drivers import Driver
from airlock.platforms.base import PlatformAdapter
from airlock.registry import DATABASE_KINDS, DRIVER_KINDS, PLATFORMS, load_class
from airlock.signing import Signer
from airlock.stores.base import BackupStore
from airlock.stores.local import LocalBackupStore
from airlock.upgrade_log import Folder, LogPlace

DatabaseResolver = Callable[[DatabaseConfig], Database]


def airflow_database(config: DatabaseConfig, scratch_conn_id: str | None = None) -> Database:
    """A server database whose credentials come from an Airflow connection (at run time only), with
    its scratch copies on the server of `scratch_conn_id` when one is given."""
    from airlock.airflow_connections import connection_fields

    database_class = load_class(DATABASE_KINDS, config.kind)

    def server(conn_id: str, database: str) -> ServerParams:
        host, port, user, password = connection_fields(conn_id)
        return ServerParams(host, port or database_class.default_port, user, password, database)

    scratch = server(scratch_conn_id, "scratch") if scratch_conn_id else None
    return database_class(server(config.conn_id or "", config.database or ""), scratch_server=scratch)


def database_identity(config: DatabaseConfig) -> tuple | None:
    """Which server database a config reaches once its connection is resolved (two conn_ids, or two
    spellings of one host, can name the same database); None for SQLite (its path is checked on load)."""
    if config.kind == "sqlite":
        return None
    from airlock.airflow_connections import connection_fields

    host, port, _, _ = connection_fields(config.conn_id or "")
    return config.kind, loopback_or(host), port or load_class(DATABASE_KINDS, config.kind).default_port, \
        config.database


def shared_databases(target: TargetConfig, others: list[TargetConfig]) -> list[str]:
    """This target's environments whose database another environment (of it or of `others`) also
    reaches; another target whose connection cannot be resolved here is not compared."""
    mine = {(target.name, name): database_identity(env.database) for name, env in target.environments.items()}
    theirs = dict(mine)
    for other in others:
        for name, env in other.environments.items():
            with contextlib.suppress(Exception):  # e.g. a connection that only its own workers have
                theirs[(other.name, name)] = database_identity(env.database)
    return [f"{target.name}.{name} and {other_target}.{other_env} both reach {identity[3]} on "
            f"{identity[1]}:{identity[2]}"
            for (_, name), identity in mine.items() if identity
            for (other_target, other_env), other in theirs.items()
            if other == identity and (other_target, other_env) != (target.name, name)]


def open_database(config: DatabaseConfig, resolve: DatabaseResolver = airflow_database) -> Database:
    if config.kind == "sqlite":
        return load_class(DATABASE_KINDS, "sqlite")(config.path)
    return resolve(config)


def scratch_resolver(target: TargetConfig) -> DatabaseResolver:
    """Airflow connections, with the target's scratch server for databases of production's kind."""
    production_kind = target.environment("production").database.kind

    def resolve(config: DatabaseConfig) -> Database:
        scratch = target.scratch_conn_id if config.kind == production_kind else None
        return airflow_database(config, scratch)

    return resolve


@dataclass
class Environment:
    target: TargetConfig
    config: EnvironmentConfig
    adapter: PlatformAdapter
    database: Database
    driver: Driver
    store: BackupStore
    artifacts: ArtifactStore | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def stale_after(self) -> timedelta:
        return timedelta(minutes=self.target.drain.stale_after_minutes)


def open_adapter(target: TargetConfig, name: str) -> PlatformAdapter:
    """The platform adapter of one environment (no database connection needed), logged in with the
    environment's credential."""
    return adapter_for(target.platform, target.environment(name).url, target.environment(name).auth_conn_id, name)


def adapter_for(platform: str, url: str, auth_conn_id: str | None, environment: str) -> PlatformAdapter:
    """An adapter for `url`, with the credential of Airflow connection `auth_conn_id` when one is named."""
    from airlock.platform_auth import credential_from_connection

    credential = credential_from_connection(auth_conn_id, environment) if auth_conn_id else None
    return load_class(PLATFORMS, platform)(url, credential)


def open_environment(target: TargetConfig, name: str, resolve: DatabaseResolver | None = None) -> Environment:
    config = target.environment(name)
    adapter = open_adapter(target, name)
    database = open_database(config.database, resolve or scratch_resolver(target))
    driver = load_class(DRIVER_KINDS, config.driver.kind)(config, adapter, database)
    return Environment(target, config, adapter, database, driver, open_store(target, name),
                       open_artifacts(config.artifacts))


def open_artifacts(config: ArtifactsConfig | None) -> ArtifactStore | None:
    """The environment's artifact store, when configured (an S3 client from the Airflow AWS connection)."""
    if config is None:
        return None
    if not config.is_s3:
        return LocalArtifacts(config.location)
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from airlock.artifacts.s3 import S3Artifacts

    return S3Artifacts(S3Hook(aws_conn_id=config.aws_conn_id).get_conn(), config.location)


def log_place(target: TargetConfig) -> LogPlace:
    """Where the target's upgrade log (and what its runs remember beside it) lives: its log_dir, else
    its production store (an S3 target needs no local folder: every worker reads the same)."""
    return Folder(target.log_dir) if target.log_dir else open_store(target, "production")


def open_store(target: TargetConfig, environment: str) -> BackupStore:
    """The target's backup store (an S3 client comes from the Airflow AWS connection), signing and
    checking manifests with the key from Airflow."""
    backup = target.backup
    if not backup.is_s3:
        store: BackupStore = LocalBackupStore(backup.location, target.name, environment)
    else:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from airlock.stores.s3 import S3BackupStore

        client = S3Hook(aws_conn_id=backup.aws_conn_id).get_conn()
        store = S3BackupStore(client, backup.location, target.name, environment, sse=backup.sse,
                              kms_key_id=backup.kms_key_id)
    store.signer = signer_for(target)
    return store


def signer_for(target: TargetConfig) -> Signer:
    from airlock.airflow_connections import airflow_secret

    kind, name = target.backup.signing_key
    return Signer(lambda: airflow_secret(**{kind: name}),
                  f"Airflow {'variable' if kind == 'variable' else 'connection'} {name!r}, "
                  f"target {target.name} backup.signing_key")
