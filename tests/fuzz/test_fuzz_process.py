"""Whole-process fuzz: the plugin exec'd through its launcher under mutated env and stdin.

The stdout contract (issue 13, items 3 and 4), checked on every run: stdout is valid UTF-8
and either empty with exit 0 (DEL/CHECK/STATUS/GC, or no CNI_COMMAND) or exactly one JSON
document and a newline; an error document (``code``) comes with a non-zero exit status and
a result with exit 0; an input error never becomes code 999; and the planted credentials
(an inline token, a token file holding an invalid UTF-8 byte) appear in neither stdout nor
stderr. The API is the fake on 127.0.0.1 (wanting the token), the netns a real one with an
address (root), the backend ``dry-run`` so nothing is committed.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml
from hypothesis import given, settings, strategies as st
from peers.fakeapi import FakeAPI
from support.pods import plain_pod, sidecar_pod

from istio_cni.tools import netns as nsutil
from istio_cni.versions import SUPPORTED_VERSIONS

pytestmark = pytest.mark.root  # a real pod netns

FUZZ = settings.get_profile("fuzz")
SECRET = "proc-fuzz-s3cr3t-T0KEN"
FILE_SECRET = "file-fuzz-s3cr3t-T0KEN"
PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "x"}],
        "ips": [{"interface": 0, "address": "192.0.2.2/24", "gateway": "192.0.2.1"}]}


class World:
    """Everything a run needs, made once per module."""

    def __init__(self, tmp, api, pod_ns, launcher):
        self.launcher, self.pod_ns = launcher, pod_ns
        kc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
              "clusters": [{"name": "k", "cluster": {"server": api.url}}],
              "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
              "users": [{"name": "u", "user": {"token": SECRET}}]}
        token_file = tmp / "token"
        token_file.write_bytes(FILE_SECRET.encode() + b"\xff\n")
        self.kubeconfigs = {}
        for name, text in (
            ("json", json.dumps(kc)),
            ("yaml", yaml.safe_dump(kc)),
            ("yaml-skip-quoted-false", yaml.safe_dump(kc).replace(
                f"    server: {api.url}", f"    insecure-skip-tls-verify: 'false'\n    server: {api.url}")),
            ("tokenfile-invalid-utf8", json.dumps({**kc, "users": [
                {"name": "u", "user": {"tokenFile": str(token_file)}}]})),
            ("garbled", json.dumps(kc)[:-9] + "\xff"),
        ):
            p = tmp / f"kc-{name}"
            p.write_text(text, encoding="utf-8", errors="surrogateescape")
            self.kubeconfigs[name] = str(p)


@pytest.fixture(scope="module")
def world(plugin_bin, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("proc-fuzz")
    with FakeAPI(token=SECRET) as api, nsutil.temporary("pfz") as pod_ns, nsutil.temporary("pfzn") as peer:
        nsutil.veth_pair(pod_ns, peer, "192.0.2.2/24", "192.0.2.1/24")
        api.add_pod(sidecar_pod("web"))
        api.add_pod(plain_pod("plain"))
        yield World(tmp, api, pod_ns, str(plugin_bin))


# ---- generation ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8) | st.sampled_from(["\ud800", "a\x00b", "1.0.0", "../x", "\udcff"]),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=8)

CONF_KEYS = ["cniVersion", "name", "type", "kubernetes", "prevResult", "netfilter_backend", "plugin_log_level",
             "exclude_namespaces", "cni_agent_run_dir", "lookup_deadline_seconds", "pod_namespace",
             "ambient_enabled", "lookup_retry_interval_seconds"]
PREV_KEYS = ["ips", "routes", "ip4", "cniVersion", "interfaces", "dns"]


@st.composite
def netconf(draw, world):
    kc = draw(st.sampled_from(["json", "json", "json", "yaml", "yaml"] + sorted(world.kubeconfigs)))
    conf = {"cniVersion": draw(st.sampled_from(SUPPORTED_VERSIONS)), "name": "k8s-pod-network",
            "type": "istio-cni", "kubernetes": {"kubeconfig": world.kubeconfigs[kc]},
            "netfilter_backend": "dry-run", "lookup_deadline_seconds": 0.2,
            "lookup_retry_interval_seconds": 0.1, "prevResult": json.loads(json.dumps(PREV))}
    event(f"kubeconfig {kc}")
    if draw(st.booleans()):  # half the runs: one or two keys with values of any shape
        for key in draw(st.lists(st.sampled_from(CONF_KEYS), min_size=1, max_size=2)):
            conf[key] = draw(json_values)
        for key in draw(st.lists(st.sampled_from(PREV_KEYS), max_size=1)):
            if isinstance(conf.get("prevResult"), dict):
                conf["prevResult"][key] = draw(json_values)
    raw = json.dumps(conf, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    how = draw(st.sampled_from(["as is"] * 6 + ["mutated", "mutated", "bytes", "huge"]))
    event(f"stdin {how}")
    if how == "mutated":
        buf = bytearray(raw)
        for pos, ins, dele in draw(st.lists(st.tuples(st.integers(0, len(raw)), st.binary(max_size=3),
                                                      st.integers(0, 3)), min_size=1, max_size=3)):
            buf[pos:pos + dele] = ins
        raw = bytes(buf)
    elif how == "bytes":
        raw = draw(st.binary(max_size=40))
    elif how == "huge":
        raw = b'{"cniVersion":"1.0.0","x":"' + b"a" * (5 << 20) + b'"}'
    return raw


@st.composite
def environment(draw, world):
    """The valid environment of an ADD (or another command), with at most one variable mutated."""
    env: dict = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                 "CNI_COMMAND": draw(st.sampled_from(["ADD"] * 6 + ["DEL", "CHECK", "VERSION", "STATUS", "GC"])),
                 "CNI_CONTAINERID": "cid-fuzz", "CNI_NETNS": nsutil.path(world.pod_ns), "CNI_IFNAME": "eth0",
                 "CNI_PATH": "/usr/lib/cni",
                 "CNI_ARGS": draw(st.sampled_from(["IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"] * 6 + [
                     "K8S_POD_NAMESPACE=default;K8S_POD_NAME=plain",
                     "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=../x",
                     "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;"]))}
    which = draw(st.sampled_from([None] * 6 + sorted(k for k in env if k != "PATH")))
    if which is not None:
        event(f"env {which} mutated")
        val = draw(st.sampled_from([None, "", "x" * 5000, "add"]) | st.text(max_size=8).map(  # env has no NUL
            lambda t: t.replace("\0", "")) | st.binary(
            min_size=1, max_size=6).map(lambda b: b.replace(b"\0", b"") + b"\xff"))
        if val is None:
            del env[which]
        else:
            env[which] = val
    return {(k.encode() if isinstance(v, bytes) else k): v for k, v in env.items()}


def event(what: str) -> None:
    """hypothesis.event, also callable from the plain (non-hypothesis) tests below."""
    from hypothesis import event as record
    from hypothesis.errors import InvalidArgument

    try:
        record(what)
    except InvalidArgument:
        pass


def run(world, env, stdin: bytes):
    return subprocess.run([world.launcher], input=stdin, env=env, capture_output=True, timeout=60)


def check_contract(proc, command) -> None:
    out, err = proc.stdout, proc.stderr
    for secret in (SECRET, FILE_SECRET):
        assert secret.encode() not in out and secret.encode() not in err, (out[:500], err[-2000:])
    text = out.decode("utf-8")  # valid UTF-8, or this raises
    if not text:
        assert proc.returncode == 0, err[-2000:]
        event("empty stdout")
        return
    assert text.endswith("\n") and text.count("\n") == 1, text[:300]
    doc = json.loads(text)  # exactly one document, or this raises
    if isinstance(doc, dict) and "code" in doc:
        event(f"error code {doc['code']}")
        assert proc.returncode != 0
        assert isinstance(doc["code"], int) and isinstance(doc.get("msg"), str)
        assert doc["code"] != 999, (doc, err[-3000:])
    else:
        event("result")
        assert proc.returncode == 0, (text[:300], err[-2000:])


@settings(FUZZ, max_examples=200)
@given(st.data())
def test_stdout_contract_under_mutated_env_and_stdin(world, data):
    env = data.draw(environment(world))
    stdin = data.draw(netconf(world))
    proc = run(world, env, stdin)
    check_contract(proc, env.get("CNI_COMMAND"))


@pytest.mark.parametrize("kubeconfig", ["json", "yaml", "yaml-skip-quoted-false", "tokenfile-invalid-utf8", "garbled"])
def test_each_kubeconfig_keeps_the_contract_and_its_secrets(world, kubeconfig):
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "istio-cni", "netfilter_backend": "dry-run",
            "kubernetes": {"kubeconfig": world.kubeconfigs[kubeconfig]}, "lookup_deadline_seconds": 0.2,
            "lookup_retry_interval_seconds": 0.1, "prevResult": PREV}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c",
           "CNI_NETNS": nsutil.path(world.pod_ns), "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"}
    proc = run(world, env, json.dumps(conf).encode())
    check_contract(proc, "ADD")
    doc = json.loads(proc.stdout) if proc.stdout else {}
    if kubeconfig in ("json", "yaml"):
        assert proc.returncode == 0 and doc.get("ips"), (doc, proc.stderr[-2000:])
    else:
        assert proc.returncode != 0 and doc["code"] in (7, 101), doc
