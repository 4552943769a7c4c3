"""The pod GET's two TLS clients, tested by one fixture: ``_fastpath.HttpsGet`` on a C thread
(the one-shot plugin's) and ``_ssl`` on the calling thread (``transport``, everything else).

Every scenario runs through ``k8s.Client`` / ``get_pod`` once per client and expects the same
outcome: the same pod, or a failure of the same kind (verification, handshake, timeout,
unusable TLS material). A hypothesis test feeds both the same arbitrary answers over TLS.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from peers.certs import CA, LOOPBACK_SANS
from support.damage import EDITS, damaged

from istio_cni import _fastpath, errors
from istio_cni.config import parse_conf
from istio_cni.k8s import Client, get_pod
from istio_cni.kubeconfig import load

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "ns1"}}
POD_BYTES = json.dumps(POD).encode()


def ok_answer(body: bytes = POD_BYTES, close: bool = True) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + ("Connection: close\r\n" if close else "") + "\r\n").encode() + body


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """One CA; a serving certificate for 127.0.0.1, one for another IP only, a client one."""
    d = tmp_path_factory.mktemp("tlsget-pki")
    ca = CA(d, "tlsget-ca")
    server = ca.issue("server", "server", sans=LOOPBACK_SANS)
    wrong_ip = ca.issue("wrong-ip", "wrong-ip", sans=("IP:192.0.2.10", "DNS:elsewhere.example"))
    client = ca.issue("client", "system:node:n1", client=True)
    return {"ca": ca.cert, "server": server, "wrong_ip": wrong_ip, "client": client}


@contextmanager
def tls_server(pki, answer=None, *, cert="server", require_client=False, max_version=None,
               close=True, plain=False, silent=False, control=None):
    """A one-thread TLS server on 127.0.0.1 that reads one request head, writes ``answer``
    (bytes) and closes (unless ``close`` is False: it then waits for the client to go).
    ``plain``: no TLS at all; ``silent``: accepts and never answers. ``control`` (a dict)
    receives ``restart(cert_and_key)``: later connections get a fresh context with that
    certificate, as after a server restart (new session ticket keys). Bounded: every socket
    has a timeout and the thread ends with the block."""

    def context(chain):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*chain)
        if require_client:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(pki["ca"])
        if max_version is not None:
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = max_version
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        return ctx

    current = {"ctx": context(pki[cert])}
    if control is not None:
        control["restart"] = lambda chain: current.update(ctx=context(chain))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()
    seen: list[bytes] = []
    answer = ok_answer() if answer is None else answer

    def serve_one(conn: socket.socket) -> None:
        conn.settimeout(3)
        try:
            if silent:
                stop.wait(5)
                return
            s = conn if plain else current["ctx"].wrap_socket(conn, server_side=True)
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            seen.append(data)
            s.sendall(answer)
            if not close:
                stop.wait(5)
        except (OSError, ssl.SSLError):
            pass  # the client refused us: what some tests expect
        finally:
            conn.close()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield listener.getsockname()[1], seen
    finally:
        stop.set()
        t.join(2)
        listener.close()


def kubeconfig(tmp_path: Path, port: int, pki, *, ca="file", insecure=False, client=None, token="t0ken"):
    cluster: dict = {"server": f"https://127.0.0.1:{port}"}
    if insecure:
        cluster["insecure-skip-tls-verify"] = True
    elif ca == "file":
        cluster["certificate-authority"] = str(pki["ca"])
    elif ca == "data":
        cluster["certificate-authority-data"] = base64.b64encode(pki["ca"].read_bytes()).decode()
    elif ca is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    user: dict = {"token": token} if token else {}
    if client == "file":
        user.update({"client-certificate": str(pki["client"][0]), "client-key": str(pki["client"][1])})
    elif client == "data":
        user.update({"client-certificate-data": base64.b64encode(pki["client"][0].read_bytes()).decode(),
                     "client-key-data": base64.b64encode(pki["client"][1].read_bytes()).decode()})
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "clusters": [{"name": "k", "cluster": cluster}],
           "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
           "users": [{"name": "u", "user": user}]}
    path = tmp_path / f"kc-{port}-{ca}-{insecure}-{client}"
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.fixture(params=["c-thread", "ssl-module"])
def tls_in_c(request):
    return request.param == "c-thread"


def client(kc: str, tls_in_c: bool, timeout: float = 3.0) -> Client:
    c = Client(load(kc), timeout=timeout, tls_in_c=tls_in_c)
    assert (c._c_tls is not None) == tls_in_c  # the client under test is the one in use
    return c


def lookup(kc: str, tls_in_c: bool, timeout: float = 3.0) -> dict:
    conf = parse_conf({"cniVersion": "1.0.0", "name": "n", "type": "istio-cni", "kubernetes": {"kubeconfig": kc},
                       "lookup_deadline_seconds": 0, "lookup_retry_interval_seconds": 0.01})
    return get_pod(conf, "ns1", "web", client=client(kc, tls_in_c, timeout), sleep=lambda s: None)


# ---- the profile: what the C client's contexts are made with ---------------------------------


def test_c_client_profile_is_cpythons_tls_client():
    """Same options, minimum version, verification and ciphers as the interpreter's own
    ``_ssl._SSLContext(PROTOCOL_TLS_CLIENT)`` when that is upstream CPython's build (the test
    venv's). Debian's python3.11 (the wheel check's aarch64 run) differs from upstream in two
    documented ways, and the C client keeps upstream's stricter settings: it adds
    SSL_OP_IGNORE_UNEXPECTED_EOF (we treat such an EOF as _ssl's SSLEOFError is treated
    instead, and http1 checks the framing) and leaves the cipher list and minimum version to
    OpenSSL's defaults (a superset of CPython's list)."""
    import _ssl

    ref = _ssl._SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
    ref_ciphers = [c["name"] for c in ref.get_ciphers()]
    profile = _fastpath.tls_client_profile()
    assert profile is not None, "libssl.so.3 not usable by the C client"
    options, min_version, verify_mode, flags, ciphers = profile
    assert verify_mode == 3 and ref.verify_mode == _ssl.CERT_REQUIRED  # SSL_VERIFY_PEER|FAIL_IF_NO_PEER_CERT
    assert flags == ref.verify_flags
    assert min_version == 0x0303  # TLS 1.2
    ignore_eof = getattr(_ssl, "OP_IGNORE_UNEXPECTED_EOF", 0x80)
    if not ref.options & ignore_eof:  # upstream CPython
        assert options == ref.options
        assert ref.minimum_version == 0x0303
        assert ciphers == ref_ciphers
    else:  # Debian's build
        assert options == ref.options & ~ignore_eof
        assert set(ciphers) < set(ref_ciphers)


# ---- the same outcome through both clients -------------------------------------------------------


@pytest.mark.parametrize("ca", ["file", "data"])
def test_verified_pod_get(pki, tmp_path, tls_in_c, ca):
    with tls_server(pki) as (port, seen):
        assert lookup(kubeconfig(tmp_path, port, pki, ca=ca), tls_in_c) == POD
    head = seen[0].decode()
    assert head.startswith("GET /api/v1/namespaces/ns1/pods/web HTTP/1.1\r\n")
    assert "Authorization: Bearer t0ken\r\n" in head and "Connection: close\r\n" in head


@pytest.mark.parametrize("client_cred", ["file", "data"])
def test_client_certificate(pki, tmp_path, tls_in_c, client_cred):
    with tls_server(pki, require_client=True) as (port, _):
        assert lookup(kubeconfig(tmp_path, port, pki, client=client_cred, token=""), tls_in_c) == POD


def test_client_certificate_missing_fails(pki, tmp_path, tls_in_c):
    with tls_server(pki, require_client=True) as (port, _):
        with pytest.raises(OSError):
            client(kubeconfig(tmp_path, port, pki), tls_in_c).get("/api/v1/namespaces/ns1/pods/web")


def test_insecure_skips_verification(pki, tmp_path, tls_in_c):
    with tls_server(pki, cert="wrong_ip") as (port, _):
        assert lookup(kubeconfig(tmp_path, port, pki, insecure=True), tls_in_c) == POD


@pytest.mark.parametrize("cert,ca,why", [
    ("server", None, "unable to get local issuer certificate"),  # the system store lacks the test CA
    ("wrong_ip", "file", "IP address mismatch"),
])
def test_verification_failures(pki, tmp_path, tls_in_c, cert, ca, why):
    with tls_server(pki, cert=cert) as (port, seen):
        with pytest.raises(errors.TryAgainLater) as ei:
            lookup(kubeconfig(tmp_path, port, pki, ca=ca), tls_in_c)
    assert "CERTIFICATE_VERIFY_FAILED" in ei.value.details and why in ei.value.details
    assert "t0ken" not in str(ei.value) + ei.value.details  # the request's token never shows
    assert seen == []  # no request (and no token) went to a server that did not verify


def test_unusable_ca_data_is_a_configuration_error(pki, tmp_path, tls_in_c, monkeypatch):
    import istio_cni

    monkeypatch.setattr(istio_cni, "ONE_SHOT_PROCESS", tls_in_c)  # which client get_pod makes
    kc = kubeconfig(tmp_path, 1, pki, ca=b"-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    conf = parse_conf({"cniVersion": "1.0.0", "name": "n", "type": "istio-cni", "kubernetes": {"kubeconfig": kc}})
    with pytest.raises(errors.KubernetesLookupError, match="cannot load TLS material") as ei:
        get_pod(conf, "ns1", "web", sleep=lambda s: None)
    assert not isinstance(ei.value, errors.TryAgainLater)  # reported at once, not retried


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_server_refused(pki, tmp_path, tls_in_c):
    with tls_server(pki, max_version=ssl.TLSVersion.TLSv1_1) as (port, seen):
        with pytest.raises(OSError):
            client(kubeconfig(tmp_path, port, pki), tls_in_c).get("/x")
    assert seen == []


def test_plain_http_server_on_a_tls_url(pki, tmp_path, tls_in_c):
    with tls_server(pki, plain=True, answer=b"HTTP/1.1 400 Bad Request\r\n\r\n") as (port, _):
        with pytest.raises(OSError):
            client(kubeconfig(tmp_path, port, pki), tls_in_c).get("/x")


def test_silent_server_times_out(pki, tmp_path, tls_in_c):
    with tls_server(pki, silent=True) as (port, _):
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            client(kubeconfig(tmp_path, port, pki), tls_in_c, timeout=0.3).get("/x")
        assert time.monotonic() - t0 < 2.5


def test_connection_refused(pki, tmp_path, tls_in_c):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ConnectionRefusedError):
        client(kubeconfig(tmp_path, port, pki), tls_in_c).get("/x")


def test_server_that_keeps_the_connection_open(pki, tmp_path, tls_in_c):
    # It ignores our Connection: close. The Python path stops at Content-Length; the C
    # client reads to the close, so it hands over what it has at the deadline.
    with tls_server(pki, answer=ok_answer(close=False), close=False) as (port, _):
        assert client(kubeconfig(tmp_path, port, pki), tls_in_c, timeout=0.5).get("/x") == POD


def test_oversized_answer_refused(pki, tmp_path, tls_in_c):
    body = b" " * (5 << 20)  # over http1.MAX_BODY
    with tls_server(pki, answer=ok_answer(body)) as (port, _):
        with pytest.raises(ValueError, match="larger than"):
            client(kubeconfig(tmp_path, port, pki), tls_in_c).get("/x")


def test_truncated_answer_refused(pki, tmp_path, tls_in_c):
    with tls_server(pki, answer=ok_answer()[:-5]) as (port, _):
        with pytest.raises(ValueError):
            client(kubeconfig(tmp_path, port, pki), tls_in_c).get("/x")


# ---- the C client alone ----------------------------------------------------------------------------


def test_c_client_refuses_host_names_and_nul_bytes():
    with pytest.raises(ValueError, match="not an IP"):
        _fastpath.HttpsGet("localhost", 443, b"GET / HTTP/1.1\r\n\r\n", time.monotonic() + 1, 1024)
    with pytest.raises(ValueError, match="NUL"):
        _fastpath.HttpsGet("127.0.0.1", 1, b"GET /\0 HTTP/1.1\r\n\r\n", time.monotonic() + 1, 1024)
    with pytest.raises(ValueError, match="NUL"):
        _fastpath.HttpsGet("127.0.0.1", 1, b"x", time.monotonic() + 1, 1024, ca_file="/etc/\0")
    assert _fastpath.is_ip_literal("127.0.0.1") and _fastpath.is_ip_literal("::1")
    assert not _fastpath.is_ip_literal("localhost") and not _fastpath.is_ip_literal("127.0.0.1\0")


def test_c_client_is_done_only_when_the_answer_is_there(pki):
    with tls_server(pki) as (port, _):
        g = _fastpath.HttpsGet("127.0.0.1", port, b"GET / HTTP/1.1\r\n\r\n", time.monotonic() + 3, 1 << 20,
                               ca_file=str(pki["ca"]))
        polls = 0
        while not g.done() and polls < 3000:
            polls += 1
            time.sleep(0.001)
        assert g.done()
        assert g.result() == ok_answer() == g.result()  # result() again: the same bytes


def test_c_client_caps_the_answer(pki):
    with tls_server(pki, answer=ok_answer(b" " * 100_000)) as (port, _):
        g = _fastpath.HttpsGet("127.0.0.1", port, b"GET / HTTP/1.1\r\n\r\n", time.monotonic() + 3, 50_000,
                               ca_file=str(pki["ca"]))
        with pytest.raises(ValueError, match="larger than the limit"):
            g.result()


def test_the_plugin_process_uses_the_c_client(pki, tmp_path, monkeypatch):
    import istio_cni

    monkeypatch.setattr(istio_cni, "ONE_SHOT_PROCESS", True)
    with tls_server(pki) as (port, _):
        kc = kubeconfig(tmp_path, port, pki)
        assert Client(load(kc))._c_tls is not None
        named = load(kc).replace(server=f"https://localhost:{port}")
        assert Client(named)._c_tls is None  # a host name: _ssl, which bounds name resolution
    monkeypatch.setattr(istio_cni, "ONE_SHOT_PROCESS", False)
    assert Client(load(kc))._c_tls is None


def test_no_usable_openssl_for_the_c_client_falls_back_to_ssl(pki, tmp_path, monkeypatch):
    def unavailable(*a, **k):
        raise errors.TLSUnavailable("libssl.so.3 cannot be loaded or lacks a function")

    monkeypatch.setattr(_fastpath, "HttpsGet", unavailable)
    with tls_server(pki) as (port, _):
        c = client(kubeconfig(tmp_path, port, pki), True)
        assert c.get("/api/v1/namespaces/ns1/pods/web") == POD
        assert c._c_tls is None and c._ctx is not None  # _ssl from then on
        assert c.get("/api/v1/namespaces/ns1/pods/web") == POD


@pytest.mark.parametrize("special", ["fifo", "device", "directory"])
@pytest.mark.parametrize("field", ["certificate-authority", "client-certificate", "client-key", "tokenFile",
                                   "the kubeconfig itself"])
def test_special_files_named_by_a_kubeconfig_fail_at_once(pki, tmp_path, tls_in_c, monkeypatch, field, special):
    """A FIFO would block the open (or OpenSSL's read) for good, /dev/zero never ends: each is
    one clear CNI error, on both clients, without touching the network."""
    import os

    import istio_cni

    monkeypatch.setattr(istio_cni, "ONE_SHOT_PROCESS", tls_in_c)
    target = {"fifo": str(tmp_path / "fifo"), "device": "/dev/zero", "directory": str(tmp_path)}[special]
    if special == "fifo":
        os.mkfifo(target)
    kc = tmp_path / "kc"
    if field == "the kubeconfig itself":
        kc_path = target
    else:
        doc = json.loads(open(kubeconfig(tmp_path, 1, pki, client="file" if "client" in field else None)).read())
        where = doc["users"][0]["user"] if field in ("client-certificate", "client-key", "tokenFile") else \
            doc["clusters"][0]["cluster"]
        if field == "tokenFile":
            where.pop("token", None)
        where[field] = target
        kc.write_text(json.dumps(doc))
        kc_path = str(kc)
    conf = parse_conf({"cniVersion": "1.0.0", "name": "n", "type": "istio-cni", "kubernetes": {"kubeconfig": kc_path}})
    box: list = []

    def lookup_once() -> None:
        try:
            get_pod(conf, "ns1", "web", sleep=lambda s: None)
        except BaseException as e:
            box.append(e)

    t = threading.Thread(target=lookup_once, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "the lookup hangs on a special file"
    assert isinstance(box[0], errors.CNIError) and not isinstance(box[0], errors.TryAgainLater), box
    assert "regular file" in str(box[0]) + box[0].details


# ---- differential: any answer, both clients ---------------------------------------------------

_heads = st.sampled_from([
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Length: 1\r\n\r\n",
    b"",
])


@st.composite
def answers(draw):
    body = draw(st.one_of(st.just(POD_BYTES), st.binary(max_size=300)))
    head = draw(_heads)
    if b"%d" in head:
        head = head % (len(body) + draw(st.sampled_from([0, 0, 0, -1, 3])))
    raw = head + body
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.binary(max_size=40))
    return raw


def outcome(kc: str, tls_in_c: bool):
    try:
        return ("ok", client(kc, tls_in_c, timeout=2.0).get("/api/v1/namespaces/ns1/pods/web"))
    except Exception as e:  # the kind of failure, not its wording
        for kind in (TimeoutError, ValueError, OSError):
            if isinstance(e, kind):
                return ("fail", kind.__name__)
        return ("fail", type(e).__name__)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=answers())
def test_both_clients_read_any_answer_alike(pki, tmp_path, raw):
    with tls_server(pki, answer=raw) as (port, _):
        kc = kubeconfig(tmp_path, port, pki)
        assert outcome(kc, True) == outcome(kc, False)


# ---- the TLS session kept between plugin processes ---------------------------------------------


def c_get(port, pki, session_file, **kw):
    kw.setdefault("ca_file", str(pki["ca"]))
    g = _fastpath.HttpsGet("127.0.0.1", port, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", time.monotonic() + 3,
                           1 << 20, session_file=str(session_file), **kw)
    assert g.result() == ok_answer()
    return g.resumed()


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    return d


def test_session_kept_then_resumed(pki, run_dir):
    f = run_dir / "tls-session"
    with tls_server(pki) as (port, _):
        assert c_get(port, pki, f) is False  # a full handshake, which keeps its session
        st = f.stat()
        assert st.st_mode & 0o777 == 0o600 and f.read_bytes().startswith(b"istio-cni tls session 1\n")
        assert c_get(port, pki, f) is True and c_get(port, pki, f) is True
        assert f.stat().st_mtime_ns == st.st_mtime_ns  # a resumed handshake does not rewrite it
    assert sorted(p.name for p in run_dir.iterdir()) == ["tls-session"]  # no temp file left


def test_session_bound_to_the_trust_it_was_made_under(pki, run_dir, tmp_path):
    f = run_dir / "tls-session"
    with tls_server(pki) as (port, _):
        c_get(port, pki, f)
        assert c_get(port, pki, f, ca_file=None, ca_pem=pki["ca"].read_bytes()) is False  # other CA source
        assert c_get(port, pki, f, ca_file=None, ca_pem=pki["ca"].read_bytes()) is True
        copy = tmp_path / "ca-copy.crt"
        copy.write_bytes(pki["ca"].read_bytes())
        assert c_get(port, pki, f, ca_file=str(copy)) is False  # another CA file
        copy.write_bytes(pki["ca"].read_bytes() + b"\n")
        assert c_get(port, pki, f, ca_file=str(copy)) is False  # the same file, rewritten
    with tls_server(pki) as (other_port, _):
        assert c_get(other_port, pki, f) is False  # another server


@pytest.mark.parametrize("spoil", ["garbage", "truncated", "group-writable", "other-owner", "symlink", "flipped",
                                   "refused by the server"])
def test_unsound_session_file_is_ignored(pki, run_dir, spoil):
    f = run_dir / "tls-session"
    with tls_server(pki) as (port, _):
        c_get(port, pki, f)
        good = f.read_bytes()
        if spoil == "garbage":
            f.write_bytes(b"istio-cni tls session 1\n" + bytes(range(256)) * 8)
        elif spoil == "truncated":
            f.write_bytes(good[:-40])
        elif spoil == "group-writable":
            f.chmod(0o620)
        elif spoil == "other-owner":
            import os

            os.chown(f, 1337, 1337)
        elif spoil == "symlink":
            real = run_dir / "elsewhere"
            f.rename(real)
            f.symlink_to(real)
        elif spoil == "flipped":
            f.write_bytes(good[:-60] + bytes([good[-60] ^ 0xFF]) + good[-59:])
        elif spoil == "refused by the server":  # parses, but its PSK binder cannot verify
            f.write_bytes(good[:107] + bytes([good[107] ^ 0xFF]) + good[108:])
        assert c_get(port, pki, f) is False  # ignored, and the GET goes on
        if spoil in ("garbage", "truncated", "flipped", "refused by the server"):
            assert c_get(port, pki, f) is True  # replaced by the full handshake's session


def test_a_session_the_restarted_server_declines_costs_one_retry(pki, run_dir):
    # A resumed handshake is made without loading the CA (it shows no certificate); a server
    # that no longer knows the ticket answers with a full one, which must still be verified.
    f = run_dir / "tls-session"
    control: dict = {}
    with tls_server(pki, control=control) as (port, seen):
        assert c_get(port, pki, f) is False and c_get(port, pki, f) is True
        control["restart"](pki["server"])  # new ticket keys, same certificate
        assert c_get(port, pki, f) is False  # the answer still comes, from a verified full handshake
        assert c_get(port, pki, f) is True  # and its session is the one kept now
    assert len(seen) == 4  # one request per exchange: the declined attempt sent none


@pytest.mark.parametrize("impostor", ["untrusted CA", "wrong IP"])
def test_a_declined_session_never_skips_verification(pki, run_dir, tmp_path, impostor):
    # The kept session binds the server's address and our trust; a server there that declines
    # it must present a certificate that verifies against that trust, as on any full handshake.
    f = run_dir / "tls-session"
    chain = CA(tmp_path, "other-ca").issue("server", "server", sans=LOOPBACK_SANS) if impostor == "untrusted CA" \
        else pki["wrong_ip"]
    control: dict = {}
    with tls_server(pki, control=control) as (port, seen):
        c_get(port, pki, f)
        control["restart"](chain)
        g = _fastpath.HttpsGet("127.0.0.1", port, b"GET / HTTP/1.1\r\nAuthorization: Bearer s3cret-token\r\n\r\n",
                               time.monotonic() + 3, 1 << 20, ca_file=str(pki["ca"]), session_file=str(f))
        with pytest.raises(OSError) as ei:
            g.result()
    assert "CERTIFICATE_VERIFY_FAILED" in str(ei.value) or "certificate verify failed" in str(ei.value)
    assert "s3cret-token" not in str(ei.value)
    assert len(seen) == 1  # only the first, genuine exchange's request reached a server
    assert not f.exists()  # the declined session is gone, and the failed handshake kept none


def test_no_session_kept_for_client_certificates_or_without_verification(pki, run_dir):
    f = run_dir / "tls-session"
    with tls_server(pki, require_client=True) as (port, _):
        c_get(port, pki, f, cert_file=str(pki["client"][0]), key_file=str(pki["client"][1]))
        assert not f.exists()
    with tls_server(pki) as (port, _):
        c_get(port, pki, f, ca_file=None, insecure=True)
        assert not f.exists()


def test_the_plugin_keeps_its_session_in_the_run_dir(pki, tmp_path, run_dir):
    from istio_cni.k8s import tls_session_file

    with tls_server(pki) as (port, _):
        kc = kubeconfig(tmp_path, port, pki)
        conf = parse_conf({"cniVersion": "1.0.0", "name": "n", "type": "istio-cni", "kubernetes": {"kubeconfig": kc},
                           "cni_agent_run_dir": str(run_dir)})
        assert tls_session_file(conf) == f"{run_dir}/tls-session"
        c = Client(load(kc), tls_in_c=True, tls_session_file=tls_session_file(conf))
        assert c.get("/api/v1/namespaces/ns1/pods/web") == POD == c.get("/api/v1/namespaces/ns1/pods/web")
        assert (run_dir / "tls-session").exists()
    no_run_dir = parse_conf({"cniVersion": "1.0.0", "name": "n", "type": "istio-cni", "kubernetes": {"kubeconfig": kc}})
    assert tls_session_file(no_run_dir) == ""


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=EDITS, tail=st.binary(max_size=64))
def test_any_damaged_session_file_still_gives_the_answer(pki, tmp_path, edits, tail):
    """Whatever bytes the session file holds (a valid one, damaged anywhere: flipped, cut,
    grown), the exchange ends with the server's answer, in bounded time, and leaves at most
    the one file behind."""
    import secrets

    run = tmp_path / f"run-{secrets.token_hex(4)}"
    run.mkdir(mode=0o700)
    f = run / "tls-session"
    with tls_server(pki) as (port, _):
        c_get(port, pki, f)
        f.write_bytes(damaged(f.read_bytes(), edits) + tail)
        t0 = time.monotonic()
        assert c_get(port, pki, f) in (True, False)  # c_get asserts the answer itself
        assert time.monotonic() - t0 < 3.0
    assert [p.name for p in run.iterdir()] == ["tls-session"]
