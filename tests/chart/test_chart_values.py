"""Bad values are refused before anything is applied, with a message naming the value."""

from __future__ import annotations

import jsonschema
import pytest
from support.chartlib import chart_schema, chart_values


def test_values_yaml_satisfies_its_own_schema():
    jsonschema.Draft7Validator.check_schema(chart_schema())
    jsonschema.validate(chart_values(), chart_schema())


@pytest.mark.parametrize("values, must_mention", [
    ({"netfilterBackend": "iptables"}, ["netfilterBackend", "auto", "legacy", "nft", "restore"]),
    ({"platform": "eks"}, ["platform", "openshift"]),
    ({"repair": {"mode": "fix"}}, ["repair", "mode", "label"]),
    ({"logLevel": "verbose"}, ["logLevel"]),
    ({"chained": "yes"}, ["chained", "true", "false"]),
    ({"cniBinDir": "opt/cni/bin"}, ["cniBinDir"]),
    ({"cniConfFileName": "/etc/cni/net.d/10-calico.conflist"}, ["cniConfFileName"]),
    ({"excludeNamespaces": "istio-system"}, ["excludeNamespaces", "array"]),
    ({"metrics": {"port": 70000}}, ["metrics", "port"]),
    ({"healthProbes": {"port": "8000"}}, ["healthProbes", "port", "integer"]),
    ({"securityContext": {"extraCapabilities": ["cap_net_admin"]}}, ["extraCapabilities"]),
    ({"rollingMaxUnavailable": "half"}, ["rollingMaxUnavailable"]),
    ({"podLookup": {"deadlineSeconds": 0}}, ["deadlineSeconds"]),
    ({"istioOwnedCNIConfigFileName": "02-istio-cni.conf"}, ["istioOwnedCNIConfigFileName"]),
    ({"logLvl": "debug"}, ["logLvl"]),  # a typo is an unknown key, not a silently ignored one
    ({"repair": {"labelPods": "yes"}}, ["labelPods", "true", "false"]),
    ({"repair": {"createEvents": "TRUE"}}, ["createEvents", "true", "false"]),
    ({"logLevel": "trace"}, ["logLevel", "panic", "fatal"]),
    # rules values.yaml states through patternProperties / allOf (helm-values-schema-json has no
    # annotation for item rules of its own, nor for properties of a map whose default is empty)
    ({"env": {"1BAD": "x"}}, ["env", "1BAD"]),
    ({"env": {"GOOD": ["x"]}}, ["env", "GOOD", "string"]),
    ({"securityContext": {"seccompProfile": {"type": "Bogus"}}}, ["seccompProfile", "RuntimeDefault"]),
    ({"securityContext": {"appArmorProfile": {"type": "Bogus"}}}, ["appArmorProfile", "Unconfined"]),
    ({"securityContext": {"seLinuxOptions": {"bogus": "x"}}}, ["seLinuxOptions", "bogus"]),
    ({"resources": {"limits": {"cpu": [1]}}}, ["limits", "cpu"]),
    ({"resources": {"limit": {}}}, ["resources", "limit"]),
    ({"imagePullSecrets": [""]}, ["imagePullSecrets", "minLength"]),
    ({"excludeNamespaces": ["Bad_NS"]}, ["excludeNamespaces", "Bad_NS"]),
    ({"nodeSelector": {"a": 1}}, ["nodeSelector", "string"]),
    ({"podLookup": {"retryIntervalSeconds": -1}}, ["retryIntervalSeconds"]),
])
def test_schema_rejects_with_a_readable_message(render_error, values, must_mention):
    err = render_error(values)
    assert "schema" in err, err
    for word in must_mention:
        assert word in err, f"{word!r} not in helm's message:\n{err}"


def test_free_form_values_stay_free_form(render):
    """The schema is strict where the chart reads the keys, and open where Kubernetes does."""
    toleration = {"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule", "tolerationSeconds": 5}
    m = render({"tolerations": [toleration],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "k", "operator": "In", "values": ["v"]}]}]}}},
                "resources": {"limits": {"cpu": 1, "memory": "200Mi"}},
                "securityContext": {"seLinuxOptions": {"type": "spc_t", "level": "s0"},
                                    "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}},
                "env": {"DEL_STANDIN_ON_UNINSTALL": "false", "_X1": 3}})
    assert toleration in m.daemonset["spec"]["template"]["spec"]["tolerations"]


def test_schema_rejects_a_bad_set_flag(render_error):
    err = render_error(None, "--set", "netfilterBackend=xtables")
    assert "netfilterBackend" in err and "legacy" in err, err


