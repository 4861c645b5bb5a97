"""The Kubernetes calls a Helm deployment needs: scale, rollout state, migration Jobs and their logs.

Credentials come from the Airflow Kubernetes connection (through the cncf provider's
KubernetesHook, at run time only); Helm gets the same cluster through a kubeconfig file.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass

import yaml


class KubeError(RuntimeError):
    """A Kubernetes call failed or a workload did not become what was asked; the message says which."""


def kube_config_of(conn_id: str) -> str | dict:
    """The connection's `kube_config_path`, or its inline `kube_config` as a mapping (kept in memory)."""
    from airflow.sdk import BaseHook

    extra = BaseHook.get_connection(conn_id).extra_dejson
    path = extra.get("kube_config_path") or extra.get("extra__kubernetes__kube_config_path")
    if path:
        return path
    inline = extra.get("kube_config") or extra.get("extra__kubernetes__kube_config")
    if not inline:
        raise KubeError(f"Airflow connection {conn_id} has neither kube_config_path nor kube_config "
                        "(in-cluster workers: set kube_config_path to a kubeconfig for the service account)")
    loaded = yaml.safe_load(inline) if isinstance(inline, str) else inline
    if not isinstance(loaded, dict):
        raise KubeError(f"Airflow connection {conn_id}: kube_config is not a kubeconfig mapping")
    return loaded


_WRITTEN: dict[str, str] = {}
"""Inline kubeconfigs written for Helm in this process, by content digest: one file each, however
many times a task or the triggerer asks, removed when the process ends."""


def kubeconfig_for(conn_id: str) -> str:
    """A kubeconfig path for tools that need a file (Helm): the connection's own path, or its inline
    kubeconfig written once per process, owner-only, in a private directory removed at exit."""
    found = kube_config_of(conn_id)
    if isinstance(found, str):
        return found
    text = yaml.safe_dump(found)
    digest = hashlib.sha256(text.encode()).hexdigest()
    if digest not in _WRITTEN or not os.path.exists(_WRITTEN[digest]):
        folder = tempfile.mkdtemp(prefix="airlock-kubeconfig-")  # 0700
        path = os.path.join(folder, "config.yaml")
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(handle, "w") as file:
            file.write(text)
        if not _WRITTEN:
            atexit.register(remove_written_kubeconfigs)
        _WRITTEN[digest] = path
    return _WRITTEN[digest]


def remove_written_kubeconfigs() -> None:
    for path in _WRITTEN.values():
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    _WRITTEN.clear()


def kube_for(conn_id: str) -> Kube:
    """Kubernetes clients for the connection; an inline kubeconfig never touches the disk."""
    return Kube(kube_config_of(conn_id))


@dataclass(frozen=True)
class Rollout:
    generation: int
    observed_generation: int
    replicas: int
    updated: int
    ready: int
    available: int
    image: str

    @property
    def done(self) -> bool:
        """The controller saw the newest spec and every wanted replica runs it and is available."""
        return (self.observed_generation >= self.generation and self.updated == self.replicas
                and self.available == self.replicas and self.ready == self.replicas)

    def describe(self) -> str:
        return (f"image {self.image}, {self.available}/{self.replicas} available, {self.updated} updated, "
                f"generation {self.generation} (observed {self.observed_generation})")


