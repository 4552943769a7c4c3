"""Plugin side of the agent protocol against a scripted Unix-socket peer (no root, no kernel)."""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest

from istio_cni import agent_client, errors
from istio_cni.config import parse_conf
from istio_cni.log import log
from istio_cni.skel import CmdArgs

NETCONF = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "istio-cni",
           "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "169.254.10.2/24"}]}}


class Peer:
    """Accepts connections on ``path``; ``reply(request_bytes) -> bytes | None`` (None: hang up)."""

    def __init__(self, path: str, reply) -> None:
        self.path, self.reply = path, reply
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.sock.settimeout(5)
        self.release = threading.Event()  # ends a "slow" reply early at teardown
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read_request(self, conn) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(4096)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
        while len(body) < length:
            body += conn.recv(4096)
        return head + b"\r\n\r\n" + body

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.current = conn
                req = self._read_request(conn)
                self.requests.append(req)
                out = self.reply(req, self)
                if out is not None:
                    conn.sendall(out)

    def body(self, i: int = 0) -> dict:
        return json.loads(self.requests[i].partition(b"\r\n\r\n")[2])

    def close(self) -> None:
        self.release.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


def http(body: bytes | dict, status: str = "200 OK") -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data


@pytest.fixture
def run_dir(tmp_path):
    return tmp_path


@pytest.fixture
def conf(run_dir):
    return parse_conf(dict(NETCONF, cni_agent_run_dir=str(run_dir), agent_timeout_seconds=0.5))


@pytest.fixture
def args():
    stdin = json.dumps(NETCONF).encode()
    return CmdArgs("ADD", "c0ffee" * 8, "/run/netns/x", "eth0",
                   "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p;IgnoreUnknown=1", "/opt/cni/bin", NETCONF, stdin)


@pytest.fixture
def peer(run_dir):
    made = []

    def start(reply):
        p = Peer(str(run_dir / "agent.sock"), reply)
        made.append(p)
        return p

    yield start
    for p in made:
        p.close()


@pytest.fixture(autouse=True)
def logs():
    """The plugin's log lines of this test (log.stream bound to stderr at import; swap it)."""
    import io

    saved, stream = list(log.sinks), log.stream
    log.stream = io.StringIO()
    yield log.stream
    log.sinks[:] = saved
    log.stream = stream


def test_missing_socket_means_direct_path(conf, args):
    assert not os.path.exists(conf.agent_socket)
    assert agent_client.try_agent(conf, args) is None


def test_result_is_returned_and_request_carries_the_raw_invocation(conf, args, peer):
    result = {"cniVersion": "1.0.0", "ips": [{"address": "169.254.10.2/24"}]}
    p = peer(lambda req, _: http({"result": result}))
    assert agent_client.try_agent(conf, args) == result
    head = p.requests[0].split(b"\r\n")[0]
    assert head == b"POST /v1/cni HTTP/1.1"
    body = p.body()
    assert body["stdin"] == args.stdin.decode()  # verbatim, not re-encoded
    assert body["command"] == "ADD" and body["netns"] == "/run/netns/x"
    assert body["args"] == args.args and body["container_id"] == args.container_id
    assert body["deadline"] == 0.5


def test_cni_error_answer_fails_the_add(conf, args, peer):
    peer(lambda req, _: http({"error": {"code": 100, "msg": "netfilter operation failed",
                                        "details": "iptc commit: EPERM"}}))
    with pytest.raises(errors.NetfilterError) as e:
        agent_client.try_agent(conf, args)
    assert e.value.code == 100 and e.value.details == "iptc commit: EPERM"


def test_annotation_error_keeps_its_class(conf, args, peer):
    peer(lambda req, _: http({"error": {"code": 102, "msg": "bad annotation traffic.sidecar.istio.io/x"}}))
    with pytest.raises(errors.InvalidAnnotation, match="traffic.sidecar.istio.io/x"):
        agent_client.try_agent(conf, args)


def test_fallback_answer_means_direct_path(conf, args, peer, logs):
    peer(lambda req, _: http({"fallback": "pod default/p not visible to the agent yet"}))
    assert agent_client.try_agent(conf, args) is None
    assert "not visible to the agent yet" in logs.getvalue()