@pytest.mark.parametrize("values, must_mention", [
    ({"repair": {"hub": "gcr.io/istio-testing"}}, ["repair.hub", "inside the install-cni container"]),
    ({"repair": {"tag": "1.4"}}, ["repair.tag"]),
    ({"platform": "openshift", "istioOwnedCNIConfig": True}, ["istioOwnedCNIConfig", "chained"]),
    ({"chained": False}, ["cniConfFileName", "standalone"]),
])
def test_contradictory_settings_stop_the_render_with_an_explanation(render_error, values, must_mention):
    err = render_error(values)
    for word in must_mention:
        assert word in err, f"{word!r} not in helm's message:\n{err}"


def test_standalone_mode_with_a_file_name_renders(render):
    m = render({"chained": False, "cniConfFileName": "YYY-istio-cni.conf"})
    assert m.config["CHAINED_CNI_PLUGIN"] == "false"
    assert m.config["CNI_CONF_NAME"] == "YYY-istio-cni.conf"


# ---- the 2019 chart's values (istio/cni deployments/kubernetes/install/helm/istio-cni/values.yaml,
# as ../shared/research/istio-cni-seed.md section 5.1 records them, 2020-02) -------------------------

VALUES_2019 = {
    "hub": "gcr.io/istio-testing", "tag": "latest", "pullPolicy": "Always", "logLevel": "info",
    "cniBinDir": "/opt/cni/bin", "cniConfDir": "/etc/cni/net.d", "cniConfFileName": "",
    "excludeNamespaces": ["istio-system"], "podAnnotations": {}, "psp_cluster_role": "",
    "chained": "true",
    "repair": {"enabled": True, "hub": "gcr.io/istio-testing", "tag": "latest",
               "initContainerName": "istio-validation", "labelPods": "true", "createEvents": "true",
               "deletePods": "false", "brokenPodLabelKey": "cni.istio.io/uninitialized",
               "brokenPodLabelValue": "true"},
}
LOG_LEVELS_2019 = ("panic", "fatal", "error", "warn", "info", "debug")


def _merged(defaults: dict, override: dict) -> dict:
    """Helm's coalescing of a values file over the chart's defaults (maps merge, rest replaces)."""
    out = dict(defaults)
    for key, value in override.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.mark.parametrize("level", LOG_LEVELS_2019)
def test_the_whole_2019_values_table_satisfies_the_schema(level):
    values = _merged(chart_values(), {**VALUES_2019, "logLevel": level})
    jsonschema.validate(values, chart_schema())


@pytest.mark.parametrize("key", sorted(VALUES_2019))
def test_every_2019_key_is_known_to_the_schema(key):
    assert key in chart_schema()["properties"]
    if isinstance(VALUES_2019[key], dict) and VALUES_2019[key]:
        known = chart_schema()["properties"][key]["properties"]
        assert set(VALUES_2019[key]) <= set(known)


@pytest.mark.parametrize("level, ours", [("panic", "error"), ("fatal", "error"), ("error", "error"),
                                         ("warn", "warn"), ("info", "info"), ("debug", "debug")])
def test_2019_log_levels_map_to_our_nearest(render, level, ours):
    assert render({"logLevel": level}).config["LOG_LEVEL"] == ours


def test_2019_values_file_renders_with_the_2019_meanings(render):
    """The whole 2019 table except repair.hub/tag (refused with an explanation: the repair
    controller runs inside the node container now, see the README)."""
    repair = {k: v for k, v in VALUES_2019["repair"].items() if k not in ("hub", "tag")}
    m = render({**VALUES_2019, "repair": repair, "logLevel": "fatal"})
    assert m.config["LOG_LEVEL"] == "error"
    assert m.config["CHAINED_CNI_PLUGIN"] == "true"
    assert m.config["REPAIR_LABEL_PODS"] == "true"   # labelPods "true", deletePods "false"
    assert m.config["REPAIR_DELETE_PODS"] == "false"
    assert m.config["REPAIR_CREATE_EVENTS"] == "true"
    assert "ClusterRole/istio-cni-repair" in m.names()


def test_2019_string_false_means_false(render):
    m = render({"chained": "false", "cniConfFileName": "YYY-istio-cni.conf",
                "repair": {"createEvents": "false", "deletePods": "false", "labelPods": "false"}})
    assert m.config["CHAINED_CNI_PLUGIN"] == "false"
    assert m.config["REPAIR_CREATE_EVENTS"] == "false"
    assert m.config["REPAIR_REPAIR_PODS"] == "true"
    assert "ClusterRole/istio-cni-repair" not in m.names()  # no events: no grant
