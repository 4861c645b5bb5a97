"""A "process kubelet" for a controller-less API server: it plays the Deployment controller, the
Job controller and the kubelet for the servers Airlock upgrades.

- A Deployment asking for replicas with image tag X: the real platform server of version X runs as
  a local process on the environment's port (its Service URL in the tests), and the Deployment's
  status says ready once it answers. Replicas 0: the process stops and the status says so.
- A Job: its image tag's migration runs for real against the environment's database, and the Job
  is marked Complete or Failed accordingly (or Failed on demand).
- Tags listed in `never_ready` never become ready (a rollout that hangs).
"""

from __future__ import annotations

import dataclasses
import threading
import time
import traceback
from datetime import UTC, datetime

from airlock.drivers.process import DriverError, ProcessDriver


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ProcessKubelet(threading.Thread):
    def __init__(self, kubeconfig: str, workloads: dict[tuple[str, str], object]):
        """`workloads` maps (namespace, deployment name) to the Environment it serves."""
        super().__init__(daemon=True)
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=kubeconfig)
        self.apps, self.batch = client.AppsV1Api(api), client.BatchV1Api(api)
        self.workloads = workloads
        self.local = {key: ProcessDriver(dataclasses.replace(env.config, driver=dataclasses.replace(
            env.config.driver, kind="process", helm=None, start_timeout_seconds=180)), env.adapter, env.database)
            for key, env in workloads.items()}
        self.running: dict[tuple[str, str], str | None] = dict.fromkeys(workloads)
        self.never_ready: set[str] = set()
        self.fail_jobs = False
        self.jobs_seen: list[dict] = []
        self.events: list[str] = []
        self.errors: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                for key in self.workloads:
                    self.reconcile_deployment(*key)
                for namespace in {namespace for namespace, _ in self.workloads}:
                    self.reconcile_jobs(namespace)
            except Exception:  # keep playing; the test reads the errors
                self.errors.append(traceback.format_exc())
            time.sleep(0.5)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)
        for driver in self.local.values():
            driver.stop()

    # -- deployments ---------------------------------------------------------------------------
    def reconcile_deployment(self, namespace: str, name: str) -> None:
        try:
            deployment = self.apps.read_namespaced_deployment(name, namespace)
        except Exception:
            return
        wanted = deployment.spec.replicas or 0
        tag = deployment.spec.template.spec.containers[0].image.rsplit(":", 1)[-1]
        key, driver = (namespace, name), self.local[(namespace, name)]
        if wanted == 0 and self.running[key] is not None:
            driver.stop()
            self.running[key] = None
            self.events.append(f"{namespace}/{name}: stopped")
        if wanted > 0 and tag not in self.never_ready and self.running[key] != tag:
            if self.running[key] is not None:
                driver.stop()
            driver.start(tag)
            self.running[key] = tag
            self.events.append(f"{namespace}/{name}: running {tag}")
        ready = wanted if (wanted > 0 and self.running[key] == tag) else 0
        status = {"observedGeneration": deployment.metadata.generation, "replicas": ready,
                  "updatedReplicas": ready, "readyReplicas": ready, "availableReplicas": ready,
                  "conditions": [{"type": "Available", "status": "True" if ready == wanted else "False",
                                  "reason": "MinimumReplicasAvailable", "lastUpdateTime": now(),
                                  "lastTransitionTime": now()}]}
        current = deployment.status
        if (current.observed_generation, current.ready_replicas or 0) != (deployment.metadata.generation, ready):
            self.apps.patch_namespaced_deployment_status(name, namespace, {"status": status})

    # -- jobs ----------------------------------------------------------------------------------
    def reconcile_jobs(self, namespace: str) -> None:
        for job in self.batch.list_namespaced_job(namespace).items:
            if job.status.conditions or job.status.start_time:
                continue
            tag = job.spec.template.spec.containers[0].image.rsplit(":", 1)[-1]
            self.jobs_seen.append({"name": job.metadata.name, "image": job.spec.template.spec.containers[0].image,
                                   "at": time.time()})
            self.batch.patch_namespaced_job_status(job.metadata.name, namespace,
                                                   {"status": {"startTime": now(), "active": 1}})
            deployment = next(name for ns, name in self.workloads if ns == namespace)
            succeeded = not self.fail_jobs
            if succeeded:
                try:
                    self.local[(namespace, deployment)].migrate(tag)
                except DriverError as error:
                    self.events.append(f"{namespace}/{job.metadata.name}: migration failed: {error}")
                    succeeded = False
            condition = "Complete" if succeeded else "Failed"
            self.batch.patch_namespaced_job_status(job.metadata.name, namespace, {"status": {
                "active": 0, "succeeded" if succeeded else "failed": 1,
                **({"completionTime": now()} if succeeded else {}),
                "conditions": [{"type": condition, "status": "True", "lastProbeTime": now(),
                                "lastTransitionTime": now()}]}})
            self.events.append(f"{namespace}/{job.metadata.name}: {condition}")
