"""The chain loopback + bridge(host-local) + istio-cni from the reference plugins, into a
fresh netns, for every supported cniVersion: istio-cni hands the bridge's result on."""

from __future__ import annotations

import json

import pytest

from istio_cni.tools import netns as nsutil
from istio_cni.tools.chain import Chain, PluginFailed, bridge_conflist, exec_plugin

# The Debian reference plugins (1.1.1) implement up to 1.0.0; 1.1.0 is tested below
# with a bridge result produced at 1.0.0 and handed to istio-cni as a 1.1.0 prevResult.
REF_VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]
ISTIO = {"type": "istio-cni", "log_level": "debug"}


def _chain(version, netns, tmp_path, cni_path, idx):
    host, pod = netns("host"), netns("pod")
    conflist = bridge_conflist(version, f"169.254.{100 + idx}.0/24", f"icnibr{idx}", str(tmp_path / "ipam"),
                               extra=[ISTIO])
    return host, pod, Chain(conflist, container_id=f"ctr{idx}", netns=nsutil.path(pod), cni_path=cni_path,
                            host_netns=nsutil.path(host))


@pytest.mark.parametrize("version", REF_VERSIONS)
def test_chain_passes_bridge_result_unchanged(version, netns, tmp_path, cni_path):
    idx = REF_VERSIONS.index(version)
    host, pod, chain = _chain(version, netns, tmp_path, cni_path, idx)
    result = chain.add()
    bridge_result = dict(chain.per_plugin[1][1])
    assert result == {**bridge_result, "cniVersion": version}
    # eth0 really exists in the pod with the bridge's address
    addr = nsutil.ip("-n", pod, "-j", "addr", "show", "eth0").stdout
    assert f"169.254.{100 + idx}." in addr
    if version >= "0.4.0":
        chain.check()
    chain.delete()
    chain.delete()  # DEL is idempotent across the chain


def test_istio_cni_110_prev_result(netns, tmp_path, cni_path):
    host, pod, chain = _chain("1.0.0", netns, tmp_path, cni_path, 7)
    chain.conflist["plugins"] = chain.conflist["plugins"][:2]
    prev = chain.add()
    conf = {"cniVersion": "1.1.0", "name": "icni-test", "type": "istio-cni",
            "prevResult": {**prev, "cniVersion": "1.1.0"}}
    out = exec_plugin("istio-cni", "ADD", conf, container_id="ctr7", netns=nsutil.path(pod), ifname="eth0",
                      cni_path=cni_path, host_netns=nsutil.path(host))
    assert out == conf["prevResult"]
    chain.delete()


def test_add_without_prev_result_gives_empty_result(netns, cni_path):
    pod = netns("pod")
    for version in REF_VERSIONS + ["1.1.0"]:
        out = exec_plugin("istio-cni", "ADD", {"cniVersion": version, "name": "n", "type": "istio-cni"},
                          container_id="c", netns=nsutil.path(pod), ifname="eth0", cni_path=cni_path)
        assert out == {"cniVersion": version}


def test_prev_result_converted_to_conf_version(netns, cni_path):
    pod = netns("pod")
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "169.254.9.2/24", "gateway": "169.254.9.1"}]}
    out = exec_plugin("istio-cni", "ADD", {"cniVersion": "0.4.0", "name": "n", "type": "istio-cni", "prevResult": prev},
                      container_id="c", netns=nsutil.path(pod), ifname="eth0", cni_path=cni_path)
    assert out == {"cniVersion": "0.4.0",
                   "ips": [{"address": "169.254.9.2/24", "gateway": "169.254.9.1", "version": "4"}]}


def test_plugin_stdout_single_json_on_error(netns, cni_path, tmp_path):
    with pytest.raises(PluginFailed) as ei:
        exec_plugin("istio-cni", "ADD", {"cniVersion": "1.0.0", "name": "n", "type": "istio-cni"},
                    container_id="c", netns=str(tmp_path / "gone"), ifname="eth0", cni_path=cni_path)
    assert ei.value.error["code"] == 8
    assert len(ei.value.stdout.strip().splitlines()) == 1
    json.loads(ei.value.stdout)