def test_refused_connection_means_direct_path(conf, args, logs):
    # A socket file nobody listens on (agent crashed without unlinking it) -> ECONNREFUSED.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(conf.agent_socket)
    s.close()
    assert agent_client.try_agent(conf, args) is None
    assert "ConnectionRefusedError" in logs.getvalue()


def test_slow_agent_times_out_to_direct_path(conf, args, peer, logs):
    def slow(req, p):
        p.release.wait(10)  # far beyond the 0.5 s agent_timeout; released at teardown
        return None

    p = peer(slow)
    assert agent_client.try_agent(conf, args) is None
    assert len(p.requests) == 1
    assert "no answer within 0.5 s" in logs.getvalue()


def test_agent_dying_mid_request_means_direct_path(conf, args, peer, logs):
    peer(lambda req, _: None)  # read the request, hang up without a word
    assert agent_client.try_agent(conf, args) is None
    assert "connection closed in the response head" in logs.getvalue()


@pytest.mark.parametrize("raw, why", [
    (http(b"not json"), "not JSON"),
    (http(b"[1,2]"), "not a JSON object"),
    (http({"error": {"code": 4242, "msg": "?"}}), "unknown CNI error code 4242"),
    (http({"error": {"code": "100"}}), "without an integer code"),
    (http({"something": 1}), "neither result, error nor fallback"),
    (http({"result": "ok"}), "neither result, error nor fallback"),
    (http({"message": "boom"}, "500 Internal Server Error"), "HTTP 500"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}", "connection closed in the response body"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "malformed status line"),
    # issue 13: non-UTF-8, oversized, badly framed, nested too deep, an agent-side 999
    (http(b'{"result": "\xff\xfe"}'), "not JSON"),
    (http(b"\xc3\x28"), "not JSON"),
    (http(b"[" * 100_000), "not JSON"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999999\r\n\r\n{}", "larger than"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\n{}", "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", "duplicate content-length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n", "end of chunk"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
     "ambiguous framing"),
    (b"HTTP/1.1 200 OK\r\nX: a\nContent-Length: 2\r\n\r\n{}", "bare CR or LF"),
    (b"HTTP/1.1 200 OK\r\n\r\n" + b" " * (agent_client.MAX_ANSWER + 1), "larger than"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", "longer than"),
    (http({"error": {"code": 999, "msg": "agent bug"}}), "agent internal error"),
    (http({"result": {"cniVersion": "1.0.0", "ips": [{"address": "192.0.2.66/24"}]}}),
     "differs from the prevResult"),
])
def test_malformed_answers_mean_direct_path(conf, args, peer, logs, raw, why):
    peer(lambda req, _: raw)
    expected = {"cniVersion": "1.0.0", "ips": [{"address": "169.254.10.2/24"}]}
    assert agent_client.try_agent(conf, args, expected) is None
    lines = logs.getvalue().splitlines()
    assert len(lines) == 1 and why in lines[0]  # logged once
    assert json.loads(lines[0])["level"] == "warn"


def test_trickled_answer_times_out_to_direct_path(conf, args, peer, logs):
    # One byte at a time, each well inside a per-recv timeout: only a whole-exchange
    # deadline ends it. The peer stops at teardown at the latest (release).
    def trickle(req, p):
        conn = p.current
        for b in b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"{" * 5000:
            if p.release.wait(0.05):
                return None
            try:
                conn.sendall(bytes([b]))
            except OSError:
                return None
        return None

    peer(trickle)
    assert agent_client.try_agent(conf, args) is None
    assert "no answer within 0.5 s" in logs.getvalue()


def test_misbehaving_agent_gets_no_log_flush(conf, args, peer):
    p = peer(lambda req, _: b"garbage\r\n\r\n")
    assert agent_client.try_agent(conf, args) is None
    log.info("direct path committed")
    buf = next(s for s in log.sinks if isinstance(s, agent_client._LogBuffer))
    buf.flush()
    assert len(p.requests) == 1  # the CNI request only: no second wait for a broken agent


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan")])
def test_nonpositive_agent_timeout_goes_direct_at_once(run_dir, args, peer, timeout, logs):
    conf = parse_conf(dict(NETCONF, cni_agent_run_dir=str(run_dir)))
    conf = conf.replace(agent_timeout=timeout)
    p = peer(lambda req, _: http({"result": {}}))
    assert agent_client.try_agent(conf, args) is None
    assert p.requests == []


def test_logs_are_forwarded_once_at_exit(conf, args, peer, monkeypatch):
    # The flush's real 0.25 s limit could expire on a loaded machine before the peer thread has
    # recorded the request; what is tested is what is sent, and how often, not how fast.
    monkeypatch.setattr(agent_client, "LOG_FLUSH_TIMEOUT", 10.0)
    p = peer(lambda req, _: http({"fallback": "nope"}))
    assert agent_client.try_agent(conf, args) is None  # attaches the sink, logs the fallback
    log.info("direct path committed", netns="/run/netns/x")
    buf = next(s for s in log.sinks if isinstance(s, agent_client._LogBuffer))
    buf.flush()
    buf.flush()  # nothing new: no second request
    assert len(p.requests) == 2
    assert p.requests[1].startswith(b"POST /v1/log HTTP/1.1")
    lines = p.requests[1].partition(b"\r\n\r\n")[2].decode().splitlines()
    msgs = [json.loads(x)["msg"] for x in lines]
    assert msgs == ["node agent unusable, falling back to the direct path", "direct path committed"]


def test_sink_attached_only_once(conf, args, peer):
    peer(lambda req, _: http({"result": {"cniVersion": "1.0.0"}}))
    agent_client.try_agent(conf, args)
    agent_client.try_agent(conf, args)
    assert sum(isinstance(s, agent_client._LogBuffer) for s in log.sinks) == 1


LEAN_SCRIPT = """
import sys
sys.path.insert(0, SRC)
import istio_cni.agent_client as a, istio_cni.config as c, istio_cni.skel as s
conf = c.parse_conf({"cniVersion": "1.0.0", "cni_agent_run_dir": RUN_DIR})
args = s.CmdArgs("ADD", "c", "/x", "eth0", "", "", {}, b"{}")
assert a.try_agent(conf, args) is None  # socket file present, nobody listening: refused
bad = [m for m in ("json", "http.client", "kubernetes", "orjson", "logging", "dataclasses", "typing",
                   "socket", "selectors", "enum") if m in sys.modules]
print(",".join(bad))
"""


def test_agent_path_stays_lean(tmp_path):
    # As the bundle runs the plugin (-I -S): import plus one whole (refused) exchange must not
    # pull in these; ``socket`` alone costs ~14 ms there, the C ``_socket`` does the job.
    import subprocess
    import sys

    import istio_cni

    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(tmp_path / "agent.sock"))
    dead.close()
    src = os.path.dirname(os.path.dirname(istio_cni.__file__))
    code = f"SRC = {src!r}\nRUN_DIR = {str(tmp_path)!r}\n" + LEAN_SCRIPT
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


