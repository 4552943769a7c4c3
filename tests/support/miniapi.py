"""A small in-process pod API with list + watch, for the agent's and repair's fast tier.

Serves what the node agent's API client (kube/client.py) sends for pods: list and watch (chunked stream,
resourceVersion, bookmarks-free, ``ERROR`` 410 for a compacted version), get, merge PATCH
(pod and ``/status``), DELETE (with UID/resourceVersion preconditions) and event POSTs.
``compact()`` forgets history (the next watch from an old version gets 410, as after etcd
compaction); ``drop_watches()`` cuts every open watch stream. 127.0.0.1 only; every wait
is bounded and ended by ``stop()``.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+?)(/status)?$")
EVENTS = re.compile(r"^/api/v1/namespaces/([^/]+)/events$")


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": reason, "message": message, "metadata": {}}


def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class MiniAPI:
    def __init__(self, token: str = "mini-token") -> None:
        self.token = token
        self.pods: dict[tuple[str, str], dict] = {}
        self.history: list[tuple[int, str, dict]] = []  # (rv, type, pod)
        self.floor = 0  # watches from below this version get 410
        self.rv = 100
        self.events: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.fail_gets = 0  # next N single-pod GETs answer 503
        self.delay_gets = 0.0  # the next single-pod GET waits this long (bounded by stop())
        self._cond = threading.Condition()
        self._generation = 0  # bumped by drop_watches()
        self._stopping = threading.Event()
        self._server = None
        self._thread = None

    # ---- test-facing ---------------------------------------------------------------------
    def _bump(self, kind: str, pod: dict) -> None:
        self.rv += 1
        pod["metadata"]["resourceVersion"] = str(self.rv)
        self.history.append((self.rv, kind, copy.deepcopy(pod)))
        self._cond.notify_all()

    def put_pod(self, pod: dict, kind: str | None = None) -> dict:
        pod = copy.deepcopy(pod)
        meta = pod.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", str(uuid.uuid4()))
        key = (meta["namespace"], meta["name"])
        with self._cond:
            kind = kind or ("MODIFIED" if key in self.pods else "ADDED")
            self.pods[key] = pod
            self._bump(kind, pod)
        return copy.deepcopy(pod)

    def remove_pod(self, namespace: str, name: str) -> None:
        with self._cond:
            pod = self.pods.pop((namespace, name))
            self._bump("DELETED", pod)

    def get(self, namespace: str, name: str) -> dict | None:
        with self._cond:
            p = self.pods.get((namespace, name))
            return copy.deepcopy(p) if p else None

    def compact(self) -> None:
        with self._cond:
            self.floor = self.rv + 1
            self.history.clear()

    def drop_watches(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def watch_count(self) -> int:
        return sum(1 for m, p in self.requests if m == "GET" and "watch=" in p)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def kubeconfig(self, path) -> str:
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: mini\n"
            f"clusters:\n- name: mini\n  cluster:\n    server: {self.url}\n"
            "users:\n- name: u\n  user:\n"
            f"    token: {self.token}\n"
            "contexts:\n- name: mini\n  context:\n    cluster: mini\n    user: u\n")
        return str(path)

    def start(self) -> MiniAPI:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.api = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="miniapi")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10

    def log_message(self, *a):
        pass

    @property
    def api(self) -> MiniAPI:
        return self.server.api

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _auth(self) -> bool:
        self.api.requests.append((self.command, self.path))
        if self.headers.get("Authorization") != f"Bearer {self.api.token}":
            self._send(401, status(401, "Unauthorized", "Unauthorized"))
            return False
        return True

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n)) if n else None

    def do_GET(self):
        if not self._auth():
            return
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/api/v1/pods":
            sel = q.get("fieldSelector", "")
            node = sel.split("=", 1)[1] if sel.startswith("spec.nodeName=") else None
            if q.get("watch", "").lower() in ("true", "1"):
                return self._watch(node, q)
            with self.api._cond:
                items = [copy.deepcopy(p) for p in self.api.pods.values() if _on(p, node)]
                rv = str(self.api.rv)
            return self._send(200, {"kind": "PodList", "apiVersion": "v1",
                                    "metadata": {"resourceVersion": rv}, "items": items})
        m = POD.match(url.path)
        if m and not m.group(3):
            delay, self.api.delay_gets = self.api.delay_gets, 0.0
            if delay:
                self.api._stopping.wait(delay)
            if self.api.fail_gets > 0:
                self.api.fail_gets -= 1
                return self._send(503, status(503, "ServiceUnavailable", "injected"))
            pod = self.api.get(m.group(1), m.group(2))
            if pod is None:
                return self._send(404, status(404, "NotFound", f'pods "{m.group(2)}" not found'))
            return self._send(200, pod)
        self._send(404, status(404, "NotFound", self.path))

    def _chunk(self, obj: dict) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch(self, node, q) -> None:
        api = self.api
        since = int(q.get("resourceVersion") or 0)
        limit = min(float(q.get("timeoutSeconds") or 30), 30)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with api._cond:
            gen = api._generation
            too_old = since < api.floor
        if too_old:
            self._chunk({"type": "ERROR", "object": status(410, "Expired", "too old resource version")})
        else:
            sent = since
            waited = 0.0
            while not api._stopping.is_set() and waited < limit:
                with api._cond:
                    if api._generation != gen:
                        break
                    todo = [(rv, k, p) for rv, k, p in api.history if rv > sent]
                    if not todo:
                        api._cond.wait(0.1)
                        waited += 0.1
                        continue
                for rv, kind, pod in todo:
                    sent = rv
                    if _on(pod, node):
                        self._chunk({"type": kind, "object": pod})
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True

    def do_PATCH(self):
        if not self._auth():
            return
        m = POD.match(urlsplit(self.path).path)
        body = self._body()
        with self.api._cond:
            key = (m.group(1), m.group(2)) if m else None
            if key not in self.api.pods:
                return self._send(404, status(404, "NotFound", self.path))
            pod = merge_patch(self.api.pods[key], body)
            self.api.pods[key] = pod
            self.api._bump("MODIFIED", pod)
            out = copy.deepcopy(pod)
        self._send(200, out)

    def do_DELETE(self):
        if not self._auth():
            return
        m = POD.match(urlsplit(self.path).path)
        body = self._body() or {}
        pre = body.get("preconditions") or {}
        with self.api._cond:
            key = (m.group(1), m.group(2)) if m else None
            pod = self.api.pods.get(key)
            if pod is None:
                return self._send(404, status(404, "NotFound", self.path))
            meta = pod["metadata"]
            if (pre.get("uid") and pre["uid"] != meta["uid"]) or (
                    pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]):
                return self._send(409, status(409, "Conflict", "precondition failed"))
            del self.api.pods[key]
            self.api._bump("DELETED", pod)
        self._send(200, pod)

    def do_POST(self):
        if not self._auth():
            return
        m = EVENTS.match(urlsplit(self.path).path)
        if not m:
            return self._send(404, status(404, "NotFound", self.path))
        ev = self._body()
        self.api.events.append(ev)
        self._send(201, ev)


def _on(pod: dict, node) -> bool:
    return node is None or (pod.get("spec") or {}).get("nodeName") == node
