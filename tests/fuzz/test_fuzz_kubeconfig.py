"""Differential fuzz: kubeconfig loading against PyYAML + a plain reference resolution.

Generated kubeconfigs (right and wrong types, YAML 1.1 boolean spellings, good and bad
base64 and server URLs, duplicate names, dangling references), written as JSON or YAML,
are read by ``istio_cni.kubeconfig.load`` and by the reference below: stdlib ``json`` for
JSON text, otherwise PyYAML's safe loader with yaml.v2's extra ``y``/``n`` booleans and
timestamps kept as strings (what sigs.k8s.io/yaml gives client-go), then client-go's rules
written out plainly. Both must accept with the same result or both refuse; a refusal is a
code-7 ``KubeconfigError``; neither its message nor ``repr`` of the result carries a token.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from hypothesis import event, given, settings, strategies as st

from istio_cni.kubeconfig import KubeconfigError, load

FUZZ = settings.get_profile("fuzz")
SECRET = "fuzz-s3cr3t-t0ken-Zq8"
B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")

# (server, usable?) - what transport can dial: http(s), a host, port 1-65535, IPv6 bracketed.
SERVERS = [("https://127.0.0.1:6443", True), ("https://[::1]:6443/", True), ("http://api", True),
           ("https://api.example:443/prefix", True), ("https://h:", True), ("https://h:0", False),
           ("https://h:65536", False), ("https://h:99999999999", False), ("https://::1:6443", False),
           ("ftp://h", False), ("h:6443", False), ("https://", False), ("https://u@h", False),
           ("https://h:-1", False), ("https://h:6443?x=1", False), ("https://[::1", False), ("", False),
           ("https://h\u00e9:1", False)]


class Bad(Exception):
    pass


class RefLoader(yaml.SafeLoader):
    """PyYAML + what yaml.v2 (client-go's YAML) resolves differently for untyped values."""

    bool_values = dict(yaml.SafeLoader.bool_values, y=True, n=False)


RefLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))
RefLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)


def ref_parse(text: str):
    if text.lstrip(" \t\r\n").startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            pass
    try:
        return yaml.load(text, Loader=RefLoader)
    except (yaml.YAMLError, RecursionError):
        raise Bad from None


def ref_resolve(doc) -> dict:
    """client-go's reading of the current context, as a dict of the Cluster fields."""
    if not isinstance(doc, dict):
        raise Bad

    def text(obj, key):
        v = obj.get(key)
        if v is None:
            return ""
        if not isinstance(v, str) or "\0" in v:
            raise Bad
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise Bad from None
        return v

    def flag(obj, key):
        v = obj.get(key)
        if v is None:
            return False
        if not isinstance(v, bool):
            raise Bad
        return v

    def b64(obj, key):
        v = text(obj, key).replace("\r", "").replace("\n", "")
        if not B64.fullmatch(v):
            raise Bad
        return v

    def obj_of(v):
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise Bad
        return v

    def named(key, inner):
        items = doc.get(key)
        if items is None:
            return {}
        if not isinstance(items, list):
            raise Bad
        out = {}
        for item in items:
            item = obj_of(item)
            name = text(item, "name")
            if name in out:
                raise Bad
            out[name] = obj_of(item.get(inner))
        return out

    text(doc, "apiVersion"), text(doc, "kind")
    clusters = named("clusters", "cluster")
    for c in clusters.values():
        text(c, "server"), text(c, "certificate-authority"), b64(c, "certificate-authority-data")
        flag(c, "insecure-skip-tls-verify"), text(c, "tls-server-name"), text(c, "proxy-url")
        flag(c, "disable-compression")
    users = named("users", "user")
    for u in users.values():
        for k in ("token", "tokenFile", "client-certificate", "client-key", "username", "password", "as"):
            text(u, k)
        b64(u, "client-certificate-data"), b64(u, "client-key-data")
    contexts = named("contexts", "context")
    for c in contexts.values():
        text(c, "cluster"), text(c, "user"), text(c, "namespace")
    current = text(doc, "current-context")
    if not current and len(contexts) == 1:
        current = next(iter(contexts))
    if current not in contexts:
        raise Bad
    ctx = contexts[current]
    cname, uname = text(ctx, "cluster"), text(ctx, "user")
    if cname not in clusters or (uname and uname not in users):
        raise Bad
    cluster, user = clusters[cname], users.get(uname, {}) if uname else {}
    server = text(cluster, "server")
    if not dict(SERVERS).get(server, False):
        raise Bad
    return {"server": server.rstrip("/"), "ca_file": text(cluster, "certificate-authority"),
            "ca_data": b64(cluster, "certificate-authority-data"),
            "insecure": flag(cluster, "insecure-skip-tls-verify"),
            "token": text(user, "token"), "token_file": text(user, "tokenFile"),
            "client_cert_file": text(user, "client-certificate"),
            "client_cert_data": b64(user, "client-certificate-data"),
            "client_key_file": text(user, "client-key"), "client_key_data": b64(user, "client-key-data"),
            "namespace": text(ctx, "namespace")}


# ---- generation ------------------------------------------------------------------------------

