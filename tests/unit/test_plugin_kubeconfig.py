from __future__ import annotations

import pytest
import yaml

from istio_cni.kubeconfig import KubeconfigError, load, parse_yaml_subset

SAMPLES = [
    "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: https://127.0.0.1:6443\n"
    "    certificate-authority-data: QUJD\n  name: c\ncontexts:\n- context:\n    cluster: c\n    user: u\n"
    "  name: ctx\ncurrent-context: ctx\nusers:\n- name: u\n  user:\n    token: \"abc\"\n",
    "a:\n  b: 'it''s'\n  c: \"q\\\"x\"  # comment\n  d: [] \n  e: {}\n  f:\n  - 1\n  - two\n  g: true\n",
    "list:\n  - name: x\n    value: y\n  -\n    name: z\n",
    "k: http://host:80/path # trailing\nurl: a#b\n",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_subset_matches_pyyaml(text):
    expected = yaml.safe_load(text)
    got = parse_yaml_subset(text)
    # PyYAML types ints; the subset keeps scalars as strings except booleans/null.
    def norm(v):
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, bool) or v is None:
            return v
        return str(v)
    assert norm(got) == norm(expected)


@pytest.mark.parametrize("text", ["a: &x 1\n", "a: |\n  multi\n", "a:\n\tb: 1\n", "a: 1\n b: 2\n"])
def test_subset_refuses_unsupported(text):
    with pytest.raises(KubeconfigError):
        parse_yaml_subset(text)


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
    with pytest.raises(KubeconfigError, match="nope"):
        load(str(p))
