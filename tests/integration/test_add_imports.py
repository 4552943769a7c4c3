"""A whole direct-path ADD through the bundle, as kubelet runs it (TLS API, libiptc commit in a
pod netns), keeps the per-exec import budget: what it imports is read from ``-X importtime``."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest
from peers.fakeapi import FakeAPI
from peers.kubeapi import write_kubeconfig
from support.pods import sidecar_pod

from istio_cni.tools import netns as nsutil
from istio_cni_installer.bundle import read_manifest
from istio_cni_installer.front import read_config

# Each costs a whole-ADD budget item: ``os`` ~1.5 ms (istio_cni.environ), ``socket``/``ssl``
# tens of ms (transport), ``json``/``re``/``enum``/``typing`` their own trees, ``_nft``
# libnftables (the nft backend only), ``encodings.idna`` re + unicodedata (transport); ``_ssl``
# ~1.9 ms: the one-shot plugin's TLS runs on a C thread (``_fastpath.HttpsGet``).
FORBIDDEN = ("os", "posixpath", "stat", "_collections_abc", "json", "re", "enum", "typing", "dataclasses",
             "socket", "ssl", "selectors", "subprocess", "logging", "binascii", "ipaddress", "encodings.idna",
             "istio_cni._nft", "yaml", "_ssl")


@pytest.fixture
def pod_netns():
    with nsutil.temporary("addimp") as pod_ns, nsutil.temporary("addimpn") as node_ns:
        nsutil.veth_pair(pod_ns, node_ns, "192.0.2.2/24", "192.0.2.1/24")
        yield pod_ns


def _importtime_launcher(plugin_bundle, tmp_path):
    cfg = read_config(plugin_bundle.launcher.read_bytes())
    path = tmp_path / "istio-cni-importtime"
    path.write_text(f"#!/bin/sh\nLD_LIBRARY_PATH={shlex.quote(cfg['lib'])} exec {shlex.quote(cfg['python'])} "
                    f"-X importtime -I -S -c {shlex.quote(cfg['code'])} \"$@\"\n")
    path.chmod(0o755)
    return path


def test_a_redirected_add_imports_only_what_its_budget_allows(plugin_bundle, pod_netns, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with FakeAPI(tls_dir=tmp_path / "pki", token="t0ken-for-imports") as api:
        api.add_pod(sidecar_pod("web"))
        write_kubeconfig(run_dir / "istio-cni-kubeconfig", api.url, api.ca_file, "t0ken-for-imports", "istio-cni")
        conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "istio-cni",
                "cni_agent_run_dir": str(run_dir),  # agent configured, not running: the direct path
                "kubernetes": {"kubeconfig": str(run_dir / "istio-cni-kubeconfig")},
                "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}],
                               "ips": [{"address": "192.0.2.2/24"}]}}
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": nsutil.path(pod_netns),
               "CNI_IFNAME": "eth0", "CNI_PATH": str(plugin_bundle.bin_dir),
               "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web", "PATH": "/usr/bin:/bin"}
        r = subprocess.run([str(_importtime_launcher(plugin_bundle, tmp_path))], input=json.dumps(conf).encode(),
                           env=env, capture_output=True, timeout=60)
    assert r.returncode == 0, (r.stdout, r.stderr.decode()[-3000:])
    assert json.loads(r.stdout)["ips"] == conf["prevResult"]["ips"]
    rules = subprocess.run(["ip", "netns", "exec", pod_netns, "iptables-legacy-save", "-t", "nat"],
                           capture_output=True, text=True, timeout=30).stdout
    assert "ISTIO_OUTPUT" in rules and "15001" in rules  # committed: this was the whole ADD
    imported = {line.split("|")[-1].strip() for line in r.stderr.decode().splitlines()
                if line.startswith("import time:") and "imported package" not in line}
    assert api.requests and "istio_cni._nf" in imported  # the TLS GET and the libiptc commit ran
    assert not set(FORBIDDEN) & imported, sorted(set(FORBIDDEN) & imported)


def test_the_bundle_serves_the_plugin_from_its_module_archive(plugin_bundle):
    m = read_manifest(plugin_bundle.bundle_dir)
    site = str(plugin_bundle.bundle_dir / m["site"])
    code = (f"import sys;sys.path.insert(0,{site!r});from istio_cni._modarchive import serve;print(serve({site!r}));"
            "import istio_cni.plugin as p, istio_cni.netfilter.iptc as i, istio_cni._fastpath as f;"
            "print(*(type(x.__spec__.loader).__name__ for x in (p, i, f)));"
            "print(p.__file__)")
    r = subprocess.run([str(plugin_bundle.bundle_dir / m["python"]), "-I", "-S", "-c", code],
                       env={"LD_LIBRARY_PATH": str(plugin_bundle.bundle_dir / m["lib"])},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    served, loaders, path = r.stdout.splitlines()
    assert served == "True"
    assert loaders == "_ArchiveFinder _ArchiveFinder ExtensionFileLoader"
    assert path == f"{site}/istio_cni/plugin.py"
