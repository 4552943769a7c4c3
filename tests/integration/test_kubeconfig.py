"""Kubeconfig content against upstream's goldens; mode; rotation through a real ..data swap."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from support.installer_fixtures import project_token

from istio_cni_installer.kubeconfig import Kubeconfig, KubeconfigWriteError, render, server_url
from istio_cni_installer.settings import parse

TOKEN = "service_account_token_string"


@pytest.mark.parametrize("golden,host,skip", [
    ("kubeconfig-tls", "10.96.0.1", False),
    ("kubeconfig-skip-tls", "10.96.0.1", True),
    ("kubeconfig-newhost", "50.76.2.1", False),
])
def test_render_matches_upstream_golden(conformance, golden, host, skip):
    d = conformance / "install" / "modern"
    ca = (d / "kube-ca.crt").read_bytes()
    text = render(server_url("https", host, 443), TOKEN, None if skip else ca, skip)
    # Upstream writes YAML; we write the same document as JSON (the plugin's fast path).
    assert text.lstrip().startswith("{")
    assert json.loads(text) == yaml.safe_load((d / golden).read_text())


def test_rendered_kubeconfig_is_read_by_the_plugin_without_yaml(tmp_path):
    """The installer's file takes the plugin's JSON fast path: no PyYAML import per ADD."""
    path = tmp_path / "kc"
    path.write_text(render(server_url("https", "fd00::1", 6443), TOKEN, b"-----CA-----", False))
    code = (
        "import sys; from istio_cni import kubeconfig as k; c = k.load(sys.argv[1]);"
        "assert c.server == 'https://[fd00::1]:6443', c.server;"
        "assert 'yaml' not in sys.modules, 'PyYAML imported for the installer kubeconfig'"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)


def test_ipv6_server_is_bracketed():
    assert server_url("https", "fd00::1", 6443) == "https://[fd00::1]:6443"


def _settings(lay, **env):
    base = lay.env()
    base.update(env)
    return parse([], base)


def test_written_0600_into_run_dir_and_rewritten_on_rotation(host_layout, conformance):
    d = conformance / "install" / "modern"
    project_token(host_layout.sa_dir, {"token": (d / "token-foo").read_bytes(),
                                       "ca.crt": (d / "kube-ca.crt").read_bytes()})
    kc = Kubeconfig(_settings(host_layout))
    assert kc.ensure() is True
    path = host_layout.run_dir / "istio-cni-kubeconfig"
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["users"][0]["user"]["token"] == "foo"
    assert not any(host_layout.net_dir.iterdir()), "nothing goes into the shared CNI net dir"
    assert kc.ensure() is False  # unchanged: no write
    project_token(host_layout.sa_dir, {"token": (d / "token-bar").read_bytes(),
                                       "ca.crt": (d / "kube-ca.crt").read_bytes()})
    assert kc.check() == [f"kubeconfig {path} is stale (token or server changed)"]
    assert kc.ensure() is True
    assert json.loads(path.read_text())["users"][0]["user"]["token"] == "bar"
    path.chmod(0o644)
    assert kc.check() == [f"kubeconfig {path} has mode 644"]


def test_missing_service_host_is_named(host_layout):
    kc = Kubeconfig(_settings(host_layout, KUBERNETES_SERVICE_HOST=""))
    with pytest.raises(KubeconfigWriteError, match="KUBERNETES_SERVICE_HOST"):
        kc.ensure()


def test_missing_ca_names_the_file(host_layout):
    kc = Kubeconfig(_settings(host_layout, KUBE_CA_FILE=str(host_layout.root / "nope.crt")))
    with pytest.raises(KubeconfigWriteError, match="KUBE_CA_FILE .*nope.crt"):
        kc.ensure()
