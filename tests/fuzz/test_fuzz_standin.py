"""The DEL-only stand-in (a /bin/sh script on the host) under arbitrary stdin and env bytes:
ADD always prints exactly one JSON error document (fail closed), DEL always exits 0 silently,
and nothing from the input is echoed except a supported cniVersion."""

from __future__ import annotations

import json
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from istio_cni.versions import SUPPORTED_VERSIONS
from istio_cni_installer.standin import standin_text

MARKER = "zzPLANTEDzz"
versions = st.sampled_from(list(SUPPORTED_VERSIONS) + ["9.9.9", "", "1.0.0\n", '1"}', MARKER])
netconfs = st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda v, pad: json.dumps({"cniVersion": v, "name": MARKER, "x": pad}).encode(),
              versions, st.text(max_size=200)),
    st.builds(lambda v: b'{"cniVersion":"' + v + b'"}', st.binary(max_size=40)),
)
env_values = st.binary(max_size=64).map(lambda b: b.replace(b"\0", b""))


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    path = tmp_path_factory.mktemp("standin") / "istio-cni"
    path.write_text(standin_text())
    path.chmod(0o755)
    return path


def _run(exe, command: bytes, stdin: bytes, args: bytes):
    env = {b"PATH": b"/usr/sbin:/usr/bin:/sbin:/bin", b"CNI_COMMAND": command, b"CNI_ARGS": args,
           b"CNI_CONTAINERID": b"c1", b"CNI_NETNS": b"/var/run/netns/none", b"CNI_IFNAME": b"eth0"}
    return subprocess.run([str(exe)], input=stdin, env=env, capture_output=True, timeout=30)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stdin=netconfs, args=env_values)
def test_add_is_one_json_error_whatever_arrives(standin, stdin, args):
    r = _run(standin, b"ADD", stdin, args)
    assert r.returncode == 1
    doc = json.loads(r.stdout.decode("utf-8"))  # exactly one document, valid UTF-8
    assert isinstance(doc, dict) and isinstance(doc.get("code"), int)
    assert doc["cniVersion"] in SUPPORTED_VERSIONS
    assert MARKER.encode() not in r.stdout


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stdin=netconfs, args=env_values)
def test_del_always_succeeds_silently(standin, stdin, args):
    r = _run(standin, b"DEL", stdin, args)
    assert (r.returncode, r.stdout) == (0, b"")
