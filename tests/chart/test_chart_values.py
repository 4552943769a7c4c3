"""Bad values are refused before anything is applied, with a message naming the value."""

from __future__ import annotations

import jsonschema
import pytest

from chartlib import chart_schema, chart_values


def test_values_yaml_satisfies_its_own_schema():
    jsonschema.Draft7Validator.check_schema(chart_schema())
    jsonschema.validate(chart_values(), chart_schema())


@pytest.mark.parametrize("values, must_mention", [
    ({"netfilterBackend": "iptables"}, ["netfilterBackend", "auto", "legacy", "nft", "restore"]),
    ({"platform": "eks"}, ["platform", "openshift"]),
    ({"repair": {"mode": "fix"}}, ["repair", "mode", "label"]),
    ({"logLevel": "verbose"}, ["logLevel"]),
    ({"chained": "yes"}, ["chained", "boolean"]),
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
    ({"repair": {"labelPods": "true"}}, ["labelPods", "boolean"]),
])
def test_schema_rejects_with_a_readable_message(render_error, values, must_mention):
    err = render_error(values)
    assert "schema" in err, err
    for word in must_mention:
        assert word in err, f"{word!r} not in helm's message:\n{err}"


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
