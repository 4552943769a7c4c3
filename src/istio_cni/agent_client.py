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
    POST /v1/log   newline-separated JSON log lines (the agent prints them); a line
                   {"report": "add", ...} is a direct-path ADD's timing (``addtiming``)

Failure policy (why): the agent runs the same decision/rule/netfilter code as the direct
path, so an *error* answer (bad annotation, commit failed) would fail the same way
directly; repeating it only doubles the latency and could race the agent's commit.
It fails the ADD (fail closed; kubelet retries the sandbox). Everything that says
nothing about the pod - socket missing, refused, timeout, reset, an answer we cannot
parse (bad framing, over ``MAX_ANSWER``, not UTF-8 JSON, not one of the three shapes, a
result other than the prevResult we hand on), an unknown error code or 999 (an agent
bug), or an explicit ``fallback`` - returns ``None`` after one warning line, and the
plugin takes the direct path, which has its own bounded retries.

The compiled front (``src/front/agent.h``) usually makes this exchange itself and prints a
plain success without starting Python. Whatever else it got, it hands over with a record of
the exchange (``__main__.FRONT_EXCHANGE_ENV``): ``_Replayed`` plays it back as the socket,
so everything above applies to the very bytes the agent sent, and the agent is not asked twice.
"""

from __future__ import annotations

from . import addtiming, errors
from .log import log

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from .config import PluginConf
    from .skel import CmdArgs

CNI_PATH = "/v1/cni"
LOG_PATH = "/v1/log"
MAX_ANSWER = 1 << 20  # a CNI result is a few KB; anything bigger is not our agent
MAX_TIMEOUT = 30.0  # whatever the netconf says, the agent never holds an ADD longer
LOG_FLUSH_TIMEOUT = 0.25  # the log flush runs after the result is on stdout; keep exit prompt
MAX_TEXT = 300  # agent-provided text quoted in our warning line
MAX_ERROR_TEXT = 4096  # msg/details of a CNI error the agent carries (rule diffs can be long)


class AgentUnavailable(Exception):
    """The agent could not give a usable answer; the message says why (logged, then fallback)."""


class AgentFallback(AgentUnavailable):
    """The agent answered well-formed ``{"fallback": why}``: it is healthy, just cannot decide."""


def _short(value: object, limit: int = MAX_TEXT) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text[:limit]


FRONT_RECORD_MAGIC = b"istio-cni-front-exchange 1 "
# The front keeps at most http1.MAX_HEAD + 4 + MAX_ANSWER + 4096 bytes of the answer.
FRONT_RECORD_MAX = (64 << 10) + 4 + MAX_ANSWER + 4096 + 1024


def _outcome(token: bytes) -> BaseException | None:
    """A record's connect/send/end field -> None (fine, or EOF) or the exception to raise."""
    if token in (b"ok", b"complete", b"eof", b"cap"):
        return None  # "cap": the front stopped reading; the reader has refused long before
    if token == b"timeout":
        return TimeoutError("timed out")
    if token.isdigit() and len(token) < 6:
        import posix  # not os: see istio_cni.environ

        code = int(token)
        return OSError(code, posix.strerror(code))  # the errno's own subclass, as a live socket raises
    raise AgentUnavailable(f"front hand-over record has a bad field {token[:20]!r}")


class _Replayed:
    """The front's exchange with the agent, played back through the socket calls ``_post``
    makes: the same connect/send failures, the same bytes, the same end (EOF, timeout, error)."""

    def __init__(
        self, connect: BaseException | None, send: BaseException | None, end: BaseException | None, data: bytes
    ) -> None:
        self._connect, self._send, self._end = connect, send, end
        self._data, self._pos = data, 0

    def settimeout(self, _timeout: float | None) -> None:
        pass

    def connect(self, _path: str) -> None:
        if self._connect is not None:
            raise self._connect

    def sendall(self, _data: bytes) -> None:
        if self._send is not None:
            raise self._send

    def recv(self, n: int) -> bytes:
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        if not chunk and self._end is not None:
            raise self._end
        return chunk

    def close(self) -> None:
        pass