# ---- issue 13: names checked before the agent request; the real server's bounds ----------

@pytest.mark.parametrize("cni_args,key", [
    ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=../../x;IgnoreUnknown=1", "K8S_POD_NAME"),
    ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=a b;IgnoreUnknown=1", "K8S_POD_NAME"),
    ("K8S_POD_NAMESPACE=Default;K8S_POD_NAME=p;IgnoreUnknown=1", "K8S_POD_NAMESPACE"),
])
def test_bad_pod_reference_fails_before_the_agent_is_asked(run_dir, peer, cni_args, key):
    from istio_cni import plugin

    netconf = dict(NETCONF, cni_agent_run_dir=str(run_dir))
    p = peer(lambda req, _: http({"result": NETCONF["prevResult"]}))
    args = CmdArgs("ADD", "c0ffee" * 8, "/run/netns/x", "eth0", cni_args, "/opt/cni/bin", netconf,
                   json.dumps(netconf).encode())
    with pytest.raises(errors.InvalidNetworkConfig) as ei:
        plugin.cmd_add(args)
    assert ei.value.code == 7 and key in ei.value.msg
    assert p.requests == []


class StubHandler:
    def __init__(self, answer):
        self.answer, self.requests = answer, []

    def handle(self, req):
        self.requests.append(req)
        return self.answer


