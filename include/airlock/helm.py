"""Helm, behind one interface with two backends.

- `SdkHelm`: the Helm v4 Go SDK through `helm-python-sdk` (import `helm_python`), one child process
  per call (see `airlock.helm_sdk`); the default when it is installed.
- `CliHelm`: the `helm` CLI on the worker's PATH, called with argument lists (never a shell).

Both take the same `HelmRelease` (what a target declares) and the same values: the chart's values
files merged in order, then `set` overrides (dotted paths), then the image tag at its path.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
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
    image_tag: str = "{version}"

    def tag(self, version: str) -> str:
        """The image tag of `version` in this chart's convention (`v3.17.2`, `3.17.2-slim`, …)."""
        return self.image_tag.replace("{version}", version)


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


def release_values(release: HelmRelease, version: str, extra: dict | None = None) -> dict:
    """The values an upgrade to `version` applies: files, then overrides, then the version's tag."""
    values: dict = {}
    for path in release.values_files:
        values = deep_merge(values, yaml.safe_load(Path(path).read_text()) or {})
    for path, value in release.overrides.items():
        set_path(values, path, value)
    set_path(values, release.image_tag_path, release.tag(version))
    return deep_merge(values, extra or {})


class HelmClient(Protocol):
    def upgrade(self, release: HelmRelease, values: dict, description: str, install: bool = False) -> dict: ...
    def history(self, release: HelmRelease) -> list[dict]: ...
    def rollback(self, release: HelmRelease, revision: int) -> None: ...
    def get_values(self, release: HelmRelease, revision: int | None = None) -> dict: ...
    def manifest(self, release: HelmRelease, revision: int | None = None) -> str: ...
    def status(self, release: HelmRelease) -> dict: ...
    def render(self, release: HelmRelease, values: dict) -> dict[str, str]: ...


HELM_GRACE_SECONDS = 60
"""How much longer than the release's `timeout_seconds` a Helm process may take (its own waits end first)."""


def run_helm(argv: list[str], label: str, release: HelmRelease, **kwargs: Any) -> subprocess.CompletedProcess:
    """A Helm process with the release's time limit; one that outlives it is stopped and reported as
    what it was doing."""
    limit = release.timeout_seconds + HELM_GRACE_SECONDS
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=limit, **kwargs)
    except subprocess.TimeoutExpired:
        raise HelmError(f"{label}: no answer within {limit} s (timeout_seconds + {HELM_GRACE_SECONDS}), so it was "
                        f"stopped. Check "
                        f"`helm history {release.name} -n {release.namespace}`: a revision left pending must be "
                        "rolled back before the next try") from None


def sdk_answer(done: subprocess.CompletedProcess) -> dict:
    """The SDK process's JSON answer (its last line), or an error that says what came instead."""
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": f"the Helm SDK process exited {done.returncode}: {done.stderr.strip()[-1500:]}"}
    try:
        return json.loads(lines[-1])
    except ValueError:
        return {"error": f"the Helm SDK process answered no JSON: {lines[-1][-500:]!r}"}


class SdkHelm:
    """helm-python-sdk: Helm's own Go code, run by `airlock.helm_sdk` in a child process named `helm`
    (so its field manager is the CLI's), talking to the cluster of `kubeconfig`."""

    def __init__(self, kubeconfig: str):
        if importlib.util.find_spec("helm_python") is None:
            raise ImportError("helm-python-sdk is not installed")
        self.kubeconfig = kubeconfig

    def _call(self, release: HelmRelease, what: str, op: str, **args: Any) -> Any:
        request = {"op": op, "kubeconfig": self.kubeconfig, "args": {
            "name": release.name, "namespace": release.namespace, "chart": release.chart,
            "timeout": release.timeout_seconds, **args}}
        package_root = str(Path(__file__).resolve().parents[1])
        label = f"helm {what} release {release.name} in {release.namespace}"
        done = run_helm([str(Path(sys.executable).parent / "helm"), "-m", "airlock.helm_sdk"], label, release,
                        executable=sys.executable, input=json.dumps(request),
                        env=child_env({"PYTHONPATH": package_root}, network=True, prefixes=("HELM_",)))
        answer = sdk_answer(done)
        if "error" in answer:
            raise HelmError(f"{label}: {answer['error']}")
        return answer["result"]

    def upgrade(self, release: HelmRelease, values: dict, description: str, install: bool = False) -> dict:
        return self._call(release, "install of" if install else "upgrade of", "upgrade", values=values,
                          description=description, install=install, chart_version=release.chart_version)

    def history(self, release: HelmRelease) -> list[dict]:
        return self._call(release, "history of", "history")

    def rollback(self, release: HelmRelease, revision: int) -> None:
        self._call(release, f"rollback to {revision} of", "rollback", revision=revision)

    def get_values(self, release: HelmRelease, revision: int | None = None) -> dict:
        return self._call(release, "get values of", "get_values", revision=revision)

    def manifest(self, release: HelmRelease, revision: int | None = None) -> str:
        return self._call(release, "get manifest of", "manifest", revision=revision)

    def status(self, release: HelmRelease) -> dict:
        found = self._call(release, "status of", "status")
        return {key: found.get(key) for key in ("name", "namespace", "revision", "status", "app_version")}

    def render(self, release: HelmRelease, values: dict) -> dict[str, str]:
        return self._call(release, f"template of {release.chart} for", "render", values=values)


class CliHelm:
    """The `helm` binary, with argument lists; values go through a temporary file, never argv."""

    def __init__(self, kubeconfig: str, binary: str = "helm"):
        self.kubeconfig, self.binary = kubeconfig, binary

    def argv(self, release: HelmRelease, *args: str) -> list[str]:
        return [self.binary, *args, "--namespace", release.namespace, "--kubeconfig", self.kubeconfig]

    def _run(self, argv: list[str], what: str, release: HelmRelease) -> str:
        label = f"helm {what} of release {release.name} in {release.namespace}"
        result = run_helm(argv, label, release, env=child_env(network=True, prefixes=("HELM_",)))
        if result.returncode != 0:
            raise HelmError(f"{label} (exit {result.returncode}): {result.stderr.strip()[-1500:]}")
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
