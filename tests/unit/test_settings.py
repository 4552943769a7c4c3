"""Settings: upstream names accepted, flag > env > default, bad values named, --help complete."""

from __future__ import annotations

import subprocess
import sys

import pytest

from istio_cni_installer.settings import SPECS, SettingError, parse


def test_defaults_are_upstreams():
    s = parse([], {"KUBERNETES_NODE_NAME": "n"})
    assert s.mounted_cni_net_dir == "/host/etc/cni/net.d" and s.chained is True
    assert s.kubeconfig_mode == 0o600 and s.cni_agent_run_dir == "/var/run/istio-cni"
    assert s.exclude_namespaces == ("kube-system",) and s.k8s_service_protocol == "https"
    assert s.kubeconfig_host_path == "/var/run/istio-cni/istio-cni-kubeconfig"


def test_flag_beats_env_and_upstream_aliases_work():
    s = parse(["--log-level", "debug"], {"LOG_LEVEL": "error", "KUBECONFIG_FILENAME": "kc",
                                         "NODE_NAME": "n2", "SKIP_CNI_BINARIES": "istio-cni, x"})
    assert s.log_level == "debug" and s.kubecfg_file_name == "kc" and s.node_name == "n2"
    assert s.skip_cni_binaries == ("istio-cni", "x")


