from __future__ import annotations

import pytest

from istio_cni.decide import REDIRECT, Skip, decide


def pod(containers=("app", "istio-proxy"), init=(), annotations=None, labels=None, proxy_env=None, proxy_args=None):
    def c(name):
        d = {"name": name}
        if name == "istio-proxy":
            if proxy_env:
                d["env"] = [{"name": k, "value": v} for k, v in proxy_env.items()]
            d["args"] = proxy_args if proxy_args is not None else ["proxy", "sidecar", "--domain", "x"]
        return d

    return {
        "metadata": {"name": "p", "namespace": "ns",
                     "annotations": {"sidecar.istio.io/status": "{}"} if annotations is None else annotations,
                     "labels": labels or {}},
        "spec": {"containers": [c(n) for n in containers], "initContainers": [c(n) for n in init]},
    }


def test_injected_pod_redirects():
    assert decide(pod()) is REDIRECT


def test_native_sidecar_counts():
    assert decide(pod(containers=("app",), init=("istio-proxy",))) is REDIRECT


@pytest.mark.parametrize(
    "p,word",
    [
        (pod(init=("istio-init",)), "istio-init"),
        (pod(proxy_env={"DISABLE_ENVOY": "true"}), "DISABLE_ENVOY"),
        (pod(containers=("app",)), "no istio-proxy"),
        (pod(proxy_args=["proxy", "router"]), "router"),
        (pod(labels={"sidecar.istio.io/inject": "false"}), "label"),
        (pod(annotations={"sidecar.istio.io/status": "{}", "sidecar.istio.io/inject": "false"}), "annotation"),
        (pod(annotations={}), "sidecar.istio.io/status"),
    ],
)
def test_skip_ladder(p, word):
    v = decide(p)
    assert isinstance(v, Skip) and word in v.reason


def test_label_wins_over_annotation():
    p = pod(labels={"sidecar.istio.io/inject": "true"},
            annotations={"sidecar.istio.io/status": "{}", "sidecar.istio.io/inject": "false"})
    assert decide(p) is REDIRECT


def test_istio_init_checked_first():
    v = decide(pod(containers=("app",), init=("istio-init",)))
    assert "istio-init" in v.reason


def test_empty_pod_object():
    assert isinstance(decide({}), Skip)
