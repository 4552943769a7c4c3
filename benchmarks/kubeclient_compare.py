"""Our pod cache (istio_cni_installer.kube) vs the official ``kubernetes`` client, side by side.

Issue 17 asks the node program to use the official client unless a measurement on 1,000
cached pods shows it is worse for users. This script is that measurement, against a REAL
kube-apiserver + etcd on 127.0.0.1 (tests/peers/controlplane.py, the Go peer the tests use):

  flock /tmp/istio-cni-node.lock .venv/bin/python benchmarks/kubeclient_compare.py

What it does (one control plane for the whole run):
1. Creates ``--pods`` realistic sidecar-injected pods (tests/support/injected_pods.py, plus a kubelet-like
   status) bound to one node name.
2. Runs each client as its own process (``--worker``), ``--rounds`` times, interleaved
   (ABC, CBA, ...). A worker keeps that node's pod cache by list + watch with resourceVersion,
   bookmarks, re-watch on server timeout and re-list on 410 Gone or error - the protocol of
   istio_cni_installer.kube.podcache - and reports:
     * start-up: process exec until the initial list is in the cache (parent clock);
     * RSS after sync (VmRSS) and at the end of the round;
     * watch-event-to-cache latency: the parent creates a pod or patches a label of a cached
       pod, records the monotonic time just before the request, and the worker prints the
       monotonic time at which its cache holds the new object (CLOCK_MONOTONIC is system-wide);
       the next event is sent once the previous one is seen (no queueing);
     * CPU per event: the worker's user+sys CPU over the event phase / events.
   Variants: ``ours`` (kube.client + kube.podcache), ``official`` (kubernetes client, JSON kept
   as dicts: ``_preload_content=False`` list, ``Watch.stream(deserialize=False)`` - what
   kube/ would have to use, since decide/redirect read dicts), ``official-models`` (the same
   client used idiomatically: V1Pod model objects).
3. Footprint: on-disk size of the ``kubernetes`` distribution and of everything it pulls in
   (its requirement closure, from the installed metadata), and bare ``import`` cost (RSS, time).
4. The node program itself (``python -m istio_cni_installer`` with agent + repair on, watching
   the same 1,000 pods): exec until /readyz is 200, until its log says "pod cache listed", and
   RSS 2 s after both. Repeated ``--node-runs`` times; ``--node-baseline DIR`` (an older
   ``installer/`` tree, e.g. from ``git archive <commit> installer``) runs that one too,
   interleaved, for a before/after of the node program.

Prints a Markdown summary; ``--json PATH`` also writes every sample.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.metadata as md
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "kcbench"
NODE = "kcbench-node"
SEQ_LABEL = "kcbench-seq"
VARIANTS = ("ours", "official", "official-models")
WATCH_SECONDS = 290
RELIST_BACKOFF = 1.0
EVENT_TIMEOUT = 15.0


# ---------------------------------------------------------------------------------------------
# Worker side: one cache, reporting on stdout
# ---------------------------------------------------------------------------------------------
_out_lock = threading.Lock()


def _say(*parts) -> None:
    with _out_lock:
        sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
        sys.stdout.flush()


def _rss_kb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _cpu_seconds() -> float:
    return time.process_time()  # user + system of every thread, ns resolution (os.times() ticks 10 ms)


def _seen(labels, name: str) -> None:
    seq = (labels or {}).get(SEQ_LABEL)
    if seq:
        _say("SEEN", name, seq, f"{time.monotonic():.6f}")


def _worker_ours(kubeconfig: str) -> object:
    from istio_cni_installer.kube.client import KubeClient
    from istio_cni_installer.kube.podcache import PodCache

    cache = PodCache(KubeClient.from_kubeconfig(kubeconfig), NODE)

    def listener(kind: str, pod: dict) -> None:
        if kind != "DELETED":
            meta = pod.get("metadata") or {}
            _seen(meta.get("labels"), meta.get("name", ""))

    cache.listeners.append(listener)
    return cache.start()


class OfficialPodCache:
    """The podcache protocol on the official client (a fair port of kube/podcache.py)."""

    def __init__(self, kubeconfig: str, models: bool) -> None:
        from kubernetes import client, config, watch

        self._client, self._watch_mod = client, watch
        self.core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
        self.models = models
        self.pods: dict = {}
        self.resource_version = ""
        self.synced = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def start(self) -> OfficialPodCache:
        threading.Thread(target=self._run, name="pod-watch", daemon=True).start()
        return self

    def _run(self) -> None:
        rest = self._client.rest.ApiException
        while not self._stop.is_set():
            try:
                self._list()
                while not self._stop.is_set():
                    self._watch()
            except rest as e:
                if e.status != 410:
                    self._stop.wait(RELIST_BACKOFF)
            except Exception as e:  # noqa: BLE001 - back off and re-list, as podcache does
                # With deserialize=False, kubernetes 37's Watch.stream raises KeyError('raw_object')
                # on an ERROR event (410 included): it only adds that key when deserializing.
                print(f"watch failed: {e!r}", file=sys.stderr)
                self._stop.wait(RELIST_BACKOFF)

    def _key_name_labels(self, pod):
        if self.models:
            m = pod.metadata
            return (m.namespace, m.name), m.name, m.labels
        m = pod.get("metadata") or {}
        return (m.get("namespace", ""), m.get("name", "")), m.get("name", ""), m.get("labels")

    def _list(self) -> None:
        selector = f"spec.nodeName={NODE}"
        if self.models:
            lst = self.core.list_pod_for_all_namespaces(field_selector=selector, _request_timeout=30)
            items, rv = lst.items, lst.metadata.resource_version
        else:
            resp = self.core.list_pod_for_all_namespaces(
                field_selector=selector, _preload_content=False, _request_timeout=30
            )
            doc = json.loads(resp.data)
            items, rv = doc.get("items") or [], (doc.get("metadata") or {}).get("resourceVersion", "")
        fresh = {}
        for pod in items:
            if not self.models:
                (pod.get("metadata") or {}).pop("managedFields", None)
            else:
                pod.metadata.managed_fields = None
            fresh[self._key_name_labels(pod)[0]] = pod
        with self._lock:
            self.pods, self.resource_version = fresh, rv
        self.synced.set()

    def _watch(self) -> None:
        w = self._watch_mod.Watch()
        stream = w.stream(
            self.core.list_pod_for_all_namespaces,
            field_selector=f"spec.nodeName={NODE}",
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _request_timeout=WATCH_SECONDS + 30,
            deserialize=self.models,
        )
        for ev in stream:
            kind, obj = ev["type"], ev["object"]
            if kind == "BOOKMARK":
                rv = (ev.get("raw_object", obj).get("metadata") or {}).get("resourceVersion")
                if rv:
                    self.resource_version = rv
                continue
            if self.models:
                obj.metadata.managed_fields = None
                rv = obj.metadata.resource_version
            else:
                meta = obj.get("metadata") or {}
                meta.pop("managedFields", None)
                rv = meta.get("resourceVersion")
            key, name, labels = self._key_name_labels(obj)
            with self._lock:
                if kind == "DELETED":
                    self.pods.pop(key, None)
                else:
                    self.pods[key] = obj
            if kind != "DELETED":
                _seen(labels, name)
            if rv:
                self.resource_version = rv


def worker(variant: str, kubeconfig: str) -> int:
    if variant == "ours":
        cache = _worker_ours(kubeconfig)
        ok, count = cache.wait_synced(120), len
    else:
        cache = OfficialPodCache(kubeconfig, models=variant == "official-models").start()
        ok, count = cache.synced.wait(120), lambda c: len(c.pods)
    if not ok:
        _say("FAILED", "not synced in 120 s")
        return 1
    _say("SYNCED", count(cache), _rss_kb(), f"{_cpu_seconds():.4f}")
    for line in sys.stdin:  # the parent asks for final stats, then closes stdin
        if line.strip() == "STATS":
            _say("STATS", _rss_kb(), f"{_cpu_seconds():.4f}")
    return 0


# ---------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------
def _status(ip: str) -> dict:
    """What kubelet would have written for a running sidecar-injected pod."""
    now = "2026-11-26T14:00:05Z"
    cs = [
        {
            "name": n,
            "ready": True,
            "restartCount": 0,
            "started": True,
            "image": img,
            "imageID": f"{img}@sha256:" + "a" * 64,
            "containerID": "containerd://" + "b" * 64,
            "state": {"running": {"startedAt": now}},
        }
        for n, img in (("app", "docker.io/library/nginx:1.27"), ("istio-proxy", "docker.io/istio/proxyv2:1.24.0"))
    ]
    return {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "hostIP": "192.0.2.10",
        "startTime": now,
        "conditions": [
            {"type": t, "status": "True", "lastTransitionTime": now}
            for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
        ],
        "initContainerStatuses": [
            {
                "name": "istio-validation",
                "ready": True,
                "restartCount": 0,
                "image": "docker.io/istio/proxyv2:1.24.0",
                "imageID": "x",
                "containerID": "containerd://c",
                "state": {
                    "terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": now,
                        "finishedAt": now,
                        "containerID": "containerd://c",
                    }
                },
            }
        ],
        "containerStatuses": cs,
    }


class Cluster:
    def __init__(self, workdir: Path) -> None:
        sys.path.insert(0, str(REPO / "tests"))
        from peers.controlplane import ControlPlane
        from peers.tools import tool_path
        from support.cpsupport import manifest
        from support.injected_pods import injected_pod

        self._manifest, self._pod = manifest, injected_pod
        self.cp = ControlPlane(workdir / "cp", tool_path("kube-apiserver")).start()
        self.api = self.cp.api
        self.api.create_namespace(NAMESPACE)
        self.kubeconfig = str(self.cp.kubeconfig)

    def pod(self, name: str, labels: dict | None = None) -> dict:
        m = self._manifest(self._pod(name, NAMESPACE, NODE), NAMESPACE, NODE)
        m["metadata"]["labels"].update(labels or {})
        return m

    def populate(self, count: int) -> None:
        def one(i: int) -> None:
            name = f"app-{i:04d}-{i % 97:02d}"
            self.api.create_pod(self.pod(name))
            self.api.call(
                "PATCH",
                f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/status",
                {"status": _status(f"10.{i // 250}.{i % 250}.{i % 7 + 2}")},
                content_type="application/merge-patch+json",
            )

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(count)))
        self.names = [f"app-{i:04d}-{i % 97:02d}" for i in range(count)]

    def stop(self) -> None:
        self.cp.stop()


class WorkerProcess:
    def __init__(self, variant: str, kubeconfig: str) -> None:
        self.seen: dict[str, float] = {}
        self.lines: dict[str, list[str]] = {}
        self._cond = threading.Condition()
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", variant, "--kubeconfig", kubeconfig],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            parts = line.split()
            if not parts:
                continue
            with self._cond:
                if parts[0] == "SEEN":
                    self.seen[parts[2]] = float(parts[3])
                else:
                    self.lines[parts[0]] = parts[1:]
                    self.lines[parts[0] + "@"] = [str(time.monotonic())]
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, tag: str, timeout: float) -> list[str]:
        end = time.monotonic() + timeout
        with self._cond:
            while tag not in self.lines:
                if "FAILED" in self.lines or time.monotonic() > end or self.proc.poll() is not None:
                    raise RuntimeError(f"worker gave no {tag}: {self.lines}")
                self._cond.wait(0.5)
            return self.lines[tag]

    def wait_seen(self, seq: str, timeout: float) -> float | None:
        end = time.monotonic() + timeout
        with self._cond:
            while seq not in self.seen:
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self.seen[seq]

    def finish(self) -> list[str]:
        self.proc.stdin.write("STATS\n")
        self.proc.stdin.flush()
        stats = self.wait_line("STATS", 30)
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        return stats


def run_round(cluster: Cluster, variant: str, events: int, seq_start: int, tag: str) -> dict:
    w = WorkerProcess(variant, cluster.kubeconfig)
    try:
        synced = w.wait_line("SYNCED", 180)
        startup = float(w.lines["SYNCED@"][0]) - w.t0
        cached, rss_synced, cpu0 = int(synced[0]), int(synced[1]), float(synced[2])
        latencies, created = [], []
        for i in range(events):
            seq = str(seq_start + i)
            if i % 2 == 0:  # create a new pod on the node
                name = f"new-{tag}-{i}"
                manifest = cluster.pod(name, {SEQ_LABEL: seq})
                t_send = time.monotonic()
                cluster.api.create_pod(manifest)
                created.append(name)
            else:  # update a cached pod (a label change, as a controller would make)
                name = cluster.names[(seq_start + i) % len(cluster.names)]
                t_send = time.monotonic()
                cluster.api.patch_pod(NAMESPACE, name, {"metadata": {"labels": {SEQ_LABEL: seq}}})
            t_seen = w.wait_seen(seq, EVENT_TIMEOUT)
            if t_seen is None:
                raise RuntimeError(f"{variant}: event {seq} not seen in {EVENT_TIMEOUT}s")
            latencies.append(t_seen - t_send)
            time.sleep(0.01)
        rss_end, cpu1 = (float(x) for x in w.finish())
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)
    for name in created:
        cluster.api.delete_pod(NAMESPACE, name)
    return {
        "variant": variant,
        "startup_s": startup,
        "cached": cached,
        "rss_synced_kb": rss_synced,
        "rss_end_kb": int(rss_end),
        "cpu_per_event_ms": (cpu1 - cpu0) / events * 1000,
        "latencies_s": latencies,
    }


# ---- footprint ---------------------------------------------------------------------------------
def _closure(dist_name: str) -> list[str]:
    """``dist_name`` and every distribution its (unconditional) requirements pull in."""
    seen: dict[str, None] = {}
    todo = [dist_name]
    while todo:
        name = re.split(r"[\s\[<>=!~;(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[name] = None
        for req in dist.requires or []:
            if ";" in req and "extra" in req.split(";", 1)[1]:
                continue  # an optional extra, not installed by `pip install kubernetes`
            todo.append(req)
    return list(seen)


def _dist_bytes(name: str) -> int:
    dist = md.distribution(name)
    total = 0
    for f in dist.files or []:
        p = Path(dist.locate_file(f))
        if p.is_file():
            total += p.stat().st_size
    return total


def footprint() -> dict:
    names = _closure("kubernetes")
    sizes = {n: _dist_bytes(n) for n in names}
    out = {
        "kubernetes_version": md.version("kubernetes"),
        "closure": sizes,
        "kubernetes_mb": sizes["kubernetes"] / 1e6,
        "closure_mb": sum(sizes.values()) / 1e6,
    }
    for module in ("kubernetes", "istio_cni_installer.kube.podcache"):
        code = (
            f"import os,time;t=time.perf_counter();import {module};d=time.perf_counter()-t;"
            "print(d, [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')][0])"
        )
        base = subprocess.run(
            [
                sys.executable,
                "-c",
                "print(0, [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')][0])",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
        ).stdout.split()
        samples = []
        for _ in range(5):
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
            t, rss = r.stdout.split()
            samples.append((float(t), int(rss)))
        out[f"import {module}"] = {
            "median_s": statistics.median(s[0] for s in samples),
            "rss_delta_kb": statistics.median(s[1] for s in samples) - int(base[1]),
        }
    return out


# ---- the node program ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_program(cluster: Cluster, workdir: Path, runs: int, baseline: str = "") -> list[dict]:
    """``runs`` start-ups of this tree's node program; with ``baseline`` (a directory holding an
    older ``istio_cni_installer`` package, e.g. ``git archive <commit> installer``), as many of
    that one, interleaved (same interpreter, same istio_cni)."""
    from istio_cni_installer.bundle import build

    bundle = build(workdir / "bundle")
    results = []
    trees = [("tree", "")] + ([("baseline", str(Path(baseline).resolve()))] if baseline else [])
    plan = [t for run in range(runs) for t in (trees if run % 2 == 0 else trees[::-1])]
    for run, (label, pythonpath) in enumerate(plan):
        root = workdir / f"node-{run}"
        net, bin_, rund, sa = root / "net", root / "bin", root / "run", root / "sa"
        for d in (net, bin_, rund, sa):
            d.mkdir(parents=True)
        (sa / "token").write_text("unused: AGENT_KUBECONFIG is set")
        shutil.copy(cluster.cp.ca_file, sa / "ca.crt")
        (net / "10-calico.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "k8s-pod-network",
                    "plugins": [{"type": "calico"}, {"type": "portmap", "capabilities": {"portMappings": True}}],
                }
            )
        )
        port = _free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "MOUNTED_CNI_NET_DIR": str(net),
            "CNI_NET_DIR": str(net),
            "MOUNTED_CNI_BIN_DIR": str(bin_),
            "CNI_BIN_DIR": str(bin_),
            "MOUNTED_SECONDARY_BIN_DIR": str(root / "none"),
            "CNI_AGENT_RUN_DIR": str(rund),
            "SERVICE_ACCOUNT_DIR": str(sa),
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": "1",
            "KUBERNETES_NODE_NAME": NODE,
            "BIND_ADDRESS": "127.0.0.1",
            "READINESS_PORT": str(port),
            "MONITORING_PORT": "0",
            "DISABLE_SAFE_UPGRADE": "true",
            "LOG_LEVEL": "info",
            "AGENT_ENABLED": "true",
            "REPAIR_ENABLED": "true",
            "AGENT_KUBECONFIG": cluster.kubeconfig,
            "STARTUP_TAINT_KEY": "",
            "PLUGIN_BUNDLE_DIR": str(bundle.path),
        }
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        log = open(root / "node.log", "wb")
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "istio_cni_installer"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        ready = sock = None
        try:
            end = t0 + 120
            while (ready is None or sock is None) and time.monotonic() < end and proc.poll() is None:
                if sock is None and b'"pod cache listed"' in (root / "node.log").read_bytes():
                    sock = time.monotonic() - t0  # the agent's cache holds the node's pods
                if ready is None:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                            if r.status == 200:
                                ready = time.monotonic() - t0
                    except OSError:
                        pass
                time.sleep(0.01)
            if ready is None or sock is None:
                log.flush()
                tail = (root / "node.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"node program not ready (ready={ready}, socket={sock}):\n{tail}")
            time.sleep(2)  # the repair controller's first pass over the cache
            results.append({"tree": label, "ready_s": ready, "cache_synced_s": sock, "rss_kb": _rss_kb(proc.pid)})
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            log.close()
    return results


# ---- report ------------------------------------------------------------------------------------
def _pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def summarize(rounds: list[dict]) -> dict:
    out = {}
    for variant in VARIANTS:
        rs = [r for r in rounds if r["variant"] == variant]
        if not rs:
            continue
        lat = [x for r in rs for x in r["latencies_s"]]
        out[variant] = {
            "rounds": len(rs),
            "events": len(lat),
            "cached": rs[0]["cached"],
            "startup_s_median": statistics.median(r["startup_s"] for r in rs),
            "rss_synced_mb_median": statistics.median(r["rss_synced_kb"] for r in rs) / 1024,
            "rss_end_mb_median": statistics.median(r["rss_end_kb"] for r in rs) / 1024,
            "latency_ms_median": statistics.median(lat) * 1000,
            "latency_ms_p99": _pct(lat, 0.99) * 1000,
            "cpu_ms_per_event_median": statistics.median(r["cpu_per_event_ms"] for r in rs),
        }
    return out


def report(summary: dict, foot: dict, node: list[dict], pods: int) -> str:
    lines = [
        "| client | pods cached | start-up to synced (median) | RSS after sync | RSS at end | "
        "event-to-cache median | p99 | CPU per event |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v, s in summary.items():
        lines.append(
            f"| {v} | {s['cached']} | {s['startup_s_median']:.2f} s | {s['rss_synced_mb_median']:.1f} MB | "
            f"{s['rss_end_mb_median']:.1f} MB | {s['latency_ms_median']:.2f} ms | {s['latency_ms_p99']:.2f} ms | "
            f"{s['cpu_ms_per_event_median']:.3f} ms |"
        )
    lines.append("")
    lines.append(
        f"Rounds per client: {next(iter(summary.values()))['rounds']}, events per client: "
        f"{next(iter(summary.values()))['events']}."
    )
    closure = ", ".join(f"{n} {b / 1e6:.1f}" for n, b in sorted(foot["closure"].items(), key=lambda x: -x[1]))
    lines.append(
        f"Footprint: kubernetes {foot['kubernetes_version']} = {foot['kubernetes_mb']:.1f} MB on disk; with its "
        f"requirement closure {foot['closure_mb']:.1f} MB ({closure} MB)."
    )
    for k in ("import kubernetes", "import istio_cni_installer.kube.podcache"):
        lines.append(
            f"`{k}`: {foot[k]['median_s'] * 1000:.0f} ms, +{foot[k]['rss_delta_kb'] / 1024:.1f} MB RSS (median of 5)."
        )
    for label in ("tree", "baseline"):
        runs = [r for r in node if r["tree"] == label]
        if runs:
            lines.append(
                f"Node program ({label}; agent + repair on, same {pods} pods): "
                f"exec to /readyz 200 median {statistics.median(r['ready_s'] for r in runs):.2f} s, "
                f"to 'pod cache listed' {statistics.median(r['cache_synced_s'] for r in runs):.2f} s, "
                f"RSS {statistics.median(r['rss_kb'] for r in runs) / 1024:.1f} MB (median of {len(runs)})."
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=VARIANTS)
    ap.add_argument("--kubeconfig")
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--events", type=int, default=50, help="events per round per client")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--node-runs", type=int, default=3, help="node program start-ups to time (0: skip)")
    ap.add_argument("--node-baseline", default="", help="dir with an older istio_cni_installer to compare")
    ap.add_argument("--json", help="write every sample here")
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a.worker, a.kubeconfig)
    variants = a.variants.split(",")
    work = Path(tempfile.mkdtemp(prefix="kcbench-"))
    cluster = Cluster(work)
    try:
        t = time.monotonic()
        cluster.populate(a.pods)
        print(f"populated {a.pods} pods in {time.monotonic() - t:.1f} s", file=sys.stderr)
        rounds, seq = [], 1
        for r in range(a.rounds):
            order = variants if r % 2 == 0 else variants[::-1]  # interleaved: ABC, CBA, ...
            for v in order:
                res = run_round(cluster, v, a.events, seq, f"{r}-{v}")
                seq += a.events
                rounds.append(res)
                print(
                    f"round {r} {v}: start {res['startup_s']:.2f}s rss {res['rss_synced_kb']} kB "
                    f"lat p50 {statistics.median(res['latencies_s']) * 1000:.2f} ms",
                    file=sys.stderr,
                )
        node = node_program(cluster, work, a.node_runs, a.node_baseline) if a.node_runs else []
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    foot = footprint()
    summary = summarize(rounds)
    print(report(summary, foot, node, a.pods))
    if a.json:
        Path(a.json).write_text(
            json.dumps({"summary": summary, "rounds": rounds, "footprint": foot, "node_program": node}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
