"""Pod lookup from the host netns: a lean HTTPS GET with bounded retry; fails closed.

The plugin must not import ``kubernetes`` (about 270 ms); one GET of one pod needs a
socket, TLS (``transport``) and a strict HTTP/1.1 reader (``http1``).

Retry policy (upstream ``cni/pkg/plugin``: 30 attempts, 1 s apart, configurable here):
404, 5xx and every transport failure (refused, reset, timeout, TLS, a malformed or
oversized answer) retry, since the pod may not be visible yet or the API may be
restarting; 401/403 fail at once, since waiting will not fix credentials or RBAC. The
lookup ends when the attempts run out or the lookup deadline passes (the retry budget
plus one attempt's timeout), with code 11 (try again later) and the last cause.
"""

from __future__ import annotations

import time

from . import errors
from .log import log

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    import _socket
    import _ssl
    from collections.abc import Callable

    from ._fastpath import Prefetched
    from .config import PluginConf
    from .http1 import Received
    from .kubeconfig import Cluster
    from .transport import TLSConn

# ``transport`` and ``http1`` are imported where a request is made: the agent path imports
# this module only for ``check_pod_ref`` and never opens a TCP connection itself.

# DNS-1123 as Kubernetes validates object names (k8s.io/apimachinery validation):
# a namespace is a label (<= 63), a pod name a subdomain (<= 253) of such labels.
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def _is_label(s: str, max_len: int) -> bool:
    return 0 < len(s) <= max_len and s[0] != "-" and s[-1] != "-" and _LABEL_CHARS.issuperset(s)


def is_dns1123_label(s: str) -> bool:
    return _is_label(s, 63)


def is_dns1123_subdomain(s: str) -> bool:
    return 0 < len(s) <= 253 and all(_is_label(part, 253) for part in s.split("."))


def check_pod_ref(namespace: str, name: str) -> None:
    """Refuse (code 7, naming the CNI_ARGS key) a pod reference the API could not hold,
    before it goes into any request: ``../``, spaces, CR/LF, upper case, over-long."""
    if not is_dns1123_label(namespace):
        raise errors.InvalidNetworkConfig(
            "invalid K8S_POD_NAMESPACE in CNI_ARGS",
            f"{namespace[:80]!r} is not a DNS-1123 label (lower-case letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)",
        )
    if not is_dns1123_subdomain(name):
        raise errors.InvalidNetworkConfig(
            "invalid K8S_POD_NAME in CNI_ARGS",
            f"{name[:80]!r} is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', "
            "each dot-separated part starting and ending with a letter or digit, at most 253 characters)",
        )


def pod_path(namespace: str, name: str) -> str:
    from .transport import quote_segment

    return f"/api/v1/namespaces/{quote_segment(namespace)}/pods/{quote_segment(name)}"


_MAX_TOKEN = 64 << 10  # projected service-account tokens are 1-2 KB


def bearer_token(cluster: Cluster) -> str:
    """The bearer token of a kubeconfig user (inline or from its tokenFile); "" for none.

    A token that could not travel in an HTTP header (control bytes, non-ASCII) is refused
    without quoting it: it would split the request or end up in an error message."""
    token = cluster.token
    if not token and cluster.token_file:
        from .transport import regular_file

        try:
            regular_file(cluster.token_file, "the service-account token file", _MAX_TOKEN)
            with open(cluster.token_file, "rb") as f:
                raw = f.read(_MAX_TOKEN + 1).strip()
        except OSError as e:
            raise errors.KubernetesLookupError(
                f"cannot read the service-account token file {cluster.token_file}", e.strerror or ""
            ) from None
        except ValueError as e:  # not a regular file (a FIFO would block the read), too large
            raise errors.KubernetesLookupError(str(e)) from None
        if len(raw) > _MAX_TOKEN:
            raise errors.KubernetesLookupError(
                f"the service-account token file {cluster.token_file} is larger than {_MAX_TOKEN} bytes"
            )
        token = raw.decode("latin-1")
        errors.register_secret(token)  # no error or log line may carry it, whatever the path
        where = f"the service-account token file {cluster.token_file}"
    else:
        where = "the kubeconfig user's token"
    if token and (not token.isascii() or any(c < " " or c == "\x7f" for c in token)):
        raise errors.KubernetesLookupError(
            f"{where} contains bytes not allowed in an HTTP header (non-ASCII or control characters)"
        )
    return token or ""


