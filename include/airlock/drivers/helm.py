"""Deploys one environment's server as a Helm release on Kubernetes.

The MLflow guide's method 1, in the order its users ask for: stop = scale the server Deployment to
zero (no writes during the backup); migrate = the chart's own migration Job, rendered with the NEW
image and run before the release changes (a failed Job stops the upgrade with the release
untouched); start = `helm upgrade` to the new image tag and wait for the rollout; starting the old
version again = `helm rollback` to the revision recorded before the upgrade.

The vendors' conventions: a chart that migrates in its own pre-upgrade hook Job (`migration: hook`,
ZenML's chart) is migrated by `helm upgrade` itself, its Job's logs read while it runs (Helm deletes
it on success); a HorizontalPodAutoscaler on the server is held (removed, its manifest kept in the
marker) while the server is frozen, and such a chart leaves `replicas` out, so the replica count
recorded before the upgrade is put back after `helm upgrade`/`helm rollback`.

Client-side work (the migration rehearsal on a scratch copy, the artifact check) runs in local
virtualenvs of the same platform version, like the process driver.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from airlock.config import EnvironmentConfig
from airlock.databases.base import Database
from airlock.drivers.process import DriverError, ProcessDriver, serving_wait
from airlock.helm import HelmClient, HelmError, HelmRelease, helm_client, release_values
from airlock.kube import Kube, KubeError, kube_for, kubeconfig_for
from airlock.platforms.base import PlatformAdapter
from airlock.redaction import MARK, redact_structure, redact_text
from airlock.waits import Wait, WaitFailed, Waiting, run_waits


def manifest_without_secrets(manifest: str, secrets: list[str]) -> str:
    """The release manifest with the data of every Secret dropped and every other secret-looking
    value (a Deployment's env, a ConfigMap's connection string) masked."""
    documents = []
    for document in yaml.safe_load_all(manifest):
        if isinstance(document, dict) and document.get("kind") == "Secret":
            document = {**document, "data": MARK, "stringData": MARK}
        if document:
            documents.append(redact_structure(document, secrets))
    return yaml.safe_dump_all(documents)


def image_tag(values: dict, path: str) -> str | None:
    node: object = values
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return str(node)


def migration_job_name(base: str, version: str, attempt: int) -> str:
    """<job>-<version>-a<attempt>, within Kubernetes' 63 characters (the base is shortened, never the
    part that makes it unique)."""
    tail = f"-{version.replace('.', '-')}-a{attempt}".lower()
    return base[:63 - len(tail)].rstrip("-") + tail


class HelmDriver:
    """The same interface as ProcessDriver, for a server deployed by a Helm chart."""


    def __init__(self, env: EnvironmentConfig, adapter: PlatformAdapter, database: Database,
                 helm: HelmClient | None = None, kube: Kube | None = None):
        self.env, self.adapter, self.database = env, adapter, database
        self.config = env.driver.helm
        self.release = HelmRelease(self.config.release, self.config.namespace, self.config.chart,
                                   self.config.chart_version, self.config.values_files, self.config.overrides,
                                   self.config.image_tag_path, int(self.config.timeout_seconds),
                                   self.config.image_tag)
        self.local = ProcessDriver(env, adapter, database)
        self._helm, self._kube = helm, kube

    # -- clients (connections are looked up only when used) ------------------------------------
    def kubeconfig(self) -> str:
        return kubeconfig_for(self.config.kubernetes_conn_id)

    @property
    def helm(self) -> HelmClient:
        if self._helm is None:
            self._helm = helm_client(self.kubeconfig(), self.config.backend)
        return self._helm

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            self._kube = kube_for(self.config.kubernetes_conn_id)
        return self._kube

    # -- what the steps call -------------------------------------------------------------------
    def ensure_installed(self, version: str) -> Path:
        """The version's client in a local virtualenv (rehearsal, artifact check); the cluster
        pulls the server image itself."""
        return self.local.ensure_installed(version)

    def venv_path(self, version: str) -> Path:
        return self.local.venv_path(version)

    # -- blue-green: which release serves, which one the upgrade goes to ------------------------
    def live_index(self) -> int:
        """0 (`release`) or 1 (the green release): the one whose pods the Service selects."""
        if self.config.method != "blue-green":
            return 0
        selector = self.kube.selector(self.release.namespace, self.config.service)
        green = self.kube.pod_labels(self.release.namespace, self.config.deployments[1])
        return 1 if green and selector and selector.items() <= green.items() else 0

    def target_index(self) -> int:
        """Where the new version goes: the same release (rolling), or the idle one (blue-green)."""
        live = self.live_index()
        return 1 - live if self.config.method == "blue-green" else live

    def release_at(self, index: int) -> HelmRelease:
        return dataclasses.replace(self.release, name=self.config.releases[index])

    def deployed(self) -> dict:
        live = self.release_at(self.live_index())
        status = self.helm.status(live)
        values = self.helm.get_values(live)
        return {**status, "image_tag": image_tag(values, self.release.image_tag_path)}

    def configuration(self) -> dict:
        """Revision, values and manifest of the serving release, secrets left out (for the backup set)."""
        live = self.release_at(self.live_index())
        return {"driver": "helm", "method": self.config.method, "url": self.env.url, "release": live.name,
                "namespace": live.namespace, "chart": live.chart, "chart_version": live.chart_version,
                **self.deployed(), "values": redact_structure(self.helm.get_values(live), self.database.secrets()),
                "manifest": manifest_without_secrets(self.helm.manifest(live), self.database.secrets()),
                "database": self.database.describe()}

    def snapshot(self) -> dict:
        """What a rollback needs to bring this deployment back: the serving release's revision and,
        for blue-green, which release served, with how many replicas, under which selector."""
        live = self.live_index()
        deployed, namespace, deployment = self.deployed(), self.release.namespace, self.config.deployments[live]
        state = {"revision": deployed["revision"], "image_tag": deployed["image_tag"], "method": self.config.method,
                 "replicas": self.kube.replicas(namespace, deployment),
                 "autoscalers": self.kube.autoscalers(namespace, deployment)}
        if self.config.method == "blue-green":
            state.update(live=live, selector=self.kube.selector(namespace, self.config.service))
        return state

    def stop(self, state: dict | None = None) -> Waiting:
        """Scale the server Deployment to zero (blue-green: both releases' Deployments, since a green
        that came up but was never switched to still writes) and wait until no replica is left, and
        stop any migration Job still running (a rollback restores the database next: nothing may write).
        Both waits are handed to the triggerer. The HPAs held are those removed now and those `state`
        (the marker's snapshot) recorded: the run after a wait finds them already removed."""
        started = time.monotonic()
        namespace = self.release.namespace
        deployments = [name for name in dict.fromkeys(self.config.deployments)
                       if self.config.method == "blue-green" and self.kube.pod_labels(namespace, name) is not None
                       ] or [self.config.deployment]
        recorded = [autoscaler["metadata"]["name"] for autoscaler in (state or {}).get("autoscalers") or []]
        held = list(dict.fromkeys([*recorded, *self.hold_autoscalers(deployments)]))
        for deployment in deployments:
            self.kube.scale(namespace, deployment, 0)
        yield self.kube_wait(f"{self.env.name}: no replica left of {', '.join(deployments)} in {namespace}",
                             "scaled_to_zero_check", {"deployments": deployments},
                             self.env.driver.start_timeout_seconds)
        stopped_jobs = self.kube.unfinished_jobs(self.release.namespace, self.migration_job_prefix())
        for name in stopped_jobs:
            self.kube.delete_job(self.release.namespace, name)
        if stopped_jobs:
            yield self.kube_wait(f"{self.env.name}: migration job(s) {', '.join(stopped_jobs)} gone after deletion",
                                 "jobs_gone_check", {"jobs": stopped_jobs}, self.release.timeout_seconds,
                                 hint="Check them before restoring the database")
        return {"stopped": True, "deployments": deployments, "autoscalers_held": held,
                "migration_jobs_stopped": stopped_jobs, "seconds": round(time.monotonic() - started, 3)}

    def migration_job_prefix(self) -> str:
        """Airlock's Jobs are `<migration_job>-<version>-a<attempt>`; a hook Job has the chart's name."""
        return self.config.migration_job if self.config.migration == "hook" else f"{self.config.migration_job}-"

    def hold_autoscalers(self, deployments: list[str]) -> list[str]:
        """Remove the HPAs that scale the server while it is frozen, so that nothing brings a replica
        back during the backup (the snapshot in the marker keeps their manifests; `helm upgrade` or
        `helm rollback` re-creates them, `unfreeze` too if the chart did not)."""
        namespace, held = self.release.namespace, []
        for deployment in deployments:
            for autoscaler in self.kube.autoscalers(namespace, deployment):
                self.kube.delete_autoscaler(namespace, autoscaler["metadata"]["name"])
                held.append(autoscaler["metadata"]["name"])
        return held

    def unfreeze(self, deployment: str, state: dict) -> dict:
        """After `helm upgrade`/`rollback`: a chart with an HPA leaves `replicas` out, so the Deployment
        stays at the zero Airlock scaled it to; put back the count recorded before the upgrade, and
        any held HPA the chart did not re-create."""
        namespace, result = self.release.namespace, {}
        if self.kube.replicas(namespace, deployment) == 0:
            replicas = max(1, int(state.get("replicas") or 1))
            self.kube.scale(namespace, deployment, replicas)
            result["replicas_restored"] = replicas
        restored = [hpa["metadata"]["name"] for hpa in state.get("autoscalers") or []
                    if self.kube.ensure_autoscaler(namespace, hpa)]
        return {**result, **({"autoscalers_recreated": restored} if restored else {})}

    def migrate(self, version: str, database: Database) -> dict:
        """A rehearsal on a scratch copy, in a local virtualenv of the version. (The environment's
        own database is migrated by the chart's Job: `launch_migration` and the DAG's sensor.)"""
        return self.local.migrate(version, database)

    def launch_migration(self, version: str, attempt: int = 1) -> dict:
        """Create the migration Job (idempotent per attempt: a retry finds its Job, a re-run after a
        rollback makes a new one and so migrates again) and return at once: a sensor waits for it.
        A chart that migrates in a hook does it during `helm upgrade` (the start step) instead."""
        if self.config.migration == "hook":
            return {"job": None, "skipped": f"the chart migrates in its pre-upgrade hook Job "
                                            f"{self.config.migration_job}, run by helm upgrade at start"}
        job = self.migration_job(version, attempt)
        name = self.kube.create_job(self.release.namespace, job)
        return {"job": name, "namespace": self.release.namespace, "image": job["spec"]["template"]["spec"][
            "containers"][0]["image"], "deferred": True}

    def migration_job(self, version: str, attempt: int = 1) -> dict:
        """The chart's Job, rendered with the new image tag and `migration_values`, named for the
        version and the attempt."""
        values = release_values(self.release, version, self.config.migration_values)
        for text in self.helm.render(self.release, values).values():
            for document in yaml.safe_load_all(text):
                if isinstance(document, dict) and document.get("kind") == "Job" and \
                        document["metadata"]["name"] == self.config.migration_job:
                    document["metadata"]["name"] = migration_job_name(self.config.migration_job, version, attempt)
                    return document
        raise DriverError(f"{self.env.name}: chart {self.release.chart} renders no Job named "
                          f"{self.config.migration_job} with {self.config.migration_values}")

    def start(self, version: str, state: dict | None = None) -> dict:
        """Serve `version`, waiting in this process (outside the DAG)."""
        return run_waits(self.roll_out(version, state))

    def roll_out(self, version: str, state: dict | None = None) -> Waiting:
        """`launch`, then wait for the rollout, switch (blue-green) and wait for the server to answer."""
        started = time.monotonic()
        launched = self.launch(version, state)
        yield self.rollout_wait(launched["deployment"], version)
        switched = yield from self.switch(version)
        yield serving_wait(self.env, self.adapter, version)
        return {**launched, "switch": switched, "seconds_to_healthy": round(time.monotonic() - started, 3)}

    def launch(self, version: str, state: dict | None = None) -> dict:
        """`helm upgrade` (of the idle release, for blue-green: installed the first time) to the
        version's image tag, with the target's values files and overrides, then `unfreeze` with the
        `snapshot` state; returns at once, a deferrable sensor waits for the rollout of the returned
        Deployment. (A chart's migration hook runs inside `helm upgrade`, which waits for it.)"""
        index = self.target_index()
        release, deployment = self.release_at(index), self.config.deployments[index]
        first = index == 1 and not self.has_history(release)
        hook = self.upgrade(release, version, first)
        return {"version": version, "action": f"{'installed' if first else 'upgraded'} {release.name} at {version}",
                **self.helm.status(release), **hook, **self.unfreeze(deployment, state or {}),
                "deployment": deployment, "deferred": True}

    def upgrade(self, release: HelmRelease, version: str, install: bool) -> dict:
        """`helm upgrade`; for a chart that migrates in a hook, with the hook Job's logs read while
        Helm waits for it (Helm deletes the Job once it succeeded)."""
        def run() -> None:
            self.helm.upgrade(release, release_values(release, version), description=f"airlock: upgrade to {version}",
                              install=install)

        if self.config.migration != "hook":
            try:
                run()
            except HelmError as error:
                raise DriverError(f"{self.env.name}: {error}") from None
            return {}
        logs = ""
        with ThreadPoolExecutor(1) as pool:
            upgrading = pool.submit(run)
            while not upgrading.done():
                logs = self.hook_logs(logs)
                time.sleep(0.5)
            logs = redact_text(self.hook_logs(logs), self.database.secrets())
        print(f"--- logs of the chart's migration hook job {self.config.migration_job} ---\n{logs or '(none)'}")
        error = upgrading.exception()
        if error is None:
            return {"migration_hook": {"job": self.config.migration_job, "output_tail": logs[-1000:]}}
        if not isinstance(error, HelmError):
            raise error  # a fault of Airlock's own, not Helm's answer: shown as it is
        job = f"{release.namespace}/{self.config.migration_job}"
        what = (f"the chart's migration hook Job {job} failed, so Helm left {release.name} on the revision that "
                "served before" if self.hook_failed() else
                f"helm upgrade of {release.name} failed after its migration hook Job {job} ran or while it ran "
                "(the database may be migrated and the release part-applied)")
        raise DriverError(f"{self.env.name}: {what} ({error}). The rollback restores the database and rolls the "
                          f"release back to the recorded revision. The hook's logs:\n"
                          f"{logs[-3000:] or '(none were readable)'}") from None

    def hook_failed(self) -> bool:
        """The hook Job is still there and failed (Helm deletes it only when it succeeded)."""
        namespace, name = self.release.namespace, self.config.migration_job
        try:
            return self.kube.job_exists(namespace, name) and self.kube.job_state(namespace, name) == "failed"
        except KubeError:
            return False

    def hook_logs(self, known: str) -> str:
        """The hook Job's Pod logs if it has any now (its Pods outlive the Job Helm deletes by a
        moment), else what was read before."""
        try:
            text = self.kube.job_logs(self.release.namespace, self.config.migration_job)
        except KubeError:
            return known
        unreadable = text.startswith((f"(job {self.config.migration_job} has no pods", "(no log from pod "))
        return known if unreadable else text

    def has_history(self, release: HelmRelease) -> bool:
        try:
            return bool(self.helm.history(release))
        except HelmError:
            return False

    def switch(self, version: str) -> Waiting:
        """Blue-green: once the idle release serves `version` healthily on its own URL (a wait for the
        triggerer), point the Service at it. Rolling: nothing to switch."""
        if self.config.method != "blue-green":
            return {"skipped": "rolling upgrade: nothing to switch"}
        live, target = self.live_index(), self.target_index()
        if live == target:
            return {"skipped": "already switched"}
        name = self.config.releases[target]
        try:
            yield serving_wait(self.env, self.adapter, version, self.config.release_urls[name], check_version=True)
        except WaitFailed as failure:
            raise DriverError(f"{failure}; the Service {self.config.service} still points at "
                              f"{self.config.releases[live]}") from None
        labels = self.kube.pod_labels(self.release.namespace, self.config.deployments[target]) or {}
        selector = {key: labels[key] for key in self.kube.selector(self.release.namespace, self.config.service)
                    if key in labels}
        self.kube.set_selector(self.release.namespace, self.config.service, selector)
        return {"from": self.config.releases[live], "to": name, "selector": selector,
                "kept_for_switch_back": f"{self.config.releases[live]} (scaled to zero)"}

    def restore(self, version: str, state: dict) -> Waiting:
        """Bring back what served before the upgrade (`snapshot`): blue-green switches the Service
        back to the old release and scales it up again; rolling rolls back to the recorded revision."""
        started = time.monotonic()
        namespace = self.release.namespace
        if state.get("method") == "blue-green":
            old, other = self.config.deployments[state["live"]], self.config.deployments[1 - state["live"]]
            if self.kube.pod_labels(namespace, other) is not None:
                self.kube.scale(namespace, other, 0)
            self.kube.set_selector(namespace, self.config.service, state["selector"])
            action, deployment = f"switched back to {self.config.releases[state['live']]}", old
        elif state.get("revision"):
            try:
                self.helm.rollback(self.release, int(state["revision"]))
            except HelmError as error:
                raise DriverError(f"{self.env.name}: {error}") from None
            action, deployment = f"rolled back to revision {state['revision']}", self.config.deployment
        else:
            return (yield from self.roll_out(version, state))
        unfrozen = self.unfreeze(deployment, state)
        yield self.rollout_wait(deployment, version)
        yield serving_wait(self.env, self.adapter, version)
        return {"version": version, "action": action, **unfrozen,
                "seconds_to_healthy": round(time.monotonic() - started, 3)}

    def rollout_wait(self, deployment: str, version: str) -> Wait:
        return self.kube_wait(f"{self.env.name}: deployment {self.release.namespace}/{deployment} rolled out with "
                              f"{version}", "rollout_check",
                              {"deployment": deployment, "image_tag": self.release.tag(version)},
                              self.env.driver.start_timeout_seconds)

    def kube_wait(self, what: str, check: str, kwargs: dict, timeout: float, hint: str = "") -> Wait:
        """A wait on this release's namespace, polled by one of this module's checks."""
        return Wait(what=what, check=f"airlock.drivers.helm:{check}", timeout_seconds=timeout, poll_interval=2,
                    kwargs={"conn_id": self.config.kubernetes_conn_id, "namespace": self.release.namespace, **kwargs},
                    hint=hint)



def job_check(conn_id: str, namespace: str, name: str) -> dict:
    """Done when the migration Job finished (either way); with its logs for the task log."""
    kube = kube_for(conn_id)
    state = kube.job_state(namespace, name)
    if state == "running":
        return {"done": False, "state": state, "job": name, "progress": f"migration job {namespace}/{name} running"}
    return {"done": True, "state": state, "job": name, "namespace": namespace,
            "image": kube.job_image(namespace, name), "logs": redact_text(kube.job_logs(namespace, name)[-4000:])}


def finished_job(environment: str, check: dict) -> dict:
    """The migration's result; a Job that did not succeed stops the upgrade before the release changes.
    Its logs are masked again here, where they reach the task log and XCom."""
    check = {**check, "logs": redact_text(check.get("logs") or "")}
    print(f"--- logs of migration job {check['job']} ---\n{check.get('logs', '(none yet)')}")
    if check["state"] != "succeeded":
        state = check["state"] if check["state"] != "running" else "did not finish in time"
        raise DriverError(f"{environment}: migration job {check.get('namespace', '')}/{check['job']} with image "
                          f"{check.get('image', '?')} {state}; the release was not changed. Its logs:\n"
                          f"{check.get('logs', '')[-3000:]}")
    return {"job": check["job"], "image": check["image"], "output_tail": check["logs"][-1000:]}


def rolled_out(tag: str):
    """Every replica of the Deployment runs the image tagged `tag` and is available."""
    return lambda rollout: rollout.done and rollout.replicas > 0 and rollout.image.endswith(f":{tag}")


def rollout_check(conn_id: str, namespace: str, deployment: str, image_tag: str) -> dict:
    """Done when every replica of the Deployment runs `image_tag` and is available."""
    rollout = kube_for(conn_id).rollout(namespace, deployment)
    return {"done": rolled_out(image_tag)(rollout), "rollout": rollout.describe(), "progress": rollout.describe()}


def scaled_to_zero_check(conn_id: str, namespace: str, deployments: list[str]) -> dict:
    """Done when no replica of the Deployments is left (none ready, none available)."""
    kube = kube_for(conn_id)
    left = {name: rollout.describe() for name in deployments
            if (rollout := kube.rollout(namespace, name)).available or rollout.ready}
    return {"done": not left, "still_running": left}


def jobs_gone_check(conn_id: str, namespace: str, jobs: list[str]) -> dict:
    """Done when none of the (deleted) Jobs exists any more."""
    kube = kube_for(conn_id)
    left = [name for name in jobs if kube.job_exists(namespace, name)]
    return {"done": not left, "still_there": left}
