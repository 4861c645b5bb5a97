"""Names of the platforms, deployment drivers and database kinds Airlock knows.

Each name maps to "module:Class" and is imported only when used, so that validating a targets
file (at DAG parse time) never imports a platform's client code.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

PLATFORMS = {
    "mlflow": "airlock.platforms.mlflow:MlflowAdapter",
    "zenml": "airlock.platforms.zenml:ZenmlAdapter",
    "sematic": "airlock.platforms.sematic:SematicAdapter",
}
DRIVER_KINDS = {
    "process": "airlock.drivers.process:ProcessDriver",
    "helm": "airlock.drivers.helm:HelmDriver",
}
DATABASE_KINDS = {
    "sqlite": "airlock.databases.sqlite:SqliteDatabase",
    "mysql": "airlock.databases.mysql:MysqlDatabase",
    "postgresql": "airlock.databases.postgresql:PostgresDatabase",
}

PLATFORM_DATABASES = {
    "mlflow": ("sqlite", "mysql", "postgresql"),
    "zenml": ("sqlite", "mysql"),
    "sematic": ("sqlite", "postgresql"),
}
"""The database kinds each platform's server supports (ZenML: no PostgreSQL; Sematic: no MySQL)."""


def load_class(table: dict[str, str], name: str) -> Any:
    """Import the class registered under `name`."""
    module, _, attribute = table[name].partition(":")
    return getattr(import_module(module), attribute)


def platform_key(adapter: object) -> str:
    """The name `adapter`'s class is registered under (for a check that builds its own adapter)."""
    path = f"{type(adapter).__module__}:{type(adapter).__name__}"
    return next(name for name, registered in PLATFORMS.items() if registered == path)