class Client:
    """GETs JSON objects from the API server named by a kubeconfig ``Cluster``.

    TLS is done one of two ways, with the same settings and checks: by ``_fastpath.HttpsGet``
    on a C thread (the one-shot plugin process, for an API server named by its IP, as the
    installer writes it: ``tls_in_c`` None), or by ``_ssl`` on this thread (``transport``:
    every other process and host name, or when the C client finds no usable OpenSSL)."""

    def __init__(
        self,
        cluster: Cluster,
        timeout: float = 5.0,
        idle: Callable[[Callable[[], bool]], object] | None = None,
        tls_in_c: bool | None = None,
        tls_session_file: str = "",
    ) -> None:
        """``idle(ready)``, when given, runs while the server works on our TLS handshake and on
        the request (polling ``ready``, which says the answer is there): work the caller would
        do after the answer anyway, done in time otherwise spent waiting.
        ``tls_session_file``: where the C client keeps the TLS session between plugin
        processes (``tls_session_file(conf)``); "" keeps none."""
        from .transport import split_server

        self.cluster = cluster
        self.timeout = timeout
        self.idle = idle
        self.scheme, self.host, self.port, self.prefix = split_server(cluster.server)
        self._ctx: _ssl._SSLContext | None = None
        self._c_tls: dict | None = None  # HttpsGet's trust and credentials, when it does TLS
        # The front's prefetch of this process's first exchange (_front_prefetch): "" none
        # offered, "used", or "declined" (not the exchange this client makes).
        self.prefetch = ""
        if self.scheme == "https":
            if tls_in_c is None:
                from . import ONE_SHOT_PROCESS
                from ._fastpath import is_ip_literal

                tls_in_c = ONE_SHOT_PROCESS and is_ip_literal(self.host)
            if tls_in_c:
                from .transport import tls_material

                self._c_tls = tls_material(cluster)
                if tls_session_file:
                    self._c_tls["session_file"] = tls_session_file
            else:
                self._use_ssl_module()
        self._token = bearer_token(cluster)

    def _use_ssl_module(self) -> None:
        from .transport import lean_tls_context

        self._c_tls = None
        self._ctx = lean_tls_context(self.cluster)

    def _request(self, path: str) -> bytes:
        from .transport import host_header

        req = [
            f"GET {self.prefix}{path} HTTP/1.1",
            f"Host: {host_header(self.host, self.port)}",
            "Accept: application/json",
            "User-Agent: istio-cni-python",
            "Connection: close",
        ]
        if self._token:
            req.append(f"Authorization: Bearer {self._token}")
        return ("\r\n".join(req) + "\r\n\r\n").encode()

    def get(self, path: str, timeout: float | None = None) -> object:
        """One attempt, all of it (connect, TLS handshake, send, the whole answer) bounded by
        ``timeout``. Raises ``HTTPError`` for a non-200, ``OSError``/``ValueError`` else."""
        from .http1 import read_response
        from .transport import HTTPError

        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        answer = None
        if self._c_tls is not None:
            answer = self._exchange_in_c(path, deadline)
        if answer is not None:  # all received: no deadline left to keep while reading it
            status, reason, body = read_response(answer)
        else:
            status, reason, body = self._exchange(path, deadline)
        if status != 200:
            raise HTTPError(status, reason, body)
        from ._fastpath import json_loads

        return json_loads(body)

    def _exchange_in_c(self, path: str, deadline: float) -> Received | None:
        """The exchange by ``HttpsGet``; None when this OpenSSL cannot serve it (the Python
        path takes over from then on)."""
        from ._fastpath import HttpsGet
        from .errors import TLSMaterialError, TLSUnavailable
        from .http1 import MAX_BODY, MAX_HEAD, Received

        assert self._c_tls is not None
        # The whole answer is kept until the server closes (we send Connection: close): the
        # head and body caps, and room for chunk framing, as http1 would allow.
        request, cap = self._request(path), MAX_HEAD + 2 * MAX_BODY
        prefetched = self._front_prefetch(request, cap)
        if prefetched is not None:
            try:
                if self.idle is not None:
                    self.idle(prefetched.done)
                answer = prefetched.result()  # raises as HttpsGet.result would
            except TLSUnavailable:  # the front's child could not use OpenSSL: try it here
                answer = None
            finally:
                prefetched.close()
            if answer is not None:
                return Received(answer)
            log.debug("the front's pod GET left no answer, making it here")
        try:
            exchange = HttpsGet(self.host, self.port, request, deadline, cap, **self._c_tls)
            if self.idle is not None:
                self.idle(exchange.done)
            return Received(exchange.result())
        except TLSUnavailable as e:
            log.debug("TLS on a C thread unavailable, using _ssl", cause=str(e))
        except TLSMaterialError as e:  # as _client reports it on the Python path
            raise errors.KubernetesLookupError("cannot load TLS material from the kubeconfig", str(e)) from None
        self._use_ssl_module()
        return None

    def _prefetch_params(self, request: bytes, cap: int) -> dict | None:
        """HttpsGet's arguments for ``request`` as the front's prefetch states them
        (src/front/prefetch.h), None for an exchange the front does not make: without
        verification, with a client certificate, or without a TLS session file."""
        tls = self._c_tls
        if tls is None or tls.get("insecure") or tls.get("cert_file") or not tls.get("session_file"):
            return None
        ca_pem = tls.get("ca_pem")
        try:
            pem = ca_pem.decode("utf-8") if ca_pem is not None else None
            text = request.decode("ascii")
        except UnicodeDecodeError:
            return None
        return {
            "host": self.host,
            "port": self.port,
            "request": text,
            "ca_file": tls.get("ca_file") or None,
            "ca_pem": pem,
            "session_file": tls["session_file"],
            "cap": cap,
        }

    def _front_prefetch(self, request: bytes, cap: int) -> Prefetched | None:
        """The exchange the compiled front started before the interpreter (only ever for this
        process's first one), if it is exactly the one this client makes now; else None (and
        the front's is dropped: its outcome is never looked at)."""
        import istio_cni

        fds = istio_cni.FRONT_PREFETCH
        if fds is None:
            return None
        istio_cni.FRONT_PREFETCH = None
        from ._fastpath import Prefetched, json_loads

        pre = Prefetched(*fds)
        want = self._prefetch_params(request, cap)
        params = pre.params()
        try:
            got = json_loads(params) if params is not None and want is not None else None
        except ValueError:
            got = None
        deadline = got.pop("deadline", None) if isinstance(got, dict) else None
        if got != want or not isinstance(deadline, (int, float)) or isinstance(deadline, bool):
            self.prefetch = "declined"
            pre.close()
        else:
            self.prefetch = "used"
            pre.arm(float(deadline), cap)
        log.debug("the front's pod GET", taken=self.prefetch)
        return pre if self.prefetch == "used" else None

    def prefetch_description(self, kubeconfig: str) -> bytes | None:
        """What the front needs to make this client's pod GETs itself (src/front/prefetch.h):
        its HttpsGet arguments and attempt timeout, the request split around the pod's
        namespace and name, and the identity of every file they came from (``kubeconfig``, its
        token and CA files): should any change, the front makes no GET with what it describes.
        None when the front would not make them (``_prefetch_params``) or a file is gone."""
        import posix

        from ._fastpath import json_dumps
        from .http1 import MAX_BODY, MAX_HEAD

        ns_mark, name_mark = "istio-cni-prefetch-namespace", "istio-cni-prefetch-name"  # kept by quote_segment
        cap = MAX_HEAD + 2 * MAX_BODY
        want = self._prefetch_params(self._request(pod_path(ns_mark, name_mark)), cap)
        if want is None:
            return None
        head, *rest = want.pop("request").split(ns_mark)
        if len(rest) != 1 or rest[0].count(name_mark) != 1:
            return None  # a mark inside the prefix or the token: no safe split
        middle, tail = rest[0].split(name_mark)
        files = []
        for path in (kubeconfig, self.cluster.token_file, want["ca_file"]):
            if path:
                try:
                    st = posix.stat(path)
                except OSError:
                    return None
                files.append([path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns])
        return json_dumps(
            {"version": 1, **want, "timeout": float(self.timeout), "request": [head, middle, tail], "files": files}
        ).encode()

    def keep_prefetch_description(self, kubeconfig: str) -> None:
        """After a pod GET this client made itself (not the front's): keep its description
        beside the TLS session (``PREFETCH_NAME``), so that the next ADD's front can start that
        GET before the interpreter. It holds the bearer token: a root-only file, as the
        kubeconfig and the TLS session, replaced by rename (temp name
        ``.istio-cni-prefetch.tmp.<pid>``: the node program's convention) and only when it
        changed. Never raises: it only saves the next ADD time."""
        import posix

        if self.prefetch == "used":
            return
        data = self.prefetch_description(kubeconfig)
        if data is None:  # then there is no session file either (_prefetch_params)
            return
        assert self._c_tls is not None  # a description needs the C client's arguments
        run_dir = self._c_tls["session_file"].rpartition("/")[0]
        path = f"{run_dir}/{PREFETCH_NAME}"
        flags = posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_NONBLOCK | posix.O_CLOEXEC
        try:
            fd = posix.open(path, flags)
            try:
                st = posix.fstat(fd)
                kept = st.st_mode & 0o170022 == 0o100000 and st.st_uid == posix.geteuid() and st.st_size == len(data)
                if kept and posix.read(fd, len(data) + 1) == data:
                    return
            finally:
                posix.close(fd)
        except OSError:
            pass
        tmp = f"{run_dir}/.{PREFETCH_NAME}.tmp.{posix.getpid()}"
        try:
            fd = posix.open(
                tmp, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW | posix.O_CLOEXEC, 0o600
            )
            try:
                view = memoryview(data)
                while view:
                    view = view[posix.write(fd, view) :]
            finally:
                posix.close(fd)
            posix.rename(tmp, path)
        except OSError as e:
            log.debug("pod GET description not kept", path=path, cause=str(e))
            try:
                posix.unlink(tmp)
            except OSError:
                pass

    def _exchange(self, path: str, deadline: float) -> tuple[int, str, bytes]:
        """The exchange on this thread (``_socket``, and ``_ssl`` for https)."""
        from .http1 import read_response
        from .transport import TLSConn, connect, raw_ready

        raw = connect(self.host, self.port, deadline)
        sock: _socket.socket | TLSConn = raw
        try:
            if self._ctx is not None:
                sock = TLSConn(self._ctx, raw, self.host, deadline, self.idle)
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(self._request(path))
            if self.idle is not None:
                self.idle(sock.ready if isinstance(sock, TLSConn) else lambda: raw_ready(raw))
            return read_response(sock, deadline)
        finally:
            sock.close()