class Kube:
    """Apps, batch and core calls on one cluster."""

    def __init__(self, kubeconfig: str | dict):
        from kubernetes import client, config

        api = (config.new_client_from_config_dict(kubeconfig) if isinstance(kubeconfig, dict)
               else config.new_client_from_config(config_file=kubeconfig))
        self.apps, self.batch, self.core = client.AppsV1Api(api), client.BatchV1Api(api), client.CoreV1Api(api)
        self.autoscaling = client.AutoscalingV1Api(api)
        self.errors = client.exceptions.ApiException

    def _call(self, what: str, call, *args, ignore: tuple[int, ...] = (), **kwargs):
        """The call's result; None for a status in `ignore` (404 on a delete, 409 on a create that a
        retry finds done); any other API error as a KubeError that says what was being done."""
        try:
            return call(*args, **kwargs)
        except self.errors as error:
            if error.status in ignore:
                return None
            raise KubeError(f"{what}: HTTP {error.status} {error.reason}: {(error.body or '')[:300]}") from None

    # -- deployments ---------------------------------------------------------------------------
    def rollout(self, namespace: str, name: str) -> Rollout:
        found = self._call(f"read deployment {namespace}/{name}", self.apps.read_namespaced_deployment, name, namespace)
        status = found.status
        return Rollout(generation=found.metadata.generation or 0,
                       observed_generation=status.observed_generation or 0,
                       replicas=found.spec.replicas or 0, updated=status.updated_replicas or 0,
                       ready=status.ready_replicas or 0, available=status.available_replicas or 0,
                       image=found.spec.template.spec.containers[0].image)

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        self._call(f"scale deployment {namespace}/{name} to {replicas}", self.apps.patch_namespaced_deployment_scale,
                   name, namespace, {"spec": {"replicas": replicas}})

    def pod_labels(self, namespace: str, name: str) -> dict | None:
        """The labels of a Deployment's pods (what a Service selects), None when it does not exist."""
        try:
            found = self.apps.read_namespaced_deployment(name, namespace)
        except self.errors as error:
            if error.status == 404:
                return None
            raise KubeError(f"read deployment {namespace}/{name}: HTTP {error.status}") from None
        return found.spec.template.metadata.labels or {}

    def replicas(self, namespace: str, name: str) -> int:
        return self._call(f"read deployment {namespace}/{name}", self.apps.read_namespaced_deployment,
                          name, namespace).spec.replicas or 0

    def selector(self, namespace: str, service: str) -> dict:
        return self._call(f"read service {namespace}/{service}", self.core.read_namespaced_service,
                          service, namespace).spec.selector or {}

    def set_selector(self, namespace: str, service: str, selector: dict) -> None:
        self._call(f"switch service {namespace}/{service}", self.core.patch_namespaced_service, service, namespace,
                   {"spec": {"selector": selector}})

    # -- autoscalers ---------------------------------------------------------------------------
    def autoscalers(self, namespace: str, deployment: str) -> list[dict]:
        """The HorizontalPodAutoscalers that scale the Deployment, as manifests to create them again."""
        found = self._call(f"list horizontalpodautoscalers in {namespace}",
                           self.autoscaling.list_namespaced_horizontal_pod_autoscaler, namespace).items
        api = self.autoscaling.api_client
        return [{"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
                 "metadata": {"name": hpa.metadata.name, "labels": hpa.metadata.labels or {},
                              "annotations": hpa.metadata.annotations or {}},
                 "spec": api.sanitize_for_serialization(hpa.spec)}
                for hpa in found if (hpa.spec.scale_target_ref.kind, hpa.spec.scale_target_ref.name) ==
                ("Deployment", deployment)]

    def delete_autoscaler(self, namespace: str, name: str) -> None:
        self._call(f"delete horizontalpodautoscaler {namespace}/{name}",
                   self.autoscaling.delete_namespaced_horizontal_pod_autoscaler, name, namespace, ignore=(404,))

    def ensure_autoscaler(self, namespace: str, manifest: dict) -> bool:
        """Create the HPA unless it exists (the chart put it back); True when it was created here."""
        return self._call(f"create horizontalpodautoscaler {namespace}/{manifest['metadata']['name']}",
                          self.autoscaling.create_namespaced_horizontal_pod_autoscaler, namespace, manifest,
                          ignore=(409,)) is not None

    # -- jobs ----------------------------------------------------------------------------------
    def create_job(self, namespace: str, manifest: dict) -> str:
        """Create the Job unless one of that name exists already (a retried task); return its name."""
        name = manifest["metadata"]["name"]
        self._call(f"create job {namespace}/{name}", self.batch.create_namespaced_job, namespace, manifest,
                   ignore=(409,))
        return name

    def job_state(self, namespace: str, name: str) -> str:
        """succeeded, failed or running."""
        job = self._call(f"read job {namespace}/{name}", self.batch.read_namespaced_job, name, namespace)
        status = job.status
        conditions = {c.type: c.status for c in status.conditions or []}
        if conditions.get("Complete") == "True" or (status.succeeded or 0) > 0:
            return "succeeded"
        if conditions.get("Failed") == "True" or (status.failed or 0) > 0:
            return "failed"
        return "running"

    def unfinished_jobs(self, namespace: str, prefix: str) -> list[str]:
        jobs = self._call(f"list jobs in {namespace}", self.batch.list_namespaced_job, namespace).items
        return [job.metadata.name for job in jobs if job.metadata.name.startswith(prefix)
                and self.job_state(namespace, job.metadata.name) == "running"]

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and its pods (a migration must not go on writing while a backup is restored)."""
        self._call(f"delete job {namespace}/{name}", self.batch.delete_namespaced_job, name, namespace,
                   propagation_policy="Foreground", ignore=(404,))

    def job_exists(self, namespace: str, name: str) -> bool:
        try:
            self.batch.read_namespaced_job(name, namespace)
        except self.errors as error:
            if error.status == 404:
                return False
            raise KubeError(f"read job {namespace}/{name}: HTTP {error.status}") from None
        return True

    def job_image(self, namespace: str, name: str) -> str:
        job = self._call(f"read job {namespace}/{name}", self.batch.read_namespaced_job, name, namespace)
        return job.spec.template.spec.containers[0].image

    def job_logs(self, namespace: str, name: str, lines: int = 200) -> str:
        """The logs of the Job's pods (what the migration printed), for the task log."""
        pods = self._call(f"list pods of job {name}", self.core.list_namespaced_pod, namespace,
                          label_selector=f"job-name={name}").items
        texts = []
        for pod in pods:
            try:
                texts.append(self.pod_log(namespace, pod.metadata.name, lines))
            except self.errors as error:
                texts.append(f"(no log from pod {pod.metadata.name}: HTTP {error.status})")
        return "\n".join(texts) or f"(job {name} has no pods with logs)"

    def pod_log(self, namespace: str, pod: str, lines: int) -> str:
        """The log as text: the body read raw and decoded here (the kubernetes client we pin, 36,
        decodes it as `str(bytes)`, one line "b'...'")."""
        response = self.core.read_namespaced_pod_log(pod, namespace, tail_lines=lines, _preload_content=False)
        return response.data.decode("utf-8", errors="replace")
