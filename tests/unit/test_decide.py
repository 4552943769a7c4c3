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


# ---- parity with upstream's ladder (cni/pkg/plugin/plugin.go, kubernetes.go) -------------

def test_regular_container_named_istio_init_skips_as_upstream():
    v = decide(pod(containers=("app", "istio-init", "istio-proxy")))
    assert isinstance(v, Skip) and "istio-init" in v.reason


@pytest.mark.parametrize("value, skipped", [
    ("1", True), ("t", True), ("T", True), ("TRUE", True), ("true", True), ("True", True),
    ("0", False), ("false", False), ("F", False),
    # Go's strconv.ParseBool refuses these; upstream ignores the error and redirects.
    ("yes", False), ("on", False), ("tRUE", False), (" true", False), ("", False), ("y", False),
])
def test_disable_envoy_is_go_parse_bool(value, skipped):
    v = decide(pod(proxy_env={"DISABLE_ENVOY": value}))
    assert (isinstance(v, Skip) and "DISABLE_ENVOY" in v.reason) is skipped


@pytest.mark.parametrize("value, skipped", [
    ("0", True), ("f", True), ("F", True), ("FALSE", True), ("false", True), ("False", True),
    ("true", False), ("1", False),
    # Unparsable: upstream ignores the parse error and goes on to redirect.
    ("no", False), ("off", False), ("n", False), ("fAlse", False), (" false", False), ("disabled", False),
])
@pytest.mark.parametrize("where", ["label", "annotation"])
def test_inject_is_go_parse_bool(value, skipped, where):
    ann = {"sidecar.istio.io/status": "{}"}
    labels = {}
    (labels if where == "label" else ann)["sidecar.istio.io/inject"] = value
    v = decide(pod(annotations=ann, labels=labels))
    assert (v is not REDIRECT) is skipped


def test_empty_label_still_wins_over_a_false_annotation():
    p = pod(labels={"sidecar.istio.io/inject": ""},
            annotations={"sidecar.istio.io/status": "{}", "sidecar.istio.io/inject": "false"})
    assert decide(p) is REDIRECT


@pytest.mark.parametrize("args, redirect", [
    (["proxy", "sidecar"], True),
    (["proxy", "router"], False),
    (["proxy", "waypoint", "x"], False),
    (["proxy", ""], True),           # empty type: upstream only skips a non-empty, non-sidecar one
    (["proxy"], True),               # too short: no type
    ([], True),
    (["--log", "proxy", "router"], True),  # upstream reads args[1] only when args[0] == "proxy"
    (["router", "proxy"], True),
])
def test_proxy_type_from_args_as_upstream(args, redirect):
    assert (decide(pod(proxy_args=args)) is REDIRECT) is redirect


def test_malformed_pod_parts_do_not_raise():
    assert isinstance(decide({"metadata": "x", "spec": {"containers": "y", "initContainers": [1, None]}}), Skip)
    assert isinstance(decide(None), Skip)