def _status_message(body: bytes) -> str:
    try:
        from ._fastpath import json_loads

        doc = json_loads(body)
        if isinstance(doc, dict):
            return str(doc.get("message", ""))[:300]
    except Exception:
        pass
    return body[:200].decode("utf-8", "replace")  # not JSON, or JSON but not an object


# In the node program's run dir (``cni_agent_run_dir``), beside the plugin's kubeconfig.
TLS_SESSION_NAME = "tls-session"


def tls_session_file(conf: PluginConf) -> str:
    """Where the plugin keeps its TLS session to the API server between ADDs: the node
    program's run dir (root only, like the kubeconfig and its token), or "" without one."""
    run_dir = conf.agent_socket.rpartition("/")[0] if conf.agent_socket else ""
    return f"{run_dir}/{TLS_SESSION_NAME}" if run_dir else ""


# In the run dir, beside the TLS session: what the front needs to start the pod GET itself.
PREFETCH_NAME = "istio-cni-prefetch"  # src/front/prefetch.h


def _client(conf: PluginConf, idle: Callable[[Callable[[], bool]], object] | None = None) -> Client:
    from .kubeconfig import load

    try:
        return Client(load(conf.kubeconfig), idle=idle, tls_session_file=tls_session_file(conf))
    except errors.CNIError:
        raise
    except ValueError as e:  # KubeconfigError, or a server URL transport cannot use
        raise errors.KubernetesLookupError("cannot use the plugin kubeconfig", str(e)) from None
    except OSError as e:  # unreadable CA/cert files
        raise errors.KubernetesLookupError("cannot load TLS material from the kubeconfig", str(e)) from None


