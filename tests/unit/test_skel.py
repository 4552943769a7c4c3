"""Protocol tests: every error code skel produces, exactly one JSON document on stdout."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings, strategies as st
from support.emulator import require_syscall

from istio_cni import errors
from istio_cni.skel import plugin_main
from istio_cni.versions import SUPPORTED_VERSIONS

BASE = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/1/ns/net", "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}


def call(env: dict, stdin: bytes | str = b"", funcs=None):
    if isinstance(stdin, str):
        stdin = stdin.encode()
    out = io.StringIO()
    called = {}

    def rec(name):
        def f(args):
            called[name] = args
            return {"cniVersion": args.netconf.get("cniVersion"), "ok": name} if name == "ADD" else None
        return f

    funcs = funcs or {k: rec(k) for k in ("ADD", "DEL", "CHECK", "STATUS", "GC")}
    rc = plugin_main(funcs, env=env, stdin=io.BytesIO(stdin), stdout=out)
    text = out.getvalue()
    docs = [json.loads(line) for line in text.splitlines() if line.strip()]
    return rc, docs, called


def one_doc(docs):
    assert len(docs) == 1, docs
    return docs[0]


def test_version_lists_all_supported():
    rc, docs, _ = call({"CNI_COMMAND": "VERSION"}, '{"cniVersion":"0.3.1"}')
    assert rc == 0
    assert one_doc(docs)["supportedVersions"] == list(SUPPORTED_VERSIONS)


def test_version_without_stdin():
    rc, docs, _ = call({"CNI_COMMAND": "VERSION"}, b"")
    assert rc == 0 and one_doc(docs)["cniVersion"] == "1.1.0"


def test_about_without_command(capsys):
    rc, docs, _ = call({}, b"")
    assert rc == 0 and docs == []
    assert "istio-cni" in capsys.readouterr().err


@pytest.mark.parametrize(
    "cmd,missing",
    [
        ("ADD", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]),
        ("CHECK", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]),
        ("DEL", ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"]),
        ("STATUS", ["CNI_PATH"]),
        ("GC", ["CNI_PATH"]),
    ],
)
def test_missing_env_all_named_code_4(cmd, missing):
    rc, docs, called = call({"CNI_COMMAND": cmd}, '{"cniVersion":"1.1.0"}')
    doc = one_doc(docs)
    assert rc == 1 and doc["code"] == 4
    for var in missing:
        assert var in doc["msg"]
    assert not called


def test_unknown_command_code_4():
    rc, docs, _ = call({"CNI_COMMAND": "FROB", **BASE}, "{}")
    assert rc == 1 and one_doc(docs)["code"] == 4


def test_del_without_netns_is_fine():
    env = {k: v for k, v in BASE.items() if k != "CNI_NETNS"}
    rc, docs, called = call({"CNI_COMMAND": "DEL", **env}, '{"cniVersion":"1.0.0","name":"n","type":"istio-cni"}')
    assert rc == 0 and docs == [] and "DEL" in called


@pytest.mark.parametrize("payload", [b"{not json", b"\xff\xfe", b"", b"[1,2"])
def test_undecodable_code_6(payload):
    rc, docs, _ = call({"CNI_COMMAND": "DEL", **BASE}, payload)
    assert rc == 1 and one_doc(docs)["code"] == 6


@pytest.mark.parametrize("payload", ["[]", "3", '"s"', "null"])
def test_not_an_object_code_6(payload):
    rc, docs, _ = call({"CNI_COMMAND": "DEL", **BASE}, payload)
    assert rc == 1 and one_doc(docs)["code"] == 6


def test_unsupported_version_code_1():
    rc, docs, _ = call({"CNI_COMMAND": "DEL", **BASE}, '{"cniVersion":"9.9.9"}')
    assert rc == 1 and one_doc(docs)["code"] == 1


def test_non_string_version_code_7():
    rc, docs, _ = call({"CNI_COMMAND": "DEL", **BASE}, '{"cniVersion":1}')
    assert rc == 1 and one_doc(docs)["code"] == 7


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "0.3.0", "0.3.1"])
def test_check_below_040_refused(version):
    rc, docs, called = call({"CNI_COMMAND": "CHECK", **BASE}, json.dumps({"cniVersion": version}))
    assert rc == 1 and one_doc(docs)["code"] == 1 and not called


@pytest.mark.parametrize("cmd", ["STATUS", "GC"])
@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_status_gc_below_110_refused(cmd, version):
    rc, docs, called = call({"CNI_COMMAND": cmd, "CNI_PATH": "/x"}, json.dumps({"cniVersion": version}))
    assert rc == 1 and one_doc(docs)["code"] == 1 and not called


@pytest.mark.parametrize("cmd", ["STATUS", "GC"])
def test_status_gc_at_110(cmd):
    rc, docs, called = call({"CNI_COMMAND": cmd, "CNI_PATH": "/x"}, '{"cniVersion":"1.1.0"}')
    assert rc == 0 and docs == [] and cmd in called


def test_netns_missing_code_8(tmp_path):
    env = dict(BASE, CNI_NETNS=str(tmp_path / "nope"))
    rc, docs, called = call({"CNI_COMMAND": "ADD", **env}, '{"cniVersion":"1.0.0"}')
    doc = one_doc(docs)
    assert rc == 1 and doc["code"] == 8 and str(tmp_path / "nope") in doc["msg"]
    assert not called


def test_netns_plain_file_code_8(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    rc, docs, _ = call({"CNI_COMMAND": "CHECK", **dict(BASE, CNI_NETNS=str(f))}, '{"cniVersion":"1.0.0"}')
    doc = one_doc(docs)
    assert rc == 1 and doc["code"] == 8 and "not a network namespace" in doc["msg"]


def test_netns_other_ns_type_code_8():
    rc, docs, _ = call({"CNI_COMMAND": "ADD", **dict(BASE, CNI_NETNS="/proc/self/ns/mnt")}, '{"cniVersion":"1.0.0"}')
    assert rc == 1 and one_doc(docs)["code"] == 8


def test_own_netns_refused_code_8():
    require_syscall("ioctl(NS_GET_NSTYPE)")  # the netns check runs before the own-netns one
    rc, docs, _ = call({"CNI_COMMAND": "ADD", **dict(BASE, CNI_NETNS="/proc/self/ns/net")}, '{"cniVersion":"1.0.0"}')
    doc = one_doc(docs)
    assert rc == 1 and doc["code"] == 8 and "own" in doc["msg"]


def test_cni_error_from_command_passes_code():
    def add(args):
        raise errors.TryAgainLater("api down", "connection refused")

    rc, docs, _ = call({"CNI_COMMAND": "DEL", **BASE}, '{"cniVersion":"0.4.0"}', funcs={"DEL": add})
    doc = one_doc(docs)
    assert rc == 1 and doc == {"cniVersion": "0.4.0", "code": 11, "msg": "api down", "details": "connection refused"}


def test_unexpected_exception_code_999():
    def boom(args):
        raise RuntimeError("kaboom")

    rc, docs, _ = call({"CNI_COMMAND": "DEL", **BASE}, '{"cniVersion":"1.0.0"}', funcs={"DEL": boom})
    doc = one_doc(docs)
    assert rc == 1 and doc["code"] == 999 and "kaboom" in doc["details"] and "Traceback" in doc["details"]


def test_error_registry_unique_codes():
    assert errors.error_class(11) is errors.TryAgainLater
    assert errors.error_class(8) is errors.InvalidNetNS
    with pytest.raises(TypeError):
        class Dup(errors.CNIError):  # noqa: F841
            code = 11


# ---- the environment without ``os`` (istio_cni.environ / getenv: the ADD path's budget) -------

_ENV_KEY = st.binary(min_size=1, max_size=12).filter(lambda b: b"=" not in b and b"\0" not in b)
_ENV_VALUE = st.binary(max_size=40).filter(lambda b: b"\0" not in b)


@settings(max_examples=200, deadline=None)
@given(items=st.dictionaries(_ENV_KEY, _ENV_VALUE, max_size=6))
def test_environ_decodes_as_os_environ(items):
    import os

    import istio_cni

    saved = dict(os.environb)
    try:
        for k, v in items.items():
            os.environb[b"ISTIO_CNI_T_" + k] = v
        assert istio_cni.environ() == dict(os.environ)
        for k in items:
            name = os.fsdecode(b"ISTIO_CNI_T_" + k)
            assert istio_cni.getenv(name) == os.environ.get(name)
        assert istio_cni.getenv("ISTIO_CNI_T_surely_unset_\udcff") is None
    finally:
        for k in set(os.environb) - set(saved):
            del os.environb[k]
        os.environb.update(saved)


def test_plugin_main_reads_the_process_environment(monkeypatch):
    # env=None: the CNI variables come from the process environment (istio_cni.environ).
    monkeypatch.setenv("CNI_COMMAND", "VERSION")
    out = io.StringIO()
    assert plugin_main({}, stdin=io.BytesIO(b""), stdout=out) == 0
    assert json.loads(out.getvalue())["supportedVersions"] == list(SUPPORTED_VERSIONS)
