"""A "process kubelet" for a controller-less API server: it plays the Deployment controller, the
Job controller, the kubelet and kube-proxy for the servers Airlock upgrades.

- A Deployment asking for replicas with image tag X: the real platform server of version X runs as
  a local process on a private port, and the Deployment's status says ready once it answers.
  Replicas 0: the process stops and the status says so.
- The environment's Service: a TCP proxy on the environment's URL port forwards each connection
  to the Deployment whose pod labels the Service's selector matches (so a selector switch moves
  the traffic, as kube-proxy would).
- A Job: its image tag's migration runs for real against the environment's database, and the Job
  is marked Complete or Failed accordingly (or Failed on demand).
- Tags listed in `never_ready` never become ready (a rollout that hangs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import socket
import socketserver
import threading
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from airlock.drivers.process import DriverError, ProcessDriver
from airlock.registry import PLATFORMS, load_class


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]



def version_of(tag: str) -> str:
    """The platform version in an image tag, whatever the chart's convention (`3.17.2`, `v3.17.2`, `3.17.2-slim`)."""
    found = re.search(r"\d+\.\d+\.\d+", tag)
    return found.group(0) if found else tag

class ServiceProxy(socketserver.ThreadingTCPServer):
    """kube-proxy for one Service: forwards to `backend()` (a port, or None: connection refused)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, backend):
        self.backend = backend
        super().__init__(("127.0.0.1", port), ProxyHandler)


class ProxyHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        port = self.server.backend()
        if port is None:
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=30)
        except OSError:
            return
        with upstream:
            pipes = [threading.Thread(target=pipe, args=(self.request, upstream), daemon=True),
                     threading.Thread(target=pipe, args=(upstream, self.request), daemon=True)]
            for thread in pipes:
                thread.start()
            for thread in pipes:
                thread.join()


def pipe(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


class ProcessKubelet(threading.Thread):
    def __init__(self, kubeconfig: str, environments: dict[str, object],
                 services: dict[str, dict[str, int]] | None = None):
        """`environments` maps a namespace to the Environment (Helm target) deployed there; its
        Service answers on the environment's URL port. `services` adds other Services of a
        namespace on ports of their own (a blue-green release's own Service)."""
        super().__init__(daemon=True)
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=kubeconfig)
        self.apps, self.batch, self.core = client.AppsV1Api(api), client.BatchV1Api(api), client.CoreV1Api(api)
        self.environments = environments
        self.local: dict[tuple[str, str], ProcessDriver] = {}
        self.ports: dict[tuple[str, str], int] = {}
        self.running: dict[tuple[str, str], str | None] = {}
        self.labels: dict[tuple[str, str], dict] = {}
        self.selectors: dict[tuple[str, str], dict] = {}
        self.services = {namespace: {env.config.driver.helm.service: env.config.port, **(services or {}).get(
            namespace, {})} for namespace, env in environments.items()}
        self.proxies = [ServiceProxy(port, lambda ns=namespace, svc=service: self.backend(ns, svc))
                        for namespace, ports in self.services.items() for service, port in ports.items()]
        for proxy in self.proxies:
            threading.Thread(target=proxy.serve_forever, daemon=True).start()
        self.never_ready: set[str] = set()
        self.fail_jobs = False
        self.jobs_seen: list[dict] = []
        self.events: list[str] = []
        self.errors: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            for namespace in self.environments:
                try:
                    self.reconcile_namespace(namespace)
                except Exception:  # keep playing; the test reads the errors
                    self.errors.append(traceback.format_exc())
            time.sleep(0.5)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)
        for proxy in self.proxies:
            proxy.shutdown()
            proxy.server_close()
        for driver in self.local.values():
            driver.stop()

    def backend(self, namespace: str, service: str) -> int | None:
        """The private port of the running Deployment whose pod labels the Service selects."""
        selector = self.selectors.get((namespace, service)) or {}
        for key, labels in self.labels.items():
            if key[0] == namespace and selector and selector.items() <= labels.items() and self.running.get(key):
                return self.ports[key]
        return None

    def reconcile_namespace(self, namespace: str) -> None:
        for service in self.services[namespace]:
            try:
                self.selectors[(namespace, service)] = self.core.read_namespaced_service(
                    service, namespace).spec.selector or {}
            except Exception:
                self.selectors[(namespace, service)] = {}
        for deployment in self.apps.list_namespaced_deployment(namespace).items:
            self.reconcile_deployment(namespace, deployment)
        self.reconcile_jobs(namespace)

    def driver_for(self, namespace: str, name: str) -> ProcessDriver:
        """A local process per Deployment, on a private port, with the environment's database."""
        key = (namespace, name)
        if key not in self.local:
            env = self.environments[namespace]
            self.ports[key] = free_port()
            url = f"http://127.0.0.1:{self.ports[key]}"
            config = dataclasses.replace(env.config, url=url, driver=dataclasses.replace(
                env.config.driver, kind="process", helm=None, start_timeout_seconds=180,
                state_dir=str(Path(env.config.driver.state_dir) / f"pod-{name}")))
            self.local[key] = ProcessDriver(config, load_class(PLATFORMS, env.target.platform)(url), env.database)
            self.running[key] = None
        return self.local[key]

    # -- deployments ---------------------------------------------------------------------------
    def reconcile_deployment(self, namespace: str, deployment) -> None:
        name = deployment.metadata.name
        key, driver = (namespace, name), self.driver_for(namespace, name)
        self.labels[key] = deployment.spec.template.metadata.labels or {}
        wanted = deployment.spec.replicas or 0
        tag = deployment.spec.template.spec.containers[0].image.rsplit(":", 1)[-1]
        if wanted == 0 and self.running[key] is not None:
            driver.stop()
            self.running[key] = None
            self.events.append(f"{namespace}/{name}: stopped")
        if wanted > 0 and tag not in self.never_ready and self.running[key] != tag:
            if self.running[key] is not None:
                driver.stop()
            driver.start(version_of(tag))
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
            self.jobs_seen.append({"namespace": namespace, "name": job.metadata.name,
                                   "image": job.spec.template.spec.containers[0].image})
            self.batch.patch_namespaced_job_status(job.metadata.name, namespace,
                                                   {"status": {"startTime": now(), "active": 1}})
            succeeded = not self.fail_jobs
            if succeeded:
                try:
                    self.driver_for(namespace, f"job-{job.metadata.name}").migrate(version_of(tag))
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
