"""Regression tests (issue 13, items 3 and 4): whatever bytes arrive, stdout carries exactly
one valid UTF-8 JSON document, the exit status is non-zero on error, input errors get their
CNI code (never 999), and no secret reaches stdout, stderr or a log line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from istio_cni import errors, log as logmod
from istio_cni.config import parse_conf, parse_k8s_args
from istio_cni.skel import MAX_STDIN_BYTES, plugin_main

SECRET = "proto-s3cr3t-t0ken-xyz"
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/1/ns/net", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/usr/lib/cni"}


def call(env, stdin: bytes, funcs=None):
    out = io.StringIO()
    funcs = funcs or {k: (lambda args: None) for k in ("ADD", "DEL", "CHECK", "STATUS", "GC")}
    rc = plugin_main(funcs, env=env, stdin=io.BytesIO(stdin), stdout=out)
    text = out.getvalue()
    assert text.isascii() and text.endswith("\n") and text.count("\n") == 1, text
    return rc, json.loads(text)


def run_plugin(env: dict, stdin: bytes) -> subprocess.CompletedProcess:
    """The plugin as a process (``python -m istio_cni``), env values may be bytes."""
    full = {b"PATH": os.environb.get(b"PATH", b"/usr/bin:/bin")}
    full.update({k.encode(): (v if isinstance(v, bytes) else v.encode()) for k, v in env.items()})
    return subprocess.run([sys.executable, "-I", "-m", "istio_cni"], input=stdin, env=full,
                          capture_output=True, timeout=60)


def one_document(proc) -> dict:
    text = proc.stdout.decode("utf-8")  # valid UTF-8 or this raises
    assert text.endswith("\n") and text.count("\n") == 1, text
    return json.loads(text)


# ---- the examples -------------------------------------------------------------------

def test_lone_surrogate_cni_version_is_code_6_not_a_traceback():
    rc, doc = call(dict(ENV, CNI_COMMAND="DEL"), b'{"cniVersion":"\\ud800"}')
    assert rc == 1 and doc["code"] == 6


def test_lone_surrogate_cni_version_through_the_process():
    proc = run_plugin(dict(ENV, CNI_COMMAND="DEL"), b'{"cniVersion":"\\ud800","name":"n","type":"istio-cni"}')
    assert proc.returncode == 1
    assert one_document(proc)["code"] == 6
    assert b"Traceback" not in proc.stderr


@pytest.mark.parametrize("var", ["CNI_COMMAND", "CNI_IFNAME", "CNI_NETNS", "CNI_ARGS", "CNI_CONTAINERID", "CNI_PATH"])
def test_non_utf8_env_is_code_4_naming_the_variable_never_echoed(var):
    env = dict(ENV, CNI_COMMAND="DEL")
    env[var] = b"AD\xff\xfe" if var == "CNI_COMMAND" else b"x\xff\xc3("
    proc = run_plugin(env, b'{"cniVersion":"1.0.0","name":"n","type":"istio-cni"}')
    doc = one_document(proc)
    assert proc.returncode == 1 and doc["code"] == 4 and var in doc["msg"]
    assert b"\xff" not in proc.stdout and b"\xff" not in proc.stderr


def test_unknown_command_is_code_4():
    rc, doc = call(dict(ENV, CNI_COMMAND="ad\u00e9"), b"{}")
    assert rc == 1 and doc["code"] == 4


def test_huge_stdin_is_read_bounded_and_code_6():
    class Endless(io.RawIOBase):
        served = 0

        def readable(self):
            return True

        def readinto(self, b):
            n = len(b)
            b[:n] = b"a" * n
            self.served += n
            return n

    src = Endless()
    out = io.StringIO()
    rc = plugin_main({}, env=dict(ENV, CNI_COMMAND="DEL"), stdin=io.BufferedReader(src), stdout=out)
    assert rc == 1 and json.loads(out.getvalue())["code"] == 6
    assert src.served <= MAX_STDIN_BYTES + (1 << 20)


@pytest.mark.parametrize("stdin", [b"", b"\x00", b"\xff\xfe", b"{" * 100000, b'{"cniVersion":"1.0.0"} {}',
                                   b'{"cniVersion":NaN}', b"\xef\xbb\xbf{}"])
def test_undecodable_netconf_is_code_6(stdin):
    rc, doc = call(dict(ENV, CNI_COMMAND="DEL"), stdin)
    assert rc == 1 and doc["code"] == 6


# ---- netconf and CNI_ARGS shapes: code 7, not 999 ------------------------------------------------

@pytest.mark.parametrize("conf", [
    {"kubernetes": {"kubeconfig": "/etc/k\x00c"}},
    {"cni_agent_run_dir": "/run/\x00x"},
    {"prevResult": {"cniVersion": "banana"}},
    {"prevResult": {"ips": [1]}},
    {"prevResult": {"ips": [{"address": 5}]}},
    {"prevResult": {"ips": {"address": "x"}}},
    {"prevResult": {"routes": [{"dst": []}]}},
    {"prevResult": {"ip4": "10.0.0.1"}},
    {"prevResult": {"ip4": {"ip": "1.2.3.4/24", "routes": "x"}}},
])
def test_malformed_netconf_fields_are_code_7(conf):
    with pytest.raises(errors.InvalidNetworkConfig):
        parse_conf({"cniVersion": "1.0.0", **conf})


@pytest.mark.parametrize("raw", ["K8S_POD_NAME=web;", "K8S_POD_NAME=a=b", "IgnoreUnknown=maybe;K8S_POD_NAME=w",
                                 "IgnoreUnknown=;IgnoreUnknown=1", "FOO=1", ";"])
def test_cni_args_follow_libcni_errors(raw):
    with pytest.raises(errors.InvalidNetworkConfig):
        parse_k8s_args(raw)


@pytest.mark.parametrize("raw,ignore", [("IgnoreUnknown=TRUE;X=1", True), ("X=1;IgnoreUnknown=1", True),
                                        ("IgnoreUnknown=1;IgnoreUnknown=0;X=1", False)])
def test_ignore_unknown_is_libcni_bool_last_value_wins(raw, ignore):
    if ignore:
        assert parse_k8s_args(raw).pod_name == ""
    else:
        with pytest.raises(errors.InvalidNetworkConfig):
            parse_k8s_args(raw)


# ---- secrets on the internal-error path ----------------------------------------------------------

def test_internal_error_never_carries_the_bytes_it_failed_on(capsys):
    def add(args):
        (SECRET.encode() + b"\xff").decode("utf-8")  # a token file with one invalid byte

    out = io.StringIO()
    rc = plugin_main({"DEL": add}, env=dict(ENV, CNI_COMMAND="DEL"), stdin=io.BytesIO(b'{"cniVersion":"1.0.0"}'),
                     stdout=out)
    doc = json.loads(out.getvalue())
    assert rc == 1 and doc["code"] == 999
    assert "UnicodeDecodeError" in doc["msg"] and "line" in doc["details"]
    err = capsys.readouterr().err
    assert SECRET not in out.getvalue() and SECRET not in err


def test_internal_error_key_error_does_not_show_the_key():
    try:
        {}[SECRET]
    except KeyError as e:
        err = errors.internal_error(e)
    assert SECRET not in err.msg and SECRET not in err.details


def test_registered_secrets_are_redacted_from_errors_and_logs():
    errors.register_secret(SECRET)
    stream = io.StringIO()
    logger = logmod.Logger("debug", stream=stream)
    logger.error(f"failed with {SECRET}", details=f"Bearer {SECRET}", items=[SECRET])
    assert SECRET not in stream.getvalue() and errors.REDACTED in stream.getvalue()
    err = errors.TryAgainLater(f"x {SECRET}", f"y {SECRET}")
    assert SECRET not in json.dumps(err.to_dict("1.0.0"))


def test_log_lines_are_ascii_json_whatever_the_values():
    stream = io.StringIO()
    logger = logmod.Logger("debug", stream=stream)
    logger.info("m\udcff\x00", value="\ud800\n\"", f=float("nan"), n=[1, None, "\u00e9"])
    line = stream.getvalue()
    assert line.isascii() and line.count("\n") == 1
    assert json.loads(line)["value"] == "\ud800\n\""


def test_a_broken_install_still_prints_one_error_document():
    code = ("import sys; sys.modules['istio_cni.plugin'] = None\n"  # its import now fails
            "from istio_cni.__main__ import main; main()")
    proc = subprocess.run([sys.executable, "-I", "-c", code], input=b"{}", capture_output=True, timeout=60,
                          env={"CNI_COMMAND": "ADD", "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    doc = one_document(proc)
    assert proc.returncode == 1 and doc["code"] == 999 and "ModuleNotFoundError" in doc["msg"]
