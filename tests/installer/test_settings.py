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
