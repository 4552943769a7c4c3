"""helm install on a real node: the DaemonSet's pod becomes Ready through its readiness probe,
runs as the chart's securityContext says, and lays the plugin down on the node."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess

import pytest
import yaml

from node.release import NAMESPACE

pytestmark = [pytest.mark.node, pytest.mark.root, pytest.mark.timeout(900)]

CAP_BITS = {"NET_ADMIN": 12, "NET_RAW": 13, "SYS_PTRACE": 19, "SYS_ADMIN": 21, "DAC_OVERRIDE": 1}
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def install_cni_pid(node, pods, pod: dict) -> int:
    cid = pods.node.crictl("ps", "--namespace", NAMESPACE, "--name", "^install-cni$", "--state", "running",
                           "--pod", pods.sandbox_id(NAMESPACE, pod["metadata"]["name"]), "-q").stdout.split()
    assert len(cid) == 1, f"install-cni container not running: {cid}"
    return json.loads(node.crictl("inspect", cid[0]).stdout)["info"]["pid"]


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def test_daemonset_pod_ready_through_its_probe(release, pods):
    release.ensure()
    pod = release.ready_pod()
    spec = pod["spec"]["containers"][0]
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ready = {c["type"]: c for c in pod["status"]["conditions"]}["Ready"]
    assert ready["status"] == "True"
    # The container is Ready, i.e. kubelet ran the probe against the node program and got 200.
    assert pod["status"]["containerStatuses"][0]["ready"] is True


def test_runs_as_the_charts_security_context_says(release, node, pods):
    release.ensure()
    pod = release.ready_pod()
    sc = pod["spec"]["containers"][0]["securityContext"]
    st = proc_status(install_cni_pid(node, pods, pod))
    assert st["Uid"].split()[0] == str(sc["runAsUser"]) and st["Gid"].split()[0] == str(sc["runAsGroup"])
    want = sum(1 << CAP_BITS[c] for c in sc["capabilities"]["add"])
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert int(st["CapEff"], 16) == want, (st["CapEff"], sc["capabilities"])
    assert int(st["CapBnd"], 16) == want
    assert st["NoNewPrivs"] == ("1" if sc["allowPrivilegeEscalation"] is False else "0")
    root_mount = next(line.split() for line in open(f"/proc/{install_cni_pid(node, pods, pod)}/mountinfo")
                      if line.split()[4] == "/")
    assert ("ro" in root_mount[5].split(",")) is sc["readOnlyRootFilesystem"]


def test_plugin_bundle_launcher_conflist_and_kubeconfig_on_the_node(release, node):
    release.ensure()
    launcher = node.cni_bin_dir / "istio-cni"
    assert launcher.is_file() and os.access(launcher, os.X_OK)
    bundles = list((node.cni_bin_dir / "istio-cni.d").iterdir())
    assert len(bundles) == 1 and str(bundles[0]).encode() in launcher.read_bytes(), "the launcher names the one bundle"
    conflist = json.loads(node.primary_conflist.read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["bridge", "istio-cni"], "our entry ends the chain"
    kubeconfig = node.run_dir / "istio-cni-kubeconfig"
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
    entry = conflist["plugins"][-1]
    assert entry["cni_agent_run_dir"] == str(node.run_dir)
    assert entry["kubernetes"]["kubeconfig"] == str(kubeconfig)


def test_kubeconfig_comes_from_the_projected_token_and_no_token_in_conf_dir(release, node, pods):
    release.ensure()
    pod = release.ready_pod()
    pid = str(install_cni_pid(node, pods, pod))

    def in_container(path: str) -> str:  # the container's own view: its mounts, its symlinks
        return subprocess.run(["nsenter", "-t", pid, "-m", "cat", path], capture_output=True, text=True,
                              timeout=30, check=True).stdout

    projected_token = in_container(f"{TOKEN_PATH}/token").strip()
    projected_ca = in_container(f"{TOKEN_PATH}/ca.crt")
    kc = yaml.safe_load((node.run_dir / "istio-cni-kubeconfig").read_text())
    user = kc["users"][0]["user"]
    # Compared, never printed: a token must not reach a test report either.
    assert user.get("token") == projected_token, "the plugin kubeconfig does not carry the pod's projected token"
    cluster = kc["clusters"][0]["cluster"]
    assert base64.b64decode(cluster["certificate-authority-data"]).decode() == projected_ca
    assert cluster["server"].startswith("https://198.51.100.1"), cluster["server"]  # the kubernetes Service
    for f in node.cni_conf_dir.rglob("*"):
        if f.is_file():
            assert projected_token not in f.read_text(errors="replace"), f"token found in {f.name}"
