"""`make demo`: one pod, end to end, on this machine, and everything cleaned up.

1. An API server on 127.0.0.1: the real kube-apiserver (+ etcd) when tools/go-tools.sh has
   built it, otherwise the small embedded fake API (tests/peers/fakeapi.py).
2. A pod with an injected istio-proxy sidecar, created through that API.
3. Two throwaway network namespaces: a "node" (stands in for the host: the bridge lives
   there, so the machine's own netns is never touched) and the "pod".
4. The node program's install step: the self-contained plugin bundle and its launcher go into
   a temp CNI bin dir, and our entry is injected into the primary CNI's bridge ``.conf``
   (turned into a ``.conflist``), exactly as ``install-cni`` does on a node.
5. That conflist (loopback + bridge with host-local IPAM on 198.51.100.0/24 + istio-cni) is
   run like a container runtime would, exec'ing the installed launcher.
6. Proof: the rules in the pod netns, then real TCP connections: outbound from the app lands
   on the sidecar's 15001 with the original destination, inbound lands on 15006, and the
   proxy's own uid (1337) bypasses.
7. CNI DEL, then every namespace, process and temp file removed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from support.pods import sidecar_pod  # noqa: E402
from traffic import Listeners, connect  # noqa: E402

from istio_cni.tools import netns as nsutil  # noqa: E402
from istio_cni.tools.chain import Chain, bridge_conflist  # noqa: E402

SUBNET = "198.51.100.0/24"  # documentation range: a pod address upstream (and we) count, unlike link-local
GATEWAY = "198.51.100.1"


def say(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def start_api(work: Path):
    from peers.tools import CACHE, build_failure

    if build_failure("kube-apiserver") is None:
        apiserver = (CACHE / "bin" / "kube-apiserver").resolve()
        from peers.controlplane import ControlPlane

        cp = ControlPlane(work / "cp", apiserver).start()
        say(f"real kube-apiserver + etcd on {cp.server} (ready in {cp.started_in:.1f} s)")
        cp.create_namespace("demo")

        def stop():
            cp.stop()

        return cp.kubeconfig, lambda pod: cp.create_pod(pod), stop
    from peers.fakeapi import FakeAPI

    api = FakeAPI().start()
    say(f"embedded fake API server on {api.url} (build the real one with tools/go-tools.sh kube-apiserver)")
    kc = work / "kubeconfig"
    kc.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "demo",
        "clusters": [{"name": "demo", "cluster": {"server": api.url}}],
        "contexts": [{"name": "demo", "context": {"cluster": "demo", "user": "demo"}}],
        "users": [{"name": "demo", "user": {}}]}))
    return kc, api.add_pod, api.stop


def install(work: Path, kubeconfig: Path) -> tuple[dict, Path]:
    """Run the installer's one-shot install against a temp host layout; return the conflist."""
    from istio_cni_installer.app import install_into
    from istio_cni_installer.bundle import build

    net_dir, bin_dir, run_dir = work / "net.d", work / "bin", work / "run"
    for d in (net_dir, bin_dir, run_dir):
        d.mkdir()
    primary = bridge_conflist("1.0.0", SUBNET, "demobr0", str(work / "ipam"), name="demo-net")["plugins"][1]
    bridge_conf = {"cniVersion": "1.0.0", "name": "demo-net", **primary}
    (net_dir / "10-bridge.conf").write_text(json.dumps(bridge_conf, indent=2))
    say("install-cni: bundle + launcher into the bin dir, entry into the primary CNI's config")
    t0 = time.monotonic()
    info = build(work / "bundle")
    problems = install_into(str(net_dir), str(bin_dir), str(run_dir), info.path, EXCLUDE_NAMESPACES="kube-system")
    print(f"bundle {info.size_bytes / 2**20:.0f} MiB, installed in {time.monotonic() - t0:.1f} s; "
          f"problems left: {sum(len(v) for v in problems.values())}")
    # The installer writes the plugin's kubeconfig from the pod's service-account token; the
    # demo has no service account, so it places the demo API's kubeconfig at that path.
    shutil.copy(kubeconfig, run_dir / "istio-cni-kubeconfig")
    files = sorted(net_dir.iterdir())
    print("net.d now holds:", ", ".join(p.name for p in files))
    conflist = json.loads((net_dir / "10-bridge.conflist").read_text())
    # Standalone loopback first, as kubelet's runtime always sets up lo itself.
    conflist["plugins"].insert(0, {"type": "loopback"})
    print(json.dumps(conflist["plugins"][-1], indent=2))
    from istio_cni_installer.front import read_config

    front = read_config((bin_dir / "istio-cni").read_bytes())  # the compiled front, configured
    print(f"{bin_dir}/istio-cni (compiled front) -> {front['python']} -I -S -c ...")
    return conflist, bin_dir


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="istio-cni-demo-"))
    node = pod = None
    stop_api = lambda: None  # noqa: E731
    chain = None
    try:
        kubeconfig, create_pod, stop_api = start_api(work)
        manifest = sidecar_pod("web", "demo")
        create_pod(manifest)
        print("pod demo/web: containers app + istio-proxy, annotation sidecar.istio.io/status")

        node, pod = nsutil.unique_name("node"), nsutil.unique_name("pod")
        nsutil.add(node)
        nsutil.add(pod)
        conflist, bindir = install(work, kubeconfig)
        say("CNI chain: " + " -> ".join(p["type"] for p in conflist["plugins"]))
        chain = Chain(conflist, container_id="demo-sandbox-1", netns=nsutil.path(pod),
                      cni_path=f"/usr/lib/cni:{bindir}", host_netns=nsutil.path(node),
                      cni_args="IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=demo-sandbox-1")
        t0 = time.monotonic()
        result = chain.add()
        took_ms = 1000 * (time.monotonic() - t0)
        print(
            f"ADD through the chain took {took_ms:.0f} ms; "
            "result (istio-cni handed on the bridge's result unchanged):"
        )
        print(json.dumps(result, indent=2))
        pod_ip = result["ips"][0]["address"].split("/")[0]

        say("rules in the pod's network namespace")
        save = nsutil.exec_in(pod, "iptables-legacy-save", "-t", "nat").stdout
        nft = nsutil.exec_in(pod, "nft", "list", "ruleset").stdout
        print("\n".join(line for line in save.splitlines() if line.startswith(("-A", ":ISTIO"))) or nft)

        say("traffic")
        with Listeners(pod, ["15001", "15006"], lifetime=30), Listeners(node, ["80"], lifetime=30):
            out = connect(pod, GATEWAY, 80)
            print(
                f"app -> {GATEWAY}:80        landed on port {out.get('port')} (the sidecar), "
                f"original destination {out.get('orig')}"
            )
            out = connect(pod, GATEWAY, 80, uid=1337)
            print(
                f"proxy uid 1337 -> {GATEWAY}:80 landed on port {out.get('port')} at {out.get('local')} "
                "(bypasses the redirect)"
            )
            out = connect(node, pod_ip, 8080)
            print(
                f"node -> pod {pod_ip}:8080   landed on port {out.get('port')} (inbound capture), "
                f"original destination {out.get('orig')}"
            )
        say("CNI DEL")
        chain.delete()
        chain = None
        left = nsutil.exec_in(pod, "iptables-legacy-save", "-t", "nat").stdout
        print("rules left in the pod netns after DEL:", sum(1 for x in left.splitlines() if "ISTIO" in x))
        return 0
    finally:
        if chain is not None:
            try:
                chain.delete()
            except Exception as e:  # best effort: the namespaces go away below anyway
                print(f"DEL during cleanup failed: {e}", file=sys.stderr)
        for ns in (pod, node):
            if ns:
                nsutil.delete(ns)
        stop_api()
        shutil.rmtree(work, ignore_errors=True)
        say("cleaned up: namespaces deleted, API server stopped, temp files removed")


if __name__ == "__main__":
    sys.exit(main())
