"""Helm, behind one interface with two backends.

- `SdkHelm`: the Helm v4 Go SDK in the worker through `helm-python-sdk` (import `helm_python`);
  the default when it is installed.
- `CliHelm`: the `helm` CLI on the worker's PATH, called with argument lists (never a shell).

Both take the same `HelmRelease` (what a target declares) and the same values: the chart's values
files merged in order, then `set` overrides (dotted paths), then the image tag at its path.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from airlock.child_env import child_env


class HelmError(RuntimeError):
    """A Helm operation failed; the message names the release and the operation."""


@dataclass(frozen=True)
class HelmRelease:
    """A release as a target declares it (no secret in here: the chart reads secrets itself)."""

    name: str
    namespace: str
    chart: str
    chart_version: str | None = None
    values_files: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    image_tag_path: str = "image.tag"
    timeout_seconds: int = 300


def set_path(values: dict, path: str, value: Any) -> None:
    """values["a"]["b"] = value for path "a.b", creating mappings on the way."""
    *parents, last = path.split(".")
    node = values
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise HelmError(f"cannot set {path}: {key} is not a mapping")
    node[last] = value


def deep_merge(base: dict, extra: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else copy.deepcopy(value)
    return merged


def release_values(release: HelmRelease, image_tag: str, extra: dict | None = None) -> dict:
    """The values an upgrade to `image_tag` applies: files, then overrides, then the tag."""
    values: dict = {}
    for path in release.values_files:
        values = deep_merge(values, yaml.safe_load(Path(path).read_text()) or {})
    for path, value in release.overrides.items():
        set_path(values, path, value)
    set_path(values, release.image_tag_path, image_tag)
    return deep_merge(values, extra or {})


class HelmClient(Protocol):
    def upgrade(self, release: HelmRelease, values: dict, description: str, install: bool = False) -> dict: ...
    def history(self, release: HelmRelease) -> list[dict]: ...
    def rollback(self, release: HelmRelease, revision: int) -> None: ...
    def get_values(self, release: HelmRelease, revision: int | None = None) -> dict: ...
    def manifest(self, release: HelmRelease, revision: int | None = None) -> str: ...
    def status(self, release: HelmRelease) -> dict: ...
    def render(self, release: HelmRelease, values: dict) -> dict[str, str]: ...


class SdkHelm:
    """helm-python-sdk: Helm's own Go code in-process, talking to the cluster of `kubeconfig`."""

    def __init__(self, kubeconfig: str):
        import helm_python

        self.helm = helm_python
        self.kubeconfig = kubeconfig

    def _config(self, release: HelmRelease):
        return self.helm.Config(kubeconfig_path=self.kubeconfig, namespace=release.namespace)

    def _call(self, release: HelmRelease, what: str, call):
        config = self._config(release)
        try:
            return call(config)
        except self.helm.HelmError as error:
            raise HelmError(f"helm {what} of release {release.name} in {release.namespace}: {error}") from None
        finally:
            config.close()

    def upgrade(self, release: HelmRelease, values: dict, description: str, install: bool = False) -> dict:
        def run(config):
            action = config.install if install else config.upgrade
            return action(release.chart, release.name, values, timeout=release.timeout_seconds,
                          description=description, chart_version=release.chart_version)
        return self._call(release, "install" if install else "upgrade", run)

    def history(self, release: HelmRelease) -> list[dict]:
        return list(self._call(release, "history", lambda config: config.history(release.name)))

    def rollback(self, release: HelmRelease, revision: int) -> None:
        self._call(release, f"rollback to {revision}", lambda config: config.rollback(
            release.name, version=revision, timeout=release.timeout_seconds))

    def get_values(self, release: HelmRelease, revision: int | None = None) -> dict:
        return dict(self._call(release, "get values", lambda config: config.get_values(
            release.name, revision=revision)) or {})

    def manifest(self, release: HelmRelease, revision: int | None = None) -> str:
        return self._call(release, "get manifest", lambda config: config.get_all(
            release.name, revision=revision))["summary"]["manifest"]

    def status(self, release: HelmRelease) -> dict:
        found = self._call(release, "status", lambda config: config.status(release.name))
        return {key: found.get(key) for key in ("name", "namespace", "revision", "status", "app_version")}

    def render(self, release: HelmRelease, values: dict) -> dict[str, str]:
        chart = self.helm.Chart.load(release.chart)
        try:
            return dict(chart.render(values, name=release.name, namespace=release.namespace, is_upgrade=True))
        except self.helm.HelmError as error:
            raise HelmError(f"helm template of {release.chart} for release {release.name}: {error}") from None
        finally:
            chart.close()


