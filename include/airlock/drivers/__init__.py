"""Deployment drivers: how an environment's server is installed, stopped, migrated and started."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from airlock.databases.base import Database


class Driver(Protocol):
    """What the upgrade steps need from a deployment driver (process, helm)."""


    def ensure_installed(self, version: str) -> Path: ...
    def venv_path(self, version: str) -> Path: ...
    def configuration(self) -> dict: ...
    def snapshot(self) -> dict: ...
    def stop(self) -> dict: ...
    def migrate(self, version: str, database: Database) -> dict:
        """Run `version`'s migration on another database (the rehearsal on a restored copy)."""
    def start(self, version: str) -> dict: ...
    def restore(self, version: str, state: dict) -> dict: ...
    def launch_migration(self, version: str, attempt: int = 1) -> dict:
        """Migrate the environment's database to `version`, or (Helm) start doing so and return:
        the DAG then waits for it with a deferrable sensor."""

    def launch(self, version: str) -> dict:
        """Serve `version`, or (Helm) start rolling it out and return: a deferrable sensor waits."""