@pytest.mark.parametrize("env,setting,value", [
    ({"KUBECONFIG_MODE": "rw-"}, "KUBECONFIG_MODE", "rw-"),
    ({"CHAINED_CNI_PLUGIN": "maybe"}, "CHAINED_CNI_PLUGIN", "maybe"),
    ({"MOUNTED_CNI_NET_DIR": "relative/dir"}, "MOUNTED_CNI_NET_DIR", "relative/dir"),
    ({"KUBERNETES_SERVICE_PORT": "70000"}, "KUBERNETES_SERVICE_PORT", "70000"),
    ({"CNI_CONF_NAME": "../10-x.conflist"}, "CNI_CONF_NAME", "../10-x.conflist"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL", "loud"),
    ({"NETFILTER_BACKEND": "pf"}, "NETFILTER_BACKEND", "pf"),
    ({"CNI_NETWORK_CONFIG": "{not json"}, "CNI_NETWORK_CONFIG", "{not json"),
    ({"CNI_NETWORK_CONFIG": '{"type": "istio-cni", "t": "__SERVICEACCOUNT_TOKEN__"}'},
     "CNI_NETWORK_CONFIG", None),
    ({"CNI_NETWORK_CONFIG_FILE": "/nonexistent/template"}, "CNI_NETWORK_CONFIG_FILE", "/nonexistent/template"),
    ({"CHAINED_CNI_PLUGIN": "false", "ISTIO_OWNED_CNI_CONFIG": "true"}, "ISTIO_OWNED_CNI_CONFIG", "true"),
])
def test_bad_value_names_setting_and_value(env, setting, value):
    env = dict(env, KUBERNETES_NODE_NAME="n")
    with pytest.raises(SettingError) as ei:
        parse([], env)
    assert ei.value.setting == setting
    if value is not None:
        assert repr(value) in str(ei.value)


def test_process_refuses_to_start_on_bad_setting(tmp_path):
    r = subprocess.run([sys.executable, "-m", "istio_cni_installer"], capture_output=True, text=True,
                       env={"KUBECONFIG_MODE": "9z9", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert r.returncode == 2
    assert "invalid setting KUBECONFIG_MODE='9z9'" in r.stderr


def test_help_documents_every_setting():
    r = subprocess.run([sys.executable, "-m", "istio_cni_installer", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for _field, flag, env, _default, _conv, _help in SPECS:
        assert flag in text
        for name in env:
            assert name in text, f"{name} not documented in --help"


# ---- repair controller settings (upstream's REPAIR_* names) -----------------------------------

def repair_env(**env):
    return parse([], dict(env, KUBERNETES_NODE_NAME="n"))


@pytest.mark.parametrize("env, mode", [
    ({}, "repair"),
    ({"REPAIR_REPAIR_PODS": "true", "REPAIR_LABEL_PODS": "false", "REPAIR_DELETE_PODS": "false"}, "repair"),
    ({"REPAIR_REPAIR_PODS": "false", "REPAIR_LABEL_PODS": "true", "REPAIR_DELETE_PODS": "false"}, "label"),
    ({"REPAIR_DELETE_PODS": "true"}, "delete"),
    ({"REPAIR_DELETE-PODS": "true"}, "delete"),  # the 2019 binary's spelling
    ({"REPAIR_MODE": "label", "REPAIR_DELETE_PODS": "true"}, "label"),  # explicit wins
])
def test_repair_mode_from_the_upstream_switches(env, mode):
    s = repair_env(**env)
    assert s.repair_mode == mode and s.repair_enabled is True


def test_more_than_one_mode_switch_is_refused_naming_them():
    with pytest.raises(SettingError) as ei:
        repair_env(REPAIR_REPAIR_PODS="true", REPAIR_DELETE_PODS="true")
    assert ei.value.setting == "REPAIR_REPAIR_PODS and REPAIR_DELETE_PODS"
    assert "only one repair mode" in str(ei.value)


def test_all_mode_switches_off_turns_repair_off_like_upstream():
    s = repair_env(REPAIR_REPAIR_PODS="false", REPAIR_LABEL_PODS="false", REPAIR_DELETE_PODS="false")
    assert s.repair_enabled is False


def test_run_as_daemon_false_is_refused_while_repair_is_on():
    with pytest.raises(SettingError) as ei:
        repair_env(REPAIR_RUN_AS_DAEMON="false")
    assert ei.value.setting == "REPAIR_RUN_AS_DAEMON" and "one-shot" in str(ei.value)
    assert repair_env(REPAIR_RUN_AS_DAEMON="false", REPAIR_ENABLED="false").repair_enabled is False
    assert repair_env(REPAIR_RUN_AS_DAEMON="true").repair_run_as_daemon is True


def test_repair_detection_and_action_settings_are_read():
    s = repair_env(REPAIR_SIDECAR_ANNOTATION="example.com/injected", REPAIR_INIT_CONTAINER_NAME="check",
                   REPAIR_INIT_CONTAINER_EXIT_CODE="7", REPAIR_INIT_CONTAINER_TERMINATION_MESSAGE="no rules",
                   REPAIR_BROKEN_POD_LABEL_KEY="example.com/broken", REPAIR_BROKEN_POD_LABEL_VALUE="yes",
                   REPAIR_CREATE_EVENTS="false", REPAIR_LABEL_SELECTORS="app in (a, b),!canary",
                   REPAIR_FIELD_SELECTORS="status.phase=Running", REPAIR_NODE_NAME="node-b")
    assert (s.repair_sidecar_annotation, s.repair_init_container_name, s.repair_init_container_exit_code,
            s.repair_init_container_termination_message) == ("example.com/injected", "check", 7, "no rules")
    assert (s.repair_broken_pod_label_key, s.repair_broken_pod_label_value) == ("example.com/broken", "yes")
    assert s.repair_create_events is False
    assert (s.repair_label_selectors, s.repair_field_selectors) == ("app in (a, b),!canary", "status.phase=Running")
    assert s.repair_node_name == "node-b" and s.node_name == "n"


@pytest.mark.parametrize("env, setting", [
    ({"REPAIR_INIT_CONTAINER_EXIT_CODE": "300"}, "REPAIR_INIT_CONTAINER_EXIT_CODE"),
    ({"REPAIR_BROKEN_POD_LABEL_KEY": "not a key"}, "REPAIR_BROKEN_POD_LABEL_KEY"),
    ({"REPAIR_BROKEN_POD_LABEL_VALUE": "-bad-"}, "REPAIR_BROKEN_POD_LABEL_VALUE"),
    ({"REPAIR_LABEL_SELECTORS": "app x"}, "REPAIR_LABEL_SELECTORS"),
    ({"REPAIR_FIELD_SELECTORS": "status.phase"}, "REPAIR_FIELD_SELECTORS"),
    ({"REPAIR_LABEL_PODS": "maybe"}, "REPAIR_LABEL_PODS"),
    ({"REPAIR_MODE": "fix"}, "REPAIR_MODE"),
])
def test_bad_repair_values_are_named(env, setting):
    with pytest.raises(SettingError) as ei:
        repair_env(**env)
    assert ei.value.setting == setting


def test_rewrite_rate_limit_names_and_their_deprecated_aliases(monkeypatch):
    import io

    from istio_cni.log import log

    s = repair_env(REWRITE_BURST="3", REWRITE_RATE="2.5")
    assert (s.rewrite_burst, s.rewrite_rate) == (3, 2.5)
    sink = io.StringIO()
    monkeypatch.setattr(log, "stream", sink)
    old = repair_env(REPAIR_BURST="4", REPAIR_RATE="1")
    assert (old.rewrite_burst, old.rewrite_rate) == (4, 1.0)
    assert '"name":"REPAIR_BURST","use":"REWRITE_BURST"' in sink.getvalue()
    assert repair_env(REWRITE_BURST="5", REPAIR_BURST="4").rewrite_burst == 5  # the new name wins


_TYPES = {"str": str, "bool": bool, "int": int, "float": float, "tuple[str, ...]": tuple, "None": type(None)}


def test_settings_annotations_name_every_spec_in_order_with_the_defaults_type():
    """``Settings``' annotations (for the type checker) stay in step with SPECS: same fields,
    same order, and each default parses to a value of the annotated type."""
    from istio_cni_installer.settings import Settings

    assert list(Settings.__annotations__) == [spec[0] for spec in SPECS]
    s = parse([], {"KUBERNETES_NODE_NAME": "n"})
    for field, annotation in Settings.__annotations__.items():
        kinds = tuple(_TYPES[part] for part in annotation.split(" | "))
        value = getattr(s, field)
        assert isinstance(value, kinds), (field, annotation, value)
        assert not isinstance(value, bool) or bool in kinds, (field, annotation, value)
