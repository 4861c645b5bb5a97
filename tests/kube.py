"""A real Kubernetes API server for tests: kube-apiserver + etcd from ../shared/envtest.

The binaries come from `shared/envtest/build.sh` (KUBEBUILDER_ASSETS, or the script's cache).
There is no controller, scheduler or kubelet: tests play them by patching `status` subresources,
and serve pod logs to the API server (which trusts the certificate made here for that).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml
from leaks import PLANTED

ENVTEST_BUILDS = [Path(__file__).resolve().parents[2] / "shared" / "envtest" / "build.sh",
                  Path("/work/shared/envtest/build.sh")]
"""Where the workplace keeps shared/envtest: beside the checkout, or at its usual place."""


def envtest_assets() -> Path | None:
    """The directory holding kube-apiserver and etcd: $KUBEBUILDER_ASSETS, else what build.sh
    prints (it returns its cache at once when already built, else builds, about 3 min)."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and (Path(assets) / "kube-apiserver").is_file():
        return Path(assets)
    for script in (path for path in ENVTEST_BUILDS if path.is_file()):
        result = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
        path = Path(result.stdout.strip() or "/nonexistent")
        if result.returncode == 0 and (path / "kube-apiserver").is_file():
            return path
    return None


DEPLOYER = "airlock-deployer"
"""A user with no rights but those a test binds to it (RBAC is on)."""


@dataclass
class ApiServer:
    url: str
    token: str
    deployer_token: str
    ca_file: Path
    kubeconfig: Path
    processes: list[subprocess.Popen]
    root: Path

    @property
    def kubelet_tls(self) -> tuple[Path, Path]:
        """Certificate and key a test kubelet serves pod logs with (the API server trusts it)."""
        return self.root / "kubelet.crt", self.root / "kubelet.key"

    def stop(self) -> None:
        for process in reversed(self.processes):  # kube-apiserver first, then etcd
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def kubeconfig_for(self, token: str, path: Path) -> Path:
        """A kubeconfig with another identity (e.g. a service account's token)."""
        write_kubeconfig(path, self.url, self.ca_file, token)
        return path


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_kubeconfig(path: Path, url: str, ca_file: Path, token: str) -> None:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "envtest",
        "clusters": [{"name": "envtest", "cluster": {"server": url, "certificate-authority": str(ca_file)}}],
        "users": [{"name": "envtest", "user": {"token": token}}],
        "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": "envtest"}}],
    }))


def wait_until(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(what)


def start_api_server(assets: Path) -> ApiServer:
    """etcd, then kube-apiserver with RBAC and a static admin token, as README.md of envtest says."""
    root = Path(tempfile.mkdtemp(prefix="airlock-envtest-"))
    client, peer, port = free_port(), free_port(), free_port()
    token, deployer_token = secrets.token_hex(16), PLANTED["kubernetes"]  # Airlock deploys with the latter
    subprocess.run(["openssl", "genrsa", "-out", str(root / "sa.key"), "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(root / "kubelet.key"), "-out", str(root / "kubelet.crt")],
                   check=True, capture_output=True)
    (root / "tokens.csv").write_text(f'{token},envtest-admin,envtest-admin,"system:masters"\n'
                                     f'{deployer_token},{DEPLOYER},{DEPLOYER}\n')
    logs = root / "logs"
    logs.mkdir()
    etcd = subprocess.Popen(
        [str(assets / "etcd"), "--name=envtest", f"--data-dir={root / 'etcd-data'}",
         f"--listen-client-urls=http://127.0.0.1:{client}", f"--advertise-client-urls=http://127.0.0.1:{client}",
         f"--listen-peer-urls=http://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
         f"--initial-cluster=envtest=http://127.0.0.1:{peer}", "--unsafe-no-fsync", "--logger=zap",
         "--log-level=warn"],
        stdout=open(logs / "etcd.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)  # noqa: SIM115
    server = ApiServer(f"https://127.0.0.1:{port}", token, deployer_token, root / "certs" / "apiserver.crt",
                       root / "kubeconfig", [etcd], root)
    try:
        wait_until(lambda: b"true" in urllib.request.urlopen(f"http://127.0.0.1:{client}/health", timeout=2).read(),
                   30, "etcd health")
        server.processes.append(subprocess.Popen(
            [str(assets / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{client}",
             "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
             "--insecure-port=0", f"--cert-dir={root / 'certs'}", f"--service-account-issuer=https://127.0.0.1:{port}",
             f"--service-account-key-file={root / 'sa.key'}", f"--service-account-signing-key-file={root / 'sa.key'}",
             f"--token-auth-file={root / 'tokens.csv'}", "--authorization-mode=RBAC",
             "--service-cluster-ip-range=10.0.0.0/24", "--disable-admission-plugins=ServiceAccount",
             "--allow-privileged=true", f"--kubelet-certificate-authority={root / 'kubelet.crt'}",
             "--kubelet-preferred-address-types=InternalIP"],
            stdout=open(logs / "kube-apiserver.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
            start_new_session=True))
        wait_until(server.ca_file.is_file, 30, "kube-apiserver certificate")

        def ready() -> bool:
            context = ssl.create_default_context(cafile=str(server.ca_file))
            request = urllib.request.Request(f"{server.url}/readyz", headers={"Authorization": f"Bearer {token}"})
            return urllib.request.urlopen(request, timeout=2, context=context).status == 200

        wait_until(ready, 60, "kube-apiserver /readyz")
    except (TimeoutError, subprocess.CalledProcessError):
        server.stop()
        raise
    write_kubeconfig(server.kubeconfig, server.url, server.ca_file, token)
    return server