NAMES = st.sampled_from(["c", "u", "ctx", "", "y", "no", "x y", "123"])
WRONG = st.integers(-3, 3) | st.floats(allow_nan=False, allow_infinity=False) | st.just([]) | st.just({"a": 1})
TEXTS = st.sampled_from(["", "/etc/k/ca.crt", "x\0y", "ns1", "a: b", "'q'", "#c", "\u00e9", "on", "2001-12-14",
                         "\ud800"]) | st.text(max_size=6)
BASE64 = st.sampled_from(["", "QUJD", "QUI=", "QQ==", "QUJD\nREVG", "QUJ", "QQ=", "Q===", "QUJD====", "!!!!",
                          "QU JD", "QUJDRA==QQ=="])
BOOLS = st.sampled_from([True, False, None, "true", "false", "no", "yes", 0, 1, "off"])
SERVER = st.sampled_from([s for s, _ in SERVERS])


def maybe(strategy, wrong=WRONG):
    return st.one_of(strategy, strategy, strategy, wrong, st.none())


def entry(inner_key, fields):
    inner = st.fixed_dictionaries({}, optional=fields)
    return st.fixed_dictionaries({"name": maybe(NAMES)}, optional={inner_key: maybe(inner)})


CLUSTER = entry("cluster", {"server": maybe(SERVER), "certificate-authority": maybe(TEXTS),
                            "certificate-authority-data": maybe(BASE64),
                            "insecure-skip-tls-verify": maybe(BOOLS), "proxy-url": maybe(TEXTS)})
USER = entry("user", {"token": maybe(st.just(SECRET) | TEXTS), "tokenFile": maybe(TEXTS),
                      "client-certificate-data": maybe(BASE64), "client-key-data": maybe(BASE64),
                      "client-key": maybe(TEXTS), "password": maybe(st.just(SECRET))})
CONTEXT = entry("context", {"cluster": maybe(NAMES), "user": maybe(NAMES), "namespace": maybe(TEXTS)})
DOCS = st.fixed_dictionaries({}, optional={
    "apiVersion": maybe(st.just("v1")), "kind": maybe(st.just("Config")),
    "current-context": maybe(NAMES), "clusters": maybe(st.lists(CLUSTER, max_size=3)),
    "users": maybe(st.lists(USER, max_size=2)), "contexts": maybe(st.lists(CONTEXT, max_size=3)),
    "preferences": maybe(st.just({}))})

# Raw YAML spellings for insecure-skip-tls-verify, written into the text as they are.
SPELLINGS = st.sampled_from(["no", "No", "NO", "off", "OFF", "false", "FALSE", "n", "N", "yes", "on", "y",
                             "true", "True", "'false'", '"false"', "0", "1", "~", "null", "", "disabled"])


def render(doc, fmt, flow, spelling):
    if fmt == "json":
        return json.dumps(doc, ensure_ascii=flow)
    text = yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=not flow)
    if spelling is not None and "@@SPELL@@" in text:
        text = text.replace("'@@SPELL@@'", spelling).replace("@@SPELL@@", spelling)
    return text


@settings(FUZZ, max_examples=500)
@given(DOCS, st.sampled_from(["json", "yaml"]), st.booleans(), st.none() | SPELLINGS, st.data())
def test_load_matches_reference(tmp_path_factory, doc, fmt, flow, spelling, data):
    if spelling is not None and fmt == "yaml":  # plant one raw spelling in the first cluster
        clusters = doc.get("clusters")
        if isinstance(clusters, list) and clusters and isinstance(clusters[0].get("cluster"), dict):
            clusters[0]["cluster"]["insecure-skip-tls-verify"] = "@@SPELL@@"
    try:
        text = render(doc, fmt, flow, spelling)
    except (ValueError, yaml.YAMLError):
        return
    path = tmp_path_factory.mktemp("kc") / "kubeconfig"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        want = ref_resolve(ref_parse(text))
    except Bad:
        want = None
    try:
        got = load(str(path))
    except KubeconfigError as e:
        event("refused")
        assert e.code == 7
        assert SECRET not in str(e) and SECRET not in repr(e)
        assert want is None, (text, want, str(e))
        return
    event("accepted")
    assert want is not None, (text, got)
    assert got.as_dict() == want
    assert SECRET not in repr(got)


@settings(FUZZ, max_examples=120)
@given(st.text(alphabet=" \t\n-:#'\"{}[],&*!|>?%@`abcxyz01", max_size=60))
def test_arbitrary_text_is_read_or_refused_with_code_7(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("kc") / "kubeconfig"
    path.write_text(text)
    try:
        want = ref_resolve(ref_parse(text))
    except Bad:
        want = None
    try:
        got = load(str(path))
    except KubeconfigError as e:
        assert e.code == 7 and want is None, (text, want, str(e))
        return
    assert got.as_dict() == want


@pytest.mark.parametrize("depth", [50, 5000])
@pytest.mark.parametrize("style", ["flow", "block"])
def test_deep_nesting_is_refused_with_code_7(tmp_path, depth, style):
    p = tmp_path / "kc"
    if style == "flow":
        p.write_text("clusters: " + "[" * depth + "]" * depth + "\n")
    else:
        p.write_text("clusters:\n" + "".join(" " * i + "- \n" for i in range(depth)))
    with pytest.raises(KubeconfigError) as ei:
        load(str(p))
    assert ei.value.code == 7