class CliHelm:
    """The `helm` binary, with argument lists; values go through a temporary file, never argv."""

    def __init__(self, kubeconfig: str, binary: str = "helm"):
        self.kubeconfig, self.binary = kubeconfig, binary

    def argv(self, release: HelmRelease, *args: str) -> list[str]:
        return [self.binary, *args, "--namespace", release.namespace, "--kubeconfig", self.kubeconfig]

    def _run(self, argv: list[str], what: str, release: HelmRelease) -> str:
        result = subprocess.run(argv, capture_output=True, text=True, check=False,
                                timeout=release.timeout_seconds + 60, env=child_env(network=True, prefixes=("HELM_",)))
        if result.returncode != 0:
            raise HelmError(f"helm {what} of release {release.name} in {release.namespace} (exit "
                            f"{result.returncode}): {result.stderr.strip()[-1500:]}")
        return result.stdout

    def upgrade_argv(self, release: HelmRelease, values_file: str, description: str, install: bool) -> list[str]:
        argv = self.argv(release, "upgrade", release.name, release.chart, "--values", values_file,
                         "--timeout", f"{release.timeout_seconds}s", "--description", description,
                         "--output", "json")
        if install:
            argv.insert(2, "--install")
        if release.chart_version:
            argv += ["--version", release.chart_version]
        return argv

    def upgrade(self, release: HelmRelease, values: dict, description: str, install: bool = False) -> dict:
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
            yaml.safe_dump(values, handle)
            handle.flush()
            out = self._run(self.upgrade_argv(release, handle.name, description, install), "upgrade", release)
        return json.loads(out)

    def history(self, release: HelmRelease) -> list[dict]:
        return json.loads(self._run(self.argv(release, "history", release.name, "--output", "json"),
                                    "history", release))

    def rollback(self, release: HelmRelease, revision: int) -> None:
        self._run(self.argv(release, "rollback", release.name, str(revision), "--timeout",
                            f"{release.timeout_seconds}s"), f"rollback to {revision}", release)

    def get_values(self, release: HelmRelease, revision: int | None = None) -> dict:
        argv = self.argv(release, "get", "values", release.name, "--output", "json")
        return json.loads(self._run(argv + (["--revision", str(revision)] if revision else []),
                                    "get values", release)) or {}

    def manifest(self, release: HelmRelease, revision: int | None = None) -> str:
        argv = self.argv(release, "get", "manifest", release.name)
        return self._run(argv + (["--revision", str(revision)] if revision else []), "get manifest", release)

    def status(self, release: HelmRelease) -> dict:
        found = json.loads(self._run(self.argv(release, "status", release.name, "--output", "json"),
                                     "status", release))
        return {"name": found.get("name"), "namespace": found.get("namespace"), "revision": found.get("version"),
                "status": (found.get("info") or {}).get("status"),
                "app_version": ((found.get("chart") or {}).get("metadata") or {}).get("appVersion")}

    def render(self, release: HelmRelease, values: dict) -> dict[str, str]:
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
            yaml.safe_dump(values, handle)
            handle.flush()
            out = self._run(self.argv(release, "template", release.name, release.chart, "--values", handle.name,
                                      "--is-upgrade"), "template", release)
        documents, source = {}, "manifest"
        for part in out.split("\n---"):
            for line in part.splitlines():
                if line.startswith("# Source: "):
                    source = line.removeprefix("# Source: ").strip()
            documents[source] = documents.get(source, "") + part
        return documents


def helm_client(kubeconfig: str, backend: str = "auto") -> HelmClient:
    """The SDK when installed (or asked for), else the CLI on PATH; a clear error when neither is there."""
    if backend in ("auto", "sdk"):
        try:
            return SdkHelm(kubeconfig)
        except ImportError:
            if backend == "sdk":
                raise HelmError("driver.helm_backend is sdk but helm-python-sdk is not installed") from None
    if shutil.which("helm"):
        return CliHelm(kubeconfig)
    raise HelmError("no Helm available on this worker: install helm-python-sdk (pip) or put the helm CLI on PATH")