def _front_exchange(sock_path: str) -> _Replayed | None:
    """The front's record of this ADD's exchange with the agent at ``sock_path`` (None when
    the front handed over without one, or talked to another socket); AgentUnavailable when
    the record cannot be read."""
    import istio_cni

    fd = istio_cni.FRONT_EXCHANGE_FD
    if fd is None:
        return None
    istio_cni.FRONT_EXCHANGE_FD = None  # one ADD, one replay
    import posix  # not os: see istio_cni.environ

    chunks, size = [], 0
    try:
        while size <= FRONT_RECORD_MAX:
            chunk = posix.read(fd, FRONT_RECORD_MAX + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise AgentUnavailable(f"front hand-over record unreadable: {e.strerror}") from None
    finally:
        try:
            posix.close(fd)
        except OSError:
            pass
    data = b"".join(chunks)
    head, nl, raw = data.partition(b"\n")
    fields = head[len(FRONT_RECORD_MAGIC) :].split(b" ")
    if size > FRONT_RECORD_MAX or not nl or not head.startswith(FRONT_RECORD_MAGIC) or len(fields) != 4:
        raise AgentUnavailable("front hand-over record malformed")
    try:
        sock = bytes.fromhex(fields[3].decode("ascii"))
    except ValueError:
        raise AgentUnavailable("front hand-over record malformed") from None
    if sock != sock_path.encode():
        return None
    return _Replayed(_outcome(fields[0]), _outcome(fields[1]), _outcome(fields[2]), raw)


def _post(sock_path: str, path: str, body: bytes, timeout: float, conn: _Replayed | None = None) -> bytes:
    """POST ``body`` and return the body of a 200 answer. One deadline bounds the whole
    exchange (connect, send, the whole answer); the answer is read by the same strict,
    size-capped HTTP/1.1 reader as the API's (``http1.read_response``). ``conn``: a socket
    to use instead of a new one (the front's replayed exchange)."""
    # The C module, not ``socket``: under ``python -I -S`` the wrapper pulls in enum,
    # selectors and collections, ~14 ms here, a fifth of a whole ADD through the agent.
    import _socket
    import time

    from .http1 import ResponseError, read_response

    if not timeout > 0:
        raise TimeoutError("no time left for the agent")
    deadline = time.monotonic() + timeout
    s = conn if conn is not None else _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(sock_path)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: istio-cni-agent\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("agent exchange deadline passed")
        s.settimeout(left)
        sent: OSError | None
        try:
            s.sendall(head.encode() + body)
        except (BrokenPipeError, ConnectionResetError) as e:
            # The agent may have refused before reading (its connection cap): its answer
            # says why better than EPIPE does.
            sent = e
        else:
            sent = None
        try:
            status, _reason, answer = read_response(s, deadline, MAX_ANSWER)
        except ResponseError as e:
            if sent is not None:
                raise sent from None
            raise AgentUnavailable(f"agent sent a bad HTTP answer: {e}") from None
        except OSError:
            if sent is not None:
                raise sent from None
            raise
    finally:
        s.close()
    if status != 200:
        raise AgentUnavailable(f"agent answered HTTP {status}: {answer[:200].decode('utf-8', 'replace')}")
    return answer


def _request_body(args: CmdArgs, timeout: float) -> bytes:
    import time

    from ._fastpath import json_dumps

    stdin = args.stdin.decode("utf-8") if isinstance(args.stdin, (bytes, bytearray)) else str(args.stdin)
    return json_dumps(
        {
            "command": args.command,
            "container_id": args.container_id,
            "netns": args.netns,
            "ifname": args.ifname,
            "args": args.args,
            "path": args.path,
            "stdin": stdin,
            # The agent leaves itself a margin under this so its answer arrives before we give up;
            # "expires" (wall clock, same host) also covers time spent queued in the agent's backlog.
            "deadline": timeout,
            "expires": time.time() + timeout,
            # Seconds since this process was exec-ed: the agent adds its own time and observes
            # the sum in istio_cni_add_duration_seconds{path="agent"} (no extra exchange).
            "elapsed": round(addtiming.elapsed(), 6),
        }
    ).encode()


def interpret(answer: bytes, expected: dict | None = None) -> dict:
    """The agent's JSON answer -> the CNI result dict, or raise the CNI error it carries.

    Raises ``AgentUnavailable`` for anything that is not one of the three agreed shapes,
    and for a result that is not ``expected`` (the agent hands prevResult on unchanged,
    exactly as the direct path would).
    """
    from ._fastpath import json_loads

    try:
        doc = json_loads(answer)
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested too deep
        raise AgentUnavailable(f"agent answer is not JSON: {_short(str(e))}") from None
    if not isinstance(doc, dict):
        raise AgentUnavailable("agent answer is not a JSON object")
    if "fallback" in doc:
        raise AgentFallback(f"agent asked for the direct path: {_short(doc['fallback'])}")
    if "error" in doc:
        err = doc["error"]
        code = err.get("code") if isinstance(err, dict) else None
        if not isinstance(code, int) or isinstance(code, bool):
            raise AgentUnavailable(f"agent error without an integer code: {_short(err)}")
        try:
            cls = errors.error_class(code)
        except KeyError:
            raise AgentUnavailable(f"agent answered unknown CNI error code {code}") from None
        if cls is errors.InternalError:  # an agent-side bug says nothing about the pod
            raise AgentUnavailable(f"agent internal error: {_short(err.get('msg'))}")
        msg, details = err.get("msg"), err.get("details")
        raise cls(
            _short(msg, MAX_ERROR_TEXT) if isinstance(msg, str) and msg else cls.msg,
            _short(details, MAX_ERROR_TEXT) if isinstance(details, str) else "",
        )
    result = doc.get("result")
    if not isinstance(result, dict):
        raise AgentUnavailable("agent answer has neither result, error nor fallback")
    if expected is not None and result != expected:
        raise AgentUnavailable("agent result differs from the prevResult this ADD hands on")
    return result


def _exists(path: str) -> bool:
    """``os.path.exists`` without ``os`` (kept off the ADD path: ``istio_cni.environ``)."""
    import posix

    try:
        posix.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL in the path, as os.path.exists
        return False
    return True


def try_agent(conf: PluginConf, args: CmdArgs, expected: dict | None = None) -> dict | None:
    """ADD through the agent: the CNI result, a raised CNI error, or ``None`` (direct path).

    Every failure of the channel (absent, refused, slow, reset, garbled, oversized, non-UTF-8,
    wrong shape) is one warning line and ``None``, within ``conf.agent_timeout`` (capped)."""
    sock = conf.agent_socket
    try:
        replayed = _front_exchange(sock) if sock else None
        unreadable = None
    except AgentUnavailable as e:
        replayed, unreadable = None, e
    if replayed is None and unreadable is None and (not sock or not _exists(sock)):
        log.debug("node agent socket absent, using the direct path", socket=sock)
        addtiming.fallback = addtiming.FALLBACK_ABSENT
        return None
    timeout = conf.agent_timeout
    timeout = min(timeout, MAX_TIMEOUT) if timeout > 0 else 0.0  # NaN/negative: no wait at all
    sink = forward_logs(sock)
    try:
        if unreadable is not None:
            raise unreadable
        answer = _post(sock, CNI_PATH, _request_body(args, timeout), timeout, replayed)
        result = interpret(answer, expected)
        addtiming.answered_by_agent = True  # the agent observed this ADD's time itself
        return result
    except errors.CNIError:
        addtiming.answered_by_agent = True
        raise
    except AgentFallback as e:
        why = str(e)
        addtiming.fallback = addtiming.FALLBACK_DECLINED
    except AgentUnavailable as e:
        why = str(e)
        sink.enabled = False  # a misbehaving agent does not get a second wait at exit
    except TimeoutError:
        why = f"no answer within {timeout} s"
        sink.enabled = False
    except OSError as e:  # refused (agent down), reset (agent died mid-request), EACCES
        why = f"{type(e).__name__}: {_short(e.strerror or str(e))}"
        sink.enabled = False
    except (ValueError, RecursionError) as e:  # a request we cannot encode (e.g. non-UTF-8 stdin)
        why = f"{type(e).__name__}: {_short(str(e))}"
    if not addtiming.fallback:
        addtiming.fallback = addtiming.FALLBACK_UNREACHABLE
    log.warning("node agent unusable, falling back to the direct path", socket=sock, cause=why)
    return None


class _LogBuffer:
    """A ``log.sinks`` entry collecting lines; sent once, at interpreter exit."""

    def __init__(self, sock_path: str) -> None:
        self.sock_path = sock_path
        self.lines: list[str] = []
        self.enabled = True

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def flush(self) -> None:
        # Runs after skel has written the result to stdout; one short bounded POST, and only
        # when there is something to say (the agent logs successful ADDs itself).
        if not self.lines or not self.enabled:
            return
        payload = "".join(self.lines).encode("utf-8", "replace")
        self.lines = []
        try:
            _post(self.sock_path, LOG_PATH, payload, LOG_FLUSH_TIMEOUT)
        except (OSError, ValueError, AgentUnavailable):
            pass  # stderr already has every line


def relay_line(line: str) -> bool:
    """Add ``line`` to the log lines sent to the agent at exit, if that send happens at all
    (the agent answered this process and has lines to get); False otherwise."""
    for sink in log.sinks:
        if isinstance(sink, _LogBuffer) and sink.enabled and sink.lines:
            sink.lines.append(line)
            return True
    return False


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
