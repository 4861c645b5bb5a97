"""Deployment drivers: how an environment's server is installed, stopped, migrated and started."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from airlock.databases.base import Database
from airlock.waits import Waiting


class Driver(Protocol):
    """What the upgrade steps need from a deployment driver (process, helm). `stop`, `launch`,
    `restore` and `switch` may wait: they return a result, or a generator of airlock.waits.Wait
    whose waits the DAG hands to the triggerer (`yield from waits_of(...)` in a step)."""


    def ensure_installed(self, version: str) -> Path: ...
    def venv_path(self, version: str) -> Path: ...
    def configuration(self) -> dict: ...
    def snapshot(self) -> dict: ...
    def stop(self, state: dict | None = None) -> dict | Waiting:
        """Stop serving; `state` is what `snapshot` recorded before the upgrade, when there is one."""
    def migrate(self, version: str, database: Database) -> dict:
        """Run `version`'s migration on another database (the rehearsal on a restored copy)."""
    def start(self, version: str) -> dict:
        """Serve `version`, waiting in this process (outside the DAG)."""
    def restore(self, version: str, state: dict) -> dict | Waiting: ...
    def launch_migration(self, version: str, attempt: int = 1) -> dict:
        """Migrate the environment's database to `version`, or (Helm) start doing so and return:
        the DAG then waits for it with a deferrable sensor."""

    def launch(self, version: str, state: dict | None = None) -> dict | Waiting:
        """Serve `version` (its first answer awaited as a Wait), or (Helm) start rolling it out and
        return: a deferrable sensor waits."""
