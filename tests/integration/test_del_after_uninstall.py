"""DEL never strands a pod after uninstall (istio/istio#58572), through the real libcni.

cnitool (libcni v1.3) ADDs two pod netns through loopback + bridge(host-local) + istio-cni, with
the conflist the real installer code wrote into a temp host layout; libcni caches each ADD's
conflist bytes in /var/lib/cni/results/<net>-<containerid>-<ifname>. The installer then
uninstalls (entry out of the conflist, bundle gone, DEL-only stand-in left). Then:

* pod 1 is deleted the way a runtime using ``GetNetworkListCachedConfig`` does it: the cached
  conflist bytes (which still name istio-cni) are handed to ``DelNetworkList`` - here by giving
  cnitool exactly those bytes as its conflist. Without an ``istio-cni`` in CNI_PATH this fails
  with libcni's "failed to find plugin" (checked first, so the test can fail); with the stand-in
  it succeeds, the pod's veth is gone and libcni drops the cache entry.
* pod 2 is deleted with the current conflist (containerd's way): succeeds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from pathlib import Path

from istio_cni.tools import netns as nsutil
from istio_cni.tools.chain import bridge_conflist
from istio_cni_installer.installer import Installer
from istio_cni_installer.settings import parse
from istio_cni_installer.standin import is_standin

NET = "icni-del-standin"
REF_CNI = "/usr/lib/cni"
LIBCNI_RESULTS = Path("/var/lib/cni/results")


def _container_id(netns_path: str) -> str:
    # cnitool derives the container ID from the netns path (cnitool.go: sha512, first 10 bytes)
    return "cnitool-" + hashlib.sha512(os.path.abspath(netns_path).encode()).digest()[:10].hex()


def _cnitool(cnitool_bin, host: str, command: str, pod: str, confdir: Path, cni_path: str):
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "NETCONFPATH": str(confdir),
           "CNI_PATH": cni_path, "CNI_IFNAME": "eth0"}
    # nsenter: cnitool and every plugin it execs run in the test's "host" netns, never the machine's
    return subprocess.run(["nsenter", f"--net={nsutil.path(host)}", str(cnitool_bin), command, NET,
                           nsutil.path(pod)], env=env, capture_output=True, text=True, timeout=120)


def _types(conflist: dict) -> list[str]:
    return [p["type"] for p in conflist["plugins"]]


def test_pods_added_with_istio_cni_delete_after_uninstall(cnitool_bin, plugin_bundle, host_layout, netns, tmp_path):
    host, pod1, pod2 = netns("host"), netns("pod"), netns("pod")
    live = host_layout.net_dir / f"10-{NET}.conflist"
    live.write_text(json.dumps(bridge_conflist("1.0.0", "169.254.71.0/24", "icnidel0", str(tmp_path / "ipam"),
                                               name=NET)))
    installer = Installer(parse([], host_layout.env(plugin_bundle)))
    installer.prepare()
    assert installer.reconcile() is True
    assert _types(json.loads(live.read_text())) == ["loopback", "bridge", "istio-cni"]
    # our bin dir first; the reference plugins' dir holds no istio-cni
    cni_path = f"{host_layout.bin_dir}:{REF_CNI}"
    caches = [LIBCNI_RESULTS / f"{NET}-{_container_id(nsutil.path(p))}-eth0" for p in (pod1, pod2)]
    try:
        for pod in (pod1, pod2):
            add = _cnitool(cnitool_bin, host, "add", pod, host_layout.net_dir, cni_path)
            assert add.returncode == 0, f"cnitool add failed:\n{add.stdout}\n{add.stderr}"
            assert "eth0" in nsutil.ip("-n", pod, "link", "show").stdout
        cached = json.loads(caches[0].read_text())
        cached_conflist = base64.b64decode(cached["config"])
        assert "istio-cni" in _types(json.loads(cached_conflist))

        installer.uninstall()
        assert _types(json.loads(live.read_text())) == ["loopback", "bridge"]
        standin = host_layout.bin_dir / "istio-cni"
        assert is_standin(standin.read_text())
        assert sorted(p.name for p in host_layout.bin_dir.iterdir()) == ["istio-cni"]

        # DEL from the cached config of the ADD (GetNetworkListCachedConfig -> DelNetworkList)
        cached_dir = tmp_path / "cached-config"
        cached_dir.mkdir()
        (cached_dir / f"10-{NET}.conflist").write_bytes(cached_conflist)
        hidden = standin.with_name("moved-away")
        os.rename(standin, hidden)  # first without any istio-cni: the failure the stand-in prevents
        stuck = _cnitool(cnitool_bin, host, "del", pod1, cached_dir, cni_path)
        os.rename(hidden, standin)
        assert stuck.returncode != 0 and 'failed to find plugin "istio-cni"' in stuck.stdout + stuck.stderr, stuck
        dele = _cnitool(cnitool_bin, host, "del", pod1, cached_dir, cni_path)
        assert dele.returncode == 0, f"DEL from the cached config failed:\n{dele.stdout}\n{dele.stderr}"
        assert "eth0" not in nsutil.ip("-n", pod1, "link", "show").stdout  # bridge's DEL ran too
        assert not caches[0].exists()  # libcni drops the cache only after a successful DEL

        # DEL with the current conflist (no istio-cni in it any more)
        dele = _cnitool(cnitool_bin, host, "del", pod2, host_layout.net_dir, cni_path)
        assert dele.returncode == 0, f"DEL with the current conflist failed:\n{dele.stdout}\n{dele.stderr}"
        assert "eth0" not in nsutil.ip("-n", pod2, "link", "show").stdout
        assert not caches[1].exists()

        # a new pod through the cached config never starts unredirected: ADD fails closed
        add = _cnitool(cnitool_bin, host, "add", pod1, cached_dir, cni_path)
        assert add.returncode != 0 and "istio-cni is not installed" in add.stdout + add.stderr, add
        _cnitool(cnitool_bin, host, "del", pod1, cached_dir, cni_path)
    finally:
        for c in caches:
            c.unlink(missing_ok=True)