@pytest.fixture
def agent_server(run_dir):
    import io

    from istio_cni_installer.agent.server import AgentServer

    made = []

    def start(answer, **kw):
        s = AgentServer(str(run_dir / "agent.sock"), StubHandler(answer), log_stream=io.StringIO(), **kw).start()
        made.append(s)
        return s

    yield start
    for s in made:
        s.stop()


def test_client_and_real_server_agree(conf, args, agent_server):
    prev = NETCONF["prevResult"]
    server = agent_server({"result": prev})
    assert agent_client.try_agent(conf, args, prev) == prev
    assert server.handler.requests[0]["stdin"] == args.stdin.decode()


def test_server_drops_a_trickling_client(run_dir, agent_server):
    """A per-read timeout alone lets a client send one byte per interval for ever."""
    agent_server({"result": {}}, request_read_seconds=0.3)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(run_dir / "agent.sock"))
    stop = threading.Event()

    def trickle():
        for b in b"POST /v1/cni HTTP/1.1\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000:
            if stop.wait(0.05):
                return
            try:
                s.send(bytes([b]))
            except OSError:
                return

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    s.settimeout(5)
    try:
        # The server hung up (after 0.3 s; the trickle needs ~50 s): EOF, or a reset when it
        # closed with trickled bytes still unread in its receive buffer.
        try:
            got = s.recv(100)
        except ConnectionResetError:
            got = b""
        assert got == b""
    finally:
        stop.set()
        t.join(5)
        s.close()


def test_server_caps_connections_and_busy_plugins_go_direct(conf, args, run_dir, agent_server, logs):
    import time

    server = agent_server({"result": NETCONF["prevResult"]}, max_connections=2)
    idle = []
    for _ in range(2):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(str(run_dir / "agent.sock"))
        idle.append(c)
    try:
        # The cap counts accepted connections: wait (bounded) until the serving loop took both.
        end = time.monotonic() + 5
        while server._server._slots._value and time.monotonic() < end:
            time.sleep(0.01)
        assert server._server._slots._value == 0
        assert agent_client.try_agent(conf, args) is None
        assert "HTTP 503" in logs.getvalue() and "connection cap" in logs.getvalue()
    finally:
        for c in idle:
            c.close()


def test_forwarded_log_lines_cannot_be_forged(conf, agent_server):
    server = agent_server({"result": {}})
    payload = ('{"msg":"ok"}\n{}\n{"source":"agent","msg":"forged"}\nnot json\n'
               '{"msg":"a"}{"b":1}\n["x"]\n' + "[" * 100_000 + "\n").encode()
    agent_client._post(conf.agent_socket, agent_client.LOG_PATH, payload, 2.0)
    lines = server.log_stream.getvalue().splitlines()
    docs = [json.loads(x) for x in lines]  # every line is one JSON object
    assert len(docs) == 7 and all(d["source"] == "plugin" for d in docs)
    assert docs[0] == {"source": "plugin", "msg": "ok"} and docs[2]["msg"] == "forged"
    assert docs[4]["msg"] == '{"msg":"a"}{"b":1}'


@pytest.mark.parametrize("head,status", [
    (b"POST /v1/cni HTTP/1.1\r\nContent-Length: +5\r\n\r\n", b"411"),
    (b"POST /v1/cni HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", b"413"),
    (b"POST /v1/cni HTTP/1.1\r\nContent-Length: 4\r\n\r\n\xff\xfe\xfd\xfc", b"400"),
    (b"POST /v1/cni HTTP/1.1\r\nContent-Length: 50000\r\n\r\n" + b"[" * 50000, b"400"),
])
def test_server_refuses_bad_requests_with_a_status(run_dir, agent_server, head, status):
    server = agent_server({"result": {}})
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(run_dir / "agent.sock"))
    try:
        s.sendall(head)
        got = b""
        while chunk := s.recv(4096):
            got += chunk
    finally:
        s.close()
    assert got.split(b" ")[1] == status and server.handler.requests == []
