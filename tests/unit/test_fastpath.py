"""The compiled module and its pure-Python twin, tested by one fixture (yarl style)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import fastpath_py as _fastpath_py
from support.emulator import require_syscall

from istio_cni import _fastpath


@pytest.fixture(params=["c", "py"])
def fp(request):
    return _fastpath if request.param == "c" else _fastpath_py


def test_compiled_modules_import():
    import istio_cni._nf as nf
    import istio_cni._nft as nft

    assert _fastpath.__file__.endswith(".so")
    assert nf.__file__.endswith(".so") and nft.__file__.endswith(".so")
    assert hasattr(nf.lib, "iptc_init") and hasattr(nf.lib, "ip6tc_init") and hasattr(nft.lib, "nft_ctx_new")
    # libnftables lives in _nft only: a libiptc commit must not load it (benchmarks/RESULTS.md)
    assert not hasattr(nf.lib, "nft_ctx_new")


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("", []),
        ("IgnoreUnknown=1", [("IgnoreUnknown", "1")]),
        ("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p", [("K8S_POD_NAMESPACE", "ns"), ("K8S_POD_NAME", "p")]),
        ("A=", [("A", "")]),
        ("=x", [("", "x")]),  # libcni: an unknown (empty) key, the caller decides
        ("A=1;A=2", [("A", "1"), ("A", "2")]),  # in order: LoadArgs sets the field twice
    ],
)
def test_parse_cni_args(fp, raw, expected):
    assert fp.parse_cni_args(raw) == expected


# libcni's LoadArgs: every ';'-separated pair must split on '=' into exactly two parts.
@pytest.mark.parametrize("raw", ["novalue", "A=1;;junk", "A=1;", ";", "A=b=c", "K8S_POD_NAME=a=b"])
def test_parse_cni_args_rejects(fp, raw):
    with pytest.raises(ValueError):
        fp.parse_cni_args(raw)


def test_open_netns_missing(fp, tmp_path):
    with pytest.raises(FileNotFoundError) as ei:
        fp.open_netns(str(tmp_path / "missing"))
    assert str(tmp_path / "missing") in str(ei.value)


def test_open_netns_plain_file(fp, tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    with pytest.raises(fp.NotANetns) as ei:
        fp.open_netns(str(f))
    assert str(f) in str(ei.value)


def test_open_netns_wrong_type(fp):
    with pytest.raises(fp.NotANetns):
        fp.open_netns("/proc/self/ns/uts")


def test_open_own_netns(fp):
    require_syscall("ioctl(NS_GET_NSTYPE)")  # open_netns checks the nsfs type with it
    fd = fp.open_netns("/proc/self/ns/net")
    try:
        home = fp.current_netns()
        assert fp.netns_id(fd) == fp.netns_id(home)
        fp.close_fd(home)
    finally:
        fp.close_fd(fd)


@pytest.mark.parametrize("doc", [b'{"a":[1,2.5,true,false,null,"x\\u00e9\\n"],"b":{}}', b"[]", b'"s"'])
def test_json_roundtrip(fp, doc):
    import json

    obj = fp.json_loads(doc)
    assert obj == json.loads(doc)
    assert json.loads(fp.json_dumps(obj)) == obj


# ---- JSON codec: the compiled one must agree with the stdlib on every document ----------

from hypothesis import given, settings, strategies as st  # noqa: E402

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, derandomize=True)
@given(_json_values)
def test_json_codec_matches_stdlib(value):
    import json

    encoded = json.dumps(value, ensure_ascii=False)
    assert _fastpath.json_loads(encoded.encode("utf-8", "surrogatepass")) == json.loads(encoded)
    assert json.loads(_fastpath.json_dumps(value)) == value
    assert _fastpath.json_dumps(value) == json.dumps(value, separators=(",", ":"))


@settings(max_examples=200, derandomize=True)
@given(_json_values)
def test_json_ascii_escaped_input(value):
    import json

    encoded = json.dumps(value, ensure_ascii=True, indent=1)
    assert _fastpath.json_loads(encoded) == json.loads(encoded)


@pytest.mark.parametrize(
    "bad",
    [b"", b"{", b"[1,]", b'{"a" 1}', b'{"a":1,}', b"01", b"1.", b"-", b"tru", b'"\x01"', b'"\\x"', b"[1] 2",
     b"\xff", b'"\xc3"', b"NaN", b"{1:2}", b"[" * 600 + b"]" * 600],
)
def test_json_rejects_like_stdlib(bad):
    with pytest.raises(ValueError):
        _fastpath.json_loads(bad)


def test_json_dumps_rejects_nan_and_odd_types():
    with pytest.raises(ValueError):
        _fastpath.json_dumps(float("nan"))
    with pytest.raises(TypeError):
        _fastpath.json_dumps(object())


@pytest.mark.parametrize(
    "text,expected",
    [("", b""), ("QQ==", b"A"), ("QUI=", b"AB"), ("QUJD", b"ABC"), ("QR==", b"A"), ("+/+/", b"\xfb\xff\xbf")],
)
def test_b64decode_padded_standard_base64(fp, text, expected):
    assert fp.b64decode(text) == expected


@pytest.mark.parametrize("text", ["Q", "QQ=", "Q===", "====", "QQ==QQ==", "QQ=A", "QU I", "QUJ-", "QUJ_", "QUJ\n",
                                  "QUJé", "0000="])
def test_b64decode_refuses_what_go_refuses(fp, text):
    with pytest.raises(ValueError):
        fp.b64decode(text)


def test_ca_data_is_decoded_without_binascii(tmp_path):
    # binascii is a shared module linking libz: ~0.45 ms and ~120 KiB per ADD (RESULTS.md)
    import subprocess
    import sys

    code = ("import base64,json,sys;from istio_cni.kubeconfig import load;from istio_cni import transport;"
            "pem=open(sys.argv[1]).read();kc=sys.argv[1]+'.kubeconfig';"
            "json.dump({'clusters':[{'name':'c','cluster':{'server':'https://127.0.0.1:1',"
            "'certificate-authority-data':base64.b64encode(pem.encode()).decode()}}],"
            "'contexts':[{'name':'x','context':{'cluster':'c','user':'u'}}],'users':[{'name':'u','user':{}}],"
            "'current-context':'x'},open(kc,'w'));"
            "del sys.modules['binascii'];transport.lean_tls_context(load(kc));print('binascii' in sys.modules)")
    pem = tmp_path / "ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(tmp_path / "k"), "-out", str(pem), "-days", "1", "-subj", "/CN=t"],
                   check=True, capture_output=True, timeout=60)
    out = subprocess.run([sys.executable, "-c", code, str(pem)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.split() == ["False"]


# ---- OpenSSL's set-up on a C thread (openssl_warm_start / openssl_warm_wait) -------------

SRC = str(Path(_fastpath.__file__).resolve().parents[1])
WARM_PROBE = """
import posix, sys
tasks_before = len(posix.listdir("/proc/self/task"))  # 2 under qemu-user: the emulator's own thread
sys.path.insert(0, sys.argv[1])
posix.environ[b"CNI_COMMAND"] = sys.argv[2].encode()
from istio_cni.__main__ import _warm_tls_for_add
from istio_cni import _fastpath
_warm_tls_for_add()
started_here = _fastpath.openssl_warm_start()  # False: the entry point started it already
from istio_cni.kubeconfig import Cluster
from istio_cni.transport import lean_tls_context
ctx = lean_tls_context(Cluster(server="https://127.0.0.1:1", ca_file="", ca_data="", insecure=True, token="",
                              token_file="", client_cert_file="", client_cert_data="", client_key_file="",
                              client_key_data="", namespace=""))
