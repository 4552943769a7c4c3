from __future__ import annotations

import pytest

from istio_cni import errors
from istio_cni.config import parse_conf, parse_k8s_args

MODERN = {
    "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "istio-cni",
    "plugin_log_level": "debug", "cni_agent_run_dir": "/var/run/istio-cni",
    "exclude_namespaces": ["istio-system", "kube-system"], "pod_namespace": "istio-system",
    "native_nftables": False, "ambient_enabled": False, "some_future_key": {"x": 1},
}
SEED = {
    "cniVersion": "0.3.1", "name": "k8s-pod-network", "type": "istio-cni", "log_level": "info",
    "kubernetes": {"kubeconfig": "/etc/cni/net.d/ZZZ-istio-cni-kubeconfig", "cni_bin_dir": "/opt/cni/bin",
                   "exclude_namespaces": ["istio-system"], "intercept_type": "iptables",
                   "k8s_api_root": "https://10.0.0.1:443", "node_name": "node-a"},
}


def test_modern_dialect():
    c = parse_conf(MODERN)
    assert c.kubeconfig == "/var/run/istio-cni/istio-cni-kubeconfig"
    assert c.agent_socket == "/var/run/istio-cni/agent.sock"
    assert c.exclude_namespaces == ("istio-system", "kube-system")
    assert c.log_level == "debug" and c.pod_namespace == "istio-system"
    assert c.netfilter_backend == "auto"
    assert (c.lookup_attempts, c.retry_interval) == (30, 1.0)


def test_seed_dialect():
    c = parse_conf(SEED)
    assert c.kubeconfig == "/etc/cni/net.d/ZZZ-istio-cni-kubeconfig"
    assert c.exclude_namespaces == ("istio-system",)
    assert c.node_name == "node-a" and c.k8s_api_root == "https://10.0.0.1:443"
    assert c.log_level == "info"


def test_native_nftables_selects_nft():
    assert parse_conf({**MODERN, "native_nftables": True}).netfilter_backend == "nft"
    assert parse_conf({**MODERN, "native_nftables": True, "netfilter_backend": "iptc"}).netfilter_backend == "iptc"


def test_ambient_refused_code_7():
    with pytest.raises(errors.InvalidNetworkConfig) as ei:
        parse_conf({**MODERN, "ambient_enabled": True})
    assert ei.value.code == 7 and "ambient" in ei.value.msg


@pytest.mark.parametrize(
    "patch,name",
    [({"exclude_namespaces": [1]}, "exclude_namespaces"), ({"plugin_log_level": 3}, "plugin_log_level"),
     ({"netfilter_backend": "iptables"}, "netfilter_backend"), ({"kubernetes": []}, "kubernetes"),
     ({"lookup_retry_interval_seconds": 0}, "lookup_retry_interval_seconds"),
     ({"lookup_deadline_seconds": "10"}, "lookup_deadline_seconds"), ({"native_nftables": "yes"}, "native_nftables")],
)
def test_bad_types_name_the_key(patch, name):
    with pytest.raises(errors.InvalidNetworkConfig) as ei:
        parse_conf({**MODERN, **patch})
    assert name in (ei.value.msg + ei.value.details)


def test_deadline_and_interval():
    c = parse_conf({**MODERN, "lookup_deadline_seconds": 2, "lookup_retry_interval_seconds": 0.5})
    assert c.lookup_attempts == 5 and c.retry_interval == 0.5
    assert parse_conf({**MODERN, "lookup_deadline_seconds": 0}).lookup_attempts == 1


def test_k8s_args_as_kubelet_sends():
    a = parse_k8s_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"
                       "K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;OTHER=x")
    assert (a.pod_namespace, a.pod_name, a.infra_container_id, a.pod_uid) == ("default", "web-0", "abc", "u-1")


def test_k8s_args_unknown_without_ignore():
    with pytest.raises(errors.InvalidNetworkConfig) as ei:
        parse_k8s_args("K8S_POD_NAME=x;FOO=1")
    assert "FOO" in ei.value.details


def test_k8s_args_malformed():
    with pytest.raises(errors.InvalidNetworkConfig):
        parse_k8s_args("K8S_POD_NAME")


def test_empty_args_not_a_pod():
    assert parse_k8s_args("").pod_name == ""
