"""An inline kubeconfig (the connection's `kube_config`) on a real kube-apiserver: the Kubernetes
calls use it from memory; Helm gets one owner-only file per process, however often the triggerer
polls, and the file is gone when the process ends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

pytestmark = pytest.mark.integration


@pytest.fixture
def inline_connection(kube_api, monkeypatch):
    config = yaml.safe_load(kube_api.kubeconfig.read_text())
    monkeypatch.setenv("AIRFLOW_CONN_K8S_INLINE", json.dumps({"conn_type": "kubernetes",
                                                              "extra": {"kube_config": yaml.safe_dump(config)}}))
    return kube_api.token


def test_polls_with_an_inline_kubeconfig_write_no_file(inline_connection, private_tmp):
    from airlock.drivers.helm import rollout_check
    from airlock.kube import KubeError, kube_for

    assert kube_for("k8s_inline").pod_labels("default", "no-such-deployment") is None  # reached, authorised
    for _ in range(5):  # as the triggerer polls a rollout
        with pytest.raises(KubeError, match="HTTP 404"):
            rollout_check("k8s_inline", "default", "no-such-deployment", "3.17.2")
    assert list(private_tmp.glob("airlock-kubeconfig-*")) == []


def test_helms_kubeconfig_file_is_private_written_once_and_removed_at_exit(inline_connection, private_tmp):
    """In a process of its own, as a task or the triggerer is."""
    script = ("import json, os, stat, sys; from airlock.kube import kubeconfig_for; "
              "paths = {kubeconfig_for('k8s_inline') for _ in range(5)}; path = paths.pop(); "
              "print(json.dumps({'count': 1 + len(paths), 'path': path, "
              "'file': stat.S_IMODE(os.stat(path).st_mode), "
              "'dir': stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode)}))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            cwd=REPO)
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["count"] == 1
    assert (found["file"], found["dir"]) == (0o600, 0o700)
    assert not Path(found["path"]).exists() and not Path(found["path"]).parent.exists()
    assert Path(found["path"]).parent.parent == private_tmp  # in TMPDIR, which on a worker is the shared /tmp
