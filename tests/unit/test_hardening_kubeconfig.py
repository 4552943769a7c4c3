"""Regression tests (issue 13, items 1 and 4): the kubeconfig is read as client-go reads it,
or refused with code 7 naming the field; no credential shows in a message or a repr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import istio_cni
from istio_cni import errors
from istio_cni.kubeconfig import Cluster, KubeconfigError, load

# The directory istio_cni is imported from (src/ in the dev venv, site-packages when `make
# wheel` tests an installed wheel): the child interpreters run with -I -S and get only this.
SRC = Path(istio_cni.__file__).resolve().parent.parent
TOKEN = "kc-s3cr3t-t0ken-value"
KEY = "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0t"  # base64 of a PEM header line

YAML = """apiVersion: v1
clusters:
- cluster:
{tls}    server: https://127.0.0.1:6443
  name: c
contexts:
- context:
    cluster: c
    user: u
  name: x
current-context: x
kind: Config
users:
- name: u
  user:
    token: {token}
    client-key-data: {key}
"""


def write(tmp_path, text, name="kc") -> str:
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(p)


def yaml_kc(tmp_path, insecure: str | None = None, **over) -> str:
    tls = f"    insecure-skip-tls-verify: {insecure}\n" if insecure is not None else ""
    return write(tmp_path, YAML.format(tls=tls, token=over.get("token", TOKEN), key=over.get("key", KEY)))


def json_kc(tmp_path, cluster: dict, user: dict | None = None) -> str:
    return write(tmp_path, json.dumps({
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443", **cluster}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}], "current-context": "x",
        "users": [{"name": "u", "user": user or {"token": TOKEN}}]}))


# ---- booleans: what yaml.v2 + encoding/json accept, nothing else ------------------------------

@pytest.mark.parametrize("spelling", ["no", "No", "NO", "off", "Off", "OFF", "false", "False", "FALSE", "n", "N"])
def test_yaml_false_spellings_keep_verification_on(tmp_path, spelling):
    assert load(yaml_kc(tmp_path, spelling)).insecure is False


@pytest.mark.parametrize("spelling", ["yes", "Yes", "on", "ON", "true", "True", "TRUE", "y", "Y"])
def test_yaml_true_spellings_skip_verification(tmp_path, spelling):
    assert load(yaml_kc(tmp_path, spelling)).insecure is True


@pytest.mark.parametrize("spelling", ['"false"', "'false'", "0", "1", "disabled", '"true"', "[]", "{}", "0.0",
                                      "!!str false"])
def test_yaml_non_booleans_are_code_7_naming_the_field(tmp_path, spelling):
    with pytest.raises(KubeconfigError) as ei:
        load(yaml_kc(tmp_path, spelling))
    assert ei.value.code == 7
    assert "clusters[0].cluster.insecure-skip-tls-verify" in str(ei.value)


@pytest.mark.parametrize("value", ["false", "true", 0, 1, "no", [], None])
def test_json_booleans_are_json_booleans(tmp_path, value):
    path = json_kc(tmp_path, {"insecure-skip-tls-verify": value})
    if value is None:
        assert load(path).insecure is False  # null: absent
        return
    with pytest.raises(KubeconfigError, match="insecure-skip-tls-verify"):
        load(path)


def test_json_true_and_false(tmp_path):
    assert load(json_kc(tmp_path, {"insecure-skip-tls-verify": True})).insecure is True
    assert load(json_kc(tmp_path, {"insecure-skip-tls-verify": False})).insecure is False


# ---- the YAML examples of the issue: read as PyYAML reads them, or refused ------------------------

def test_yaml_comment_after_a_quote_is_read_as_pyyaml_reads_it(tmp_path):
    text = YAML.format(tls="", token=TOKEN, key=KEY)
    text = text.replace("    user: u\n", "    user: u\n    namespace: O'Brien # owner\n")
    want = yaml.safe_load(text)["contexts"][0]["context"]["namespace"]
    assert load(write(tmp_path, text)).namespace == want == "O'Brien"


def test_dash_without_space_is_a_key_not_a_list(tmp_path):
    text = YAML.format(tls="", token=TOKEN, key=KEY) + "a:\n-b: c\n"
    assert yaml.safe_load(text)["-b"] == "c"
    assert load(write(tmp_path, text)).server == "https://127.0.0.1:6443"


@pytest.mark.parametrize("text,what", [
    ("\ufeff" + YAML.format(tls="", token=TOKEN, key=KEY), "byte-order mark"),
    (YAML.format(tls="", token=TOKEN, key=KEY) + "---\nkind: Config\n", "another document"),
    ("a: 1\n\tb: 2\n", "not valid YAML"),
    ("clusters: " + "[" * 3000 + "]" * 3000, "kubeconfig"),
    ("", "empty"),
])
def test_unreadable_files_are_code_7(tmp_path, text, what):
    with pytest.raises(KubeconfigError, match=what) as ei:
        load(write(tmp_path, text))
    assert ei.value.code == 7


def test_invalid_utf8_is_code_7(tmp_path):
    with pytest.raises(KubeconfigError, match="not UTF-8"):
        load(write(tmp_path, YAML.format(tls="", token=TOKEN, key=KEY).encode() + b"# \xff\n"))


# ---- wrong types, bad base64, bad ports: code 7 naming the field --------------------------------

@pytest.mark.parametrize("cluster,user,field", [
    ({"server": 6443}, None, "clusters[0].cluster.server"),
    ({"server": "https://h:99999"}, None, "clusters[0].cluster.server"),
    ({"server": "https://h:port"}, None, "clusters[0].cluster.server"),
    ({"server": "https://::1:6443"}, None, "clusters[0].cluster.server"),
    ({"certificate-authority-data": "not base64!"}, None, "clusters[0].cluster.certificate-authority-data"),
    ({"certificate-authority-data": "QUJ"}, None, "clusters[0].cluster.certificate-authority-data"),
    ({"certificate-authority": ["/ca"]}, None, "clusters[0].cluster.certificate-authority"),
    ({}, {"token": 12345}, "users[0].user.token"),
    ({}, {"token": TOKEN, "client-key-data": "QUJD=QUJD"}, "users[0].user.client-key-data"),
    ({}, {"tokenFile": "/var/run/secrets/\x00token"}, "users[0].user.tokenFile"),
])
def test_wrong_fields_are_code_7_naming_the_field(tmp_path, cluster, user, field):
    with pytest.raises(KubeconfigError) as ei:
        load(json_kc(tmp_path, cluster, user))
    assert ei.value.code == 7 and field in str(ei.value)
    assert TOKEN not in str(ei.value)


def test_wrong_shapes_and_duplicates_are_code_7(tmp_path):
    for doc in ({"clusters": {"c": {}}}, {"users": [[]]}, {"contexts": [{"name": "x", "context": "c"}]},
                {"clusters": [{"name": "c"}, {"name": "c"}]}, [], "text"):
        with pytest.raises(KubeconfigError) as ei:
            load(write(tmp_path, json.dumps(doc)))
        assert ei.value.code == 7


def test_kubeconfig_error_propagates_as_code_7_not_999():
    err = KubeconfigError("kubeconfig /x: users[0].user.token must be a string")
    assert isinstance(err, errors.CNIError) and isinstance(err, ValueError)
    assert err.to_dict("1.0.0")["code"] == 7


# ---- secrets ------------------------------------------------------------------------------------

def test_repr_hides_token_and_key_data(tmp_path):
    c = load(yaml_kc(tmp_path, "false"))
    assert c.token == TOKEN and c.client_key_data == KEY
    for text in (repr(c), str(c), repr([c])):
        assert TOKEN not in text and KEY not in text
    assert "server='https://127.0.0.1:6443'" in repr(c)


def test_loaded_credentials_are_redacted_everywhere(tmp_path):
    load(yaml_kc(tmp_path, "false"))
    err = errors.InvalidNetworkConfig("boom", f"token was {TOKEN}")
    assert TOKEN not in json.dumps(err.to_dict("1.0.0"))


def test_yaml_error_messages_quote_nothing_from_the_file(tmp_path):
    text = YAML.format(tls="", token=f"!{TOKEN} x", key=KEY)
    with pytest.raises(KubeconfigError) as ei:
        load(write(tmp_path, text))
    assert TOKEN not in str(ei.value)


def test_json_kubeconfig_never_imports_yaml(tmp_path):
    path = json_kc(tmp_path, {})
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from istio_cni.kubeconfig import load\n"
            "load(sys.argv[2]); print(','.join(m for m in ('yaml', 're', 'json') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(SRC), path], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_cluster_record_fields_unchanged():
    # the agent and transport read these names
    assert Cluster.__slots__ == ("server", "ca_file", "ca_data", "insecure", "token", "token_file",
                                 "client_cert_file", "client_cert_data", "client_key_file", "client_key_data",
                                 "namespace")