tasks = len(posix.listdir("/proc/self/task")) - tasks_before
maps = open("/proc/self/maps").read()
print(started_here, tasks, "libssl.so" in maps, type(ctx).__name__)
"""


@pytest.mark.parametrize("command,started_by_entry", [("ADD", True), ("DEL", False), ("CHECK", False)])
def test_an_add_sets_openssl_up_on_a_thread_joined_before_its_context(command, started_by_entry):
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(_fastpath.__file__).resolve().parents[1])
    r = subprocess.run([sys.executable, "-I", "-S", "-c", WARM_PROBE, src, command], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    started_here, tasks, libssl, ctx = r.stdout.split()
    assert started_here == str(not started_by_entry)  # only an ADD starts it (once per process)
    assert tasks == "0"  # joined before the context was made: no thread outlives it
    assert libssl == "True" and ctx == "_SSLContext"


def test_openssl_warm_wait_without_a_start_is_a_no_op():
    import subprocess
    import sys

    code = "import istio_cni._fastpath as f; f.openssl_warm_wait(); f.openssl_warm_wait(); print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "ok", r.stderr


def test_a_normal_exit_while_the_thread_sets_openssl_up_does_not_crash():
    # OpenSSL's exit handler must not run under the thread: the Python exit handler joins it.
    import subprocess
    import sys

    # Exiting a few ms after the start, with the thread mid-set-up: without the join this
    # died of SIGSEGV in OpenSSL's exit handler in 8 runs out of 8 here.
    code = ("import istio_cni._fastpath as f; f.openssl_warm_start();"
            "import istio_cni.kubeconfig, istio_cni.transport; raise SystemExit(3)")
    for _ in range(8):
        r = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys;sys.path.insert(0,{SRC!r});" + code],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 3, (r.returncode, r.stderr[-500:])
