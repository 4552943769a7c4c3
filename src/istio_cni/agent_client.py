"""Plugin side of the node-agent fast path: one HTTP/1.1 POST over the agent's Unix socket.

On the ADD path, so it stays lean: no ``http.client`` (pulls in ``email``), no ``json``;
a raw ``AF_UNIX`` socket and the compiled JSON codec.

Protocol (the agent implements the other half in ``istio_cni_installer.agent``)::

    POST /v1/cni   {"command","container_id","netns","ifname","args","path","stdin",
                    "deadline" (seconds the plugin waits), "expires" (unix time it stops waiting)}
      200 {"result": {...}}                   the CNI result; the agent committed the rules
      200 {"error": {"code","msg","details"}} a CNI error the ADD must fail with
      200 {"fallback": "why"}                 the agent cannot decide (e.g. it cannot see the
                                              pod yet); the plugin runs the direct path
    POST /v1/log   newline-separated JSON log lines (the agent prints them)

Failure policy (why): the agent runs the same decision/rule/netfilter code as the direct
path, so an *error* answer (bad annotation, commit failed) would fail the same way
directly; repeating it only doubles the latency and could race the agent's commit.
It fails the ADD (fail closed; kubelet retries the sandbox). Everything that says
nothing about the pod - socket missing, refused, timeout, reset, an answer we cannot
parse, an unknown error code, or an explicit ``fallback`` - returns ``None`` and
the plugin takes the direct path, which has its own bounded retries.
"""

from __future__ import annotations

from . import errors
from .log import log

CNI_PATH = "/v1/cni"
LOG_PATH = "/v1/log"
MAX_ANSWER = 1 << 20  # a CNI result is a few KB; anything bigger is not our agent
LOG_FLUSH_TIMEOUT = 0.25  # the log flush runs after the result is on stdout; keep exit prompt


class AgentUnavailable(Exception):
    """The agent could not give a usable answer; the message says why (logged, then fallback)."""


def _post(sock_path: str, path: str, body: bytes, timeout: float) -> bytes:
    """POST ``body`` and return the response body of a 200; whole exchange bounded by ``timeout``."""
    import time

    # The C module, not ``socket``: under ``python -I -S`` the wrapper pulls in enum,
    # selectors and collections, ~14 ms here, a fifth of a whole ADD through the agent.
    import _socket

    deadline = time.monotonic() + timeout
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(sock_path)
        head = (f"POST {path} HTTP/1.1\r\nHost: istio-cni-agent\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        s.sendall(head.encode() + body)
        chunks = []
        size = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("agent answer not complete in time")
            s.settimeout(left)
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER:
                raise AgentUnavailable(f"agent answer larger than {MAX_ANSWER} bytes")
    finally:
        s.close()
    return _parse_http(b"".join(chunks))


def _parse_http(raw: bytes) -> bytes:
    from .transport import parse_head

    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise AgentUnavailable("agent closed the connection before a complete HTTP header")
    try:
        status, _reason, headers = parse_head(head)
    except ValueError as e:
        raise AgentUnavailable(f"agent sent a {e}") from None
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise AgentUnavailable(f"agent sent a bad Content-Length {length[:20]!r}")
        if len(body) < int(length):
            raise AgentUnavailable(f"agent answer truncated ({len(body)} of {length} bytes)")
        body = body[: int(length)]
    if status != 200:
        raise AgentUnavailable(f"agent answered HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
    return body


def _request_body(args, timeout: float) -> bytes:
    import time

    from ._fastpath import json_dumps

    stdin = args.stdin.decode("utf-8") if isinstance(args.stdin, (bytes, bytearray)) else str(args.stdin)
    return json_dumps({
        "command": args.command, "container_id": args.container_id, "netns": args.netns,
        "ifname": args.ifname, "args": args.args, "path": args.path, "stdin": stdin,
        # The agent leaves itself a margin under this so its answer arrives before we give up;
        # "expires" (wall clock, same host) also covers time spent queued in the agent's backlog.
        "deadline": timeout, "expires": time.time() + timeout,
    }).encode()


def interpret(answer: bytes) -> dict:
    """The agent's JSON answer -> the CNI result dict, or raise the CNI error it carries.

    Raises ``AgentUnavailable`` for anything that is not one of the three agreed shapes.
    """
    from ._fastpath import json_loads

    try:
        doc = json_loads(answer)
    except ValueError as e:
        raise AgentUnavailable(f"agent answer is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise AgentUnavailable("agent answer is not a JSON object")
    if "fallback" in doc:
        raise AgentUnavailable(f"agent asked for the direct path: {doc['fallback']}")
    if "error" in doc:
        err = doc["error"]
        code = err.get("code") if isinstance(err, dict) else None
        if not isinstance(code, int) or isinstance(code, bool):
            raise AgentUnavailable(f"agent error without an integer code: {str(err)[:200]}")
        try:
            cls = errors.error_class(code)
        except KeyError:
            raise AgentUnavailable(f"agent answered unknown CNI error code {code}") from None
        raise cls(str(err.get("msg") or cls.msg), str(err.get("details") or ""))
    result = doc.get("result")
    if not isinstance(result, dict):
        raise AgentUnavailable("agent answer has neither result, error nor fallback")
    return result


def try_agent(conf, args) -> dict | None:
    """ADD through the agent: the CNI result, a raised CNI error, or ``None`` (direct path)."""
    import os

    sock = conf.agent_socket
    if not sock or not os.path.exists(sock):
        log.debug("node agent socket absent, using the direct path", socket=sock)
        return None
    forward_logs(sock)
    try:
        answer = _post(sock, CNI_PATH, _request_body(args, conf.agent_timeout), conf.agent_timeout)
        return interpret(answer)
    except errors.CNIError:
        raise
    except AgentUnavailable as e:
        why = str(e)
    except TimeoutError:
        why = f"no answer within {conf.agent_timeout} s"
    except OSError as e:  # refused (agent down), reset (agent died mid-request), EACCES
        why = f"{type(e).__name__}: {e.strerror or e}"
    log.warning("node agent unusable, falling back to the direct path", socket=sock, cause=why)
    return None


class _LogBuffer:
    """A ``log.sinks`` entry collecting lines; sent once, at interpreter exit."""

    def __init__(self, sock_path: str) -> None:
        self.sock_path = sock_path
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def flush(self) -> None:
        # Runs after skel has written the result to stdout; one short bounded POST, and only
        # when there is something to say (the agent logs successful ADDs itself).
        if not self.lines:
            return
        payload = "".join(self.lines).encode()
        self.lines = []
        try:
            _post(self.sock_path, LOG_PATH, payload, LOG_FLUSH_TIMEOUT)
        except (OSError, AgentUnavailable):
            pass  # stderr already has every line


def forward_logs(sock_path: str) -> _LogBuffer:
    """Attach (once) a sink that forwards this process's later log lines to the agent."""
    for sink in log.sinks:
        if isinstance(sink, _LogBuffer):
            return sink
    import atexit

    buf = _LogBuffer(sock_path)
    log.sinks.append(buf)
    atexit.register(buf.flush)
    return buf
