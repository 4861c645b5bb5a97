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
- Pods: each running Deployment and each Job has a Pod on this "node", labelled as the controllers
  label theirs (`job-name=…` for a Job's), whose log the API server fetches from this kubelet's
  HTTPS endpoint as from a real one: the server's log, the migration's output. Deleting a Job deletes
  its Pods as the garbage collector would (foreground at once, background a moment later).
- A HorizontalPodAutoscaler keeps its Deployment within [minReplicas, maxReplicas], and leaves one
  scaled to zero alone (upstream's "scaling disabled" when the target has no replica).
- Tags listed in `never_ready` never become ready (a rollout that hangs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import re
import secrets
import socket
import socketserver
import ssl
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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


class LogServer(http.server.ThreadingHTTPServer):
    """The kubelet's `/containerLogs/<namespace>/<pod>/<container>` endpoint, over TLS, as the API
    server calls it for `pods/log`."""

    daemon_threads = True

    def __init__(self, tls: tuple[Path, Path], logs: Callable[[str, str], str | None]):
        self.logs = logs
        super().__init__(("127.0.0.1", 0), LogHandler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*map(str, tls))
        self.socket = context.wrap_socket(self.socket, server_side=True)


class LogHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        text = self.server.logs(parts[1], parts[2]) if len(parts) == 4 and parts[0] == "containerLogs" else None
        if text is None:
            self.send_error(404)
            return
        tail = urllib.parse.parse_qs(url.query).get("tailLines")
        if tail:
            text = "\n".join(text.splitlines()[-int(tail[0]):])
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        """Quiet: the test reads the logs, not the requests."""


def pipe(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


class ProcessKubelet(threading.Thread):
    GC_DELAY_SECONDS = 2.0
    """How long the Pods of a Job deleted in the background outlive it (the garbage collector's lag)."""
    RECONCILE_SECONDS = 1.0
    """Between two passes over every namespace (a few API calls each; at 0.5 s the kubelet and the API
    server took about a fifth of a core while a Helm module ran)."""

    def __init__(self, api_server, environments: dict[str, object],
                 services: dict[str, dict[str, int]] | None = None):
        """`api_server` is the test's ApiServer; `environments` maps a namespace to the Environment
        (Helm target) deployed there; its Service answers on the environment's URL port. `services`
        adds other Services of a namespace on ports of their own (a blue-green release's own Service)."""
        super().__init__(daemon=True)
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=str(api_server.kubeconfig))
        self.apps, self.batch, self.core = client.AppsV1Api(api), client.BatchV1Api(api), client.CoreV1Api(api)
        self.autoscaling = client.AutoscalingV1Api(api)
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
        self.pods: dict[tuple[str, str], str] = {}
        """(namespace, deployment) → the name of its running Pod."""
        self.pod_logs: dict[tuple[str, str], Callable[[], str]] = {}
        self.orphans: dict[tuple[str, str], float] = {}
        self.log_server = LogServer(api_server.kubelet_tls, self.log_of)
        threading.Thread(target=self.log_server.serve_forever, daemon=True).start()
        self.node = f"process-kubelet-{self.log_server.server_address[1]}"
        self.register_node()
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
            time.sleep(self.RECONCILE_SECONDS)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)
        for server in (*self.proxies, self.log_server):
            server.shutdown()
            server.server_close()
        with ThreadPoolExecutor(8) as pool:  # each server takes a moment to exit
            list(pool.map(lambda driver: driver.stop(), self.local.values()))

    def register_node(self) -> None:
        """This kubelet as a Node whose endpoint the API server asks for pod logs."""
        self.core.create_node({"metadata": {"name": self.node}})
        self.core.patch_node_status(self.node, {"status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.log_server.server_address[1]}},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": now(), "lastTransitionTime": now()}]}})

    def log_of(self, namespace: str, pod: str) -> str | None:
        found = self.pod_logs.get((namespace, pod))
        return found() if found else None

    def create_pod(self, namespace: str, name: str, labels: dict, container, logs: Callable[[], str]) -> str:
        """A Pod on this node, as a controller would make it (`name` plus a random suffix)."""
        pod = f"{name}-{secrets.token_hex(3)}"
        self.pod_logs[(namespace, pod)] = logs
        self.core.create_namespaced_pod(namespace, {
            "metadata": {"name": pod, "labels": labels},
            "spec": {"nodeName": self.node, "restartPolicy": "Never",
                     "containers": [{"name": container.name, "image": container.image}]}})
        self.set_phase(namespace, pod, "Running")
        return pod

    def set_phase(self, namespace: str, pod: str, phase: str) -> None:
        self.core.patch_namespaced_pod_status(pod, namespace, {"status": {"phase": phase, "hostIP": "127.0.0.1"}})

    def delete_pod(self, namespace: str, pod: str) -> None:
        with contextlib.suppress(Exception):
            self.core.delete_namespaced_pod(pod, namespace, grace_period_seconds=0)
        self.pod_logs.pop((namespace, pod), None)

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
        self.reconcile_autoscalers(namespace)
        for deployment in self.apps.list_namespaced_deployment(namespace).items:
            self.reconcile_deployment(namespace, deployment)
        self.reconcile_jobs(namespace)

    def reconcile_autoscalers(self, namespace: str) -> None:
        for hpa in self.autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace).items:
            name = hpa.spec.scale_target_ref.name
            try:
                replicas = self.apps.read_namespaced_deployment(name, namespace).spec.replicas or 0
            except Exception:
                continue  # not there (yet)
            wanted = min(max(replicas, hpa.spec.min_replicas or 1), hpa.spec.max_replicas) if replicas else 0
            if wanted != replicas:
                self.apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": wanted}})
                self.events.append(f"{namespace}/{name}: autoscaled from {replicas} to {wanted}")

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
            self.delete_pod(namespace, self.pods.pop(key))
            self.events.append(f"{namespace}/{name}: stopped")
        if wanted > 0 and tag not in self.never_ready and self.running[key] != tag:
            if self.running[key] is not None:
                driver.stop()
                self.delete_pod(namespace, self.pods.pop(key))
            driver.start(version_of(tag))
            self.running[key] = tag
            self.pods[key] = self.create_pod(namespace, name, self.labels[key],
                                             deployment.spec.template.spec.containers[0],
                                             lambda log=driver.log_file: log.read_text(errors="replace"))
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
        jobs = self.batch.list_namespaced_job(namespace).items
        self.collect_garbage(namespace, jobs)
        for job in jobs:
            if job.status.conditions or job.status.start_time or job.metadata.deletion_timestamp:
                continue
            self.run_job(namespace, job)

    def collect_garbage(self, namespace: str, jobs: list) -> None:
        """The garbage collector's part: a Job deleted in the foreground loses its Pods, then its
        finalizer; Pods of a Job that is gone follow it after GC_DELAY_SECONDS."""
        for job in jobs:
            if job.metadata.deletion_timestamp and "foregroundDeletion" in (job.metadata.finalizers or []):
                for pod in self.core.list_namespaced_pod(namespace, label_selector=f"job-name={job.metadata.name}"
                                                         ).items:
                    self.delete_pod(namespace, pod.metadata.name)
                self.batch.patch_namespaced_job(job.metadata.name, namespace, {"metadata": {"finalizers": None}})
        alive = {job.metadata.name for job in jobs}
        for pod in self.core.list_namespaced_pod(namespace, label_selector="job-name").items:
            key = (namespace, pod.metadata.name)
            if pod.metadata.labels["job-name"] in alive:
                continue
            self.orphans.setdefault(key, time.monotonic())
            if time.monotonic() - self.orphans[key] >= self.GC_DELAY_SECONDS:
                self.delete_pod(namespace, pod.metadata.name)
                del self.orphans[key]

    def run_job(self, namespace: str, job) -> None:
        """Run the Job's migration in its Pod, whose log says what the migration printed."""
        container = job.spec.template.spec.containers[0]
        tag = container.image.rsplit(":", 1)[-1]
        self.jobs_seen.append({"namespace": namespace, "name": job.metadata.name, "image": container.image})
        log = [f"process kubelet: migrating to {version_of(tag)} with {container.image}"]
        pod = self.create_pod(namespace, job.metadata.name, {"job-name": job.metadata.name,
                                                             "controller-uid": job.metadata.uid},
                              container, lambda: "\n".join(log) + "\n")
        self.batch.patch_namespaced_job_status(job.metadata.name, namespace,
                                               {"status": {"startTime": now(), "active": 1}})
        succeeded = not self.fail_jobs
        if succeeded and not self.environments[namespace].database.table_stats():
            log.append("process kubelet: an empty database: the server creates its schema when it starts")
        elif succeeded:
            try:
                log.append(self.driver_for(namespace, f"job-{job.metadata.name}").migrate(version_of(tag))[
                    "output_tail"])
            except DriverError as error:
                self.events.append(f"{namespace}/{job.metadata.name}: migration failed: {error}")
                succeeded = False
                log.append(str(error))
        else:
            log.append("process kubelet: failing this Job on demand (fail_jobs)")
        self.set_phase(namespace, pod, "Succeeded" if succeeded else "Failed")
        condition = "Complete" if succeeded else "Failed"
        self.batch.patch_namespaced_job_status(job.metadata.name, namespace, {"status": {
            "active": 0, "succeeded" if succeeded else "failed": 1,
            **({"completionTime": now()} if succeeded else {}),
            "conditions": [{"type": condition, "status": "True", "lastProbeTime": now(),
                            "lastTransitionTime": now()}]}})
        self.events.append(f"{namespace}/{job.metadata.name}: {condition}")