def get_pod(
    conf: PluginConf,
    namespace: str,
    name: str,
    sleep: Callable[[float], object] = time.sleep,
    client: Client | None = None,
    ref_checked: bool = False,
    idle: Callable[[Callable[[], bool]], object] | None = None,
) -> dict:
    """GET the pod, retrying as the module docstring describes. Never logs the token.

    ``ref_checked``: the caller already ran ``check_pod_ref`` on this reference (the ADD
    does, once, before it tries the agent). ``idle``: see ``Client``."""
    from .transport import HTTPError

    if not ref_checked:
        check_pod_ref(namespace, name)
    path = pod_path(namespace, name)
    if client is None:
        client = _client(conf, idle)
    attempt_timeout = getattr(client, "timeout", 5.0)
    lookup_end = time.monotonic() + (conf.lookup_attempts - 1) * conf.retry_interval + attempt_timeout
    last = ""
    attempt = 0
    while attempt < conf.lookup_attempts:
        attempt += 1
        left = lookup_end - time.monotonic()
        try:
            pod = client.get(path, timeout=min(attempt_timeout, max(left, 0.05)))
            if isinstance(pod, dict):
                if isinstance(client, Client):  # not a test's stand-in
                    client.keep_prefetch_description(conf.kubeconfig)
                return pod
            last = f"the API answered a JSON {type(pod).__name__}, not a pod object"
        except HTTPError as e:
            msg = _status_message(e.body)
            if e.status in (401, 403):
                what = "credentials rejected (401)" if e.status == 401 else "forbidden by RBAC (403)"
                raise errors.KubernetesLookupError(
                    f"pod lookup {namespace}/{name}: {what}; check the istio-cni service account, "
                    "its token and its ClusterRole (pods get)",
                    msg,
                ) from None
            last = f"HTTP {e.status} {e.reason[:80]}" + (f": {msg}" if msg else "")
        except (OSError, ValueError, RecursionError) as e:
            # refused, reset, timeout, TLS failure, malformed/oversized answer, bad JSON
            last = f"{type(e).__name__}: {str(e)[:300]}"
        log.warning("pod lookup failed, retrying", attempt=attempt, attempts=conf.lookup_attempts, cause=last)
        if attempt >= conf.lookup_attempts or time.monotonic() + conf.retry_interval >= lookup_end:
            break
        sleep(conf.retry_interval)
    raise errors.TryAgainLater(f"pod {namespace}/{name} not retrievable after {attempt} attempts", last)
