from __future__ import annotations

import pytest
import yaml

from istio_cni.kubeconfig import KubeconfigError, load

SAMPLES = [
    "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: https://127.0.0.1:6443\n"
    "    certificate-authority-data: QUJD\n  name: c\ncontexts:\n- context:\n    cluster: c\n    user: u\n"
    "  name: ctx\ncurrent-context: ctx\nusers:\n- name: u\n  user:\n    token: \"abc\"\n",
    # flow style, comments, quoting: whatever PyYAML reads
    "clusters: [{name: c, cluster: {server: 'https://h:1/p' }}]  # c\ncontexts:\n- {name: x, context: {cluster: c}}\n",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_yaml_kubeconfig_read_as_pyyaml_reads_it(tmp_path, text):
    p = tmp_path / "kc"
    p.write_text(text)
    doc = yaml.safe_load(text)
    c = load(str(p))
    assert c.server == doc["clusters"][0]["cluster"]["server"].rstrip("/")
    assert c.ca_data == doc["clusters"][0]["cluster"].get("certificate-authority-data", "")


def test_load_conformance_kubeconfigs(conformance):
    for name in ("kubeconfig-tls", "kubeconfig-skip-tls", "kubeconfig-newhost"):
        c = load(str(conformance / "install" / "modern" / name))
        assert c.server.startswith("https://") and c.token
    assert load(str(conformance / "install" / "modern" / "kubeconfig-skip-tls")).insecure


def test_load_json(tmp_path):
    p = tmp_path / "kc"
    p.write_text('{"clusters":[{"name":"c","cluster":{"server":"https://[::1]:6443/"}}],'
                 '"contexts":[{"name":"x","context":{"cluster":"c","user":"u"}}],"current-context":"x",'
                 '"users":[{"name":"u","user":{"tokenFile":"/t"}}]}')
    c = load(str(p))
    assert c.server == "https://[::1]:6443" and c.token_file == "/t"


def test_missing_and_bad(tmp_path):
    with pytest.raises(KubeconfigError, match="cannot read"):
        load(str(tmp_path / "none"))
    p = tmp_path / "kc"
    p.write_text("current-context: nope\ncontexts: []\n")
    with pytest.raises(KubeconfigError, match="current-context names no entry"):
        load(str(p))
