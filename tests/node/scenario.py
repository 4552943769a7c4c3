"""Ongoing injected-pod creation for the two-node scenarios, every pod checked from inside, and
the counts each scenario prints and records.

A ``Churn`` creates injected pods (node/workloads.py) in its own namespace at a steady pace from
a thread, for as long as the scenario says. Each pod is handed to a small pool of checkers as
soon as it is created: a checker waits (bounded by the repair window) for the pod to be Running,
then makes a real connection from its ``app`` container to its node's IP and requires the proxy
stand-in on 15001 to answer with that original destination. A pod whose ``istio-validation``
init container never restarted was *redirected first time*; one whose validation failed first
and passed later was *repaired* (the repair controller fixed its netns while kubelet backed
off); a pod not Running within the window or not redirected is *failed*. ``finish()`` deletes
every pod and waits (bounded) for all of them to be gone: a pod stuck in Terminating is listed.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from peers.kubeapi import ApiError

from node.pods import Pods
from node.workloads import APP_PORT, injected_pod

# How long a pod may take from creation to Running with its redirect, including a repair: the
# repair controller acts within seconds of the failed validation, but kubelet retries the init
# container with a back-off of 10 s, 20 s, 40 s, ...
REPAIR_WINDOW = 150.0
CHECKERS = 4
DELETE_TIMEOUT = 120.0
SUMMARY: list[str] = []  # one line per scenario, printed again in the terminal summary (conftest)


@dataclass
class Tally:
    scenario: str
    created: int = 0
    redirected_first_time: int = 0
    repaired: int = 0
    sandbox_retries: int = 0  # kubelet's FailedCreatePodSandBox events (each one a retried sandbox)
    failed: int = 0
    deleted_during: int = 0  # deleted right after their check, while the scenario ran
    per_node: dict[str, int] = field(default_factory=dict)  # checked pods per node
    repaired_per_node: dict[str, int] = field(default_factory=dict)
    stuck_terminating: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # the first few reasons
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def line(self) -> str:
        nodes = ",".join(f"{n.rsplit('-', 1)[-1]}:{c}" for n, c in sorted(self.per_node.items()))
        return (f"two-nodes scenario {self.scenario}: created {self.created}, redirected first time "
                f"{self.redirected_first_time}, repaired {self.repaired}, sandbox retries {self.sandbox_retries}, "
                f"failed {self.failed}, stuck terminating {len(self.stuck_terminating)} "
                f"(per node {nodes}; {self.seconds:.0f}s){''.join(f'; {k} {v}' for k, v in self.extra.items())}")

    def record(self, jsonl: Path) -> None:
        line = self.line()
        print(line)
        if not SUMMARY:
            SUMMARY.append(f"two-nodes scenarios (JSON lines in {jsonl}):")
        SUMMARY.append(line)
        with open(jsonl, "a") as f:
            f.write(json.dumps(asdict(self), sort_keys=True) + "\n")


class Churn:
    """``Churn(...).start(...)``, then ``finish()`` -> Tally (always call it)."""

    def __init__(self, scenario: str, namespace: str, pods_by_node: dict[str, Pods], images: dict, *,
                 node_selector: str | None = None, delete_after_check: bool = False,
                 window: float = REPAIR_WINDOW) -> None:
        self.tally = Tally(scenario)
        self.ns = namespace
        self.by_node = pods_by_node
        self.api_pods = next(iter(pods_by_node.values()))
        self.workload, self.node_image = images["workload"][0], images["node"][0]
        self.node_selector = node_selector
        self.delete_after_check = delete_after_check
        self.window = window  # creation to Running with the redirect (or repaired), per pod
        self.names: list[str] = []
        self.deleted: dict[str, float] = {}  # name -> when its deletion was asked
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(CHECKERS, thread_name_prefix=f"check-{scenario}")
        self.futures = []
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.t0 = time.monotonic()
        self.api_pods.ensure_namespace(namespace)

    # -- creating -----------------------------------------------------------------------------------
    def create(self) -> str:
        with self.lock:
            name = f"{self.tally.scenario}-{len(self.names):03d}"
            self.names.append(name)
        manifest = injected_pod(name, self.ns, self.workload, self.node_image)  # Ready = proxy listens
        if self.node_selector:
            manifest["spec"]["nodeSelector"] = {"kubernetes.io/hostname": self.node_selector}
        self.api_pods.create(manifest)
        created_at = time.monotonic()
        with self.lock:
            self.tally.created += 1
            self.futures.append(self.pool.submit(self._check, name, created_at))
        return name

    def start(self, *, interval: float, min_count: int, max_count: int, until=lambda: True) -> Churn:
        """Create a pod every ``interval`` s: at least ``min_count``, then until ``until()`` or ``max_count``."""
        def run() -> None:
            try:
                while not self.stop_event.is_set():
                    n = self.tally.created
                    if n >= max_count or (n >= min_count and until()):
                        return
                    self.create()
                    self.stop_event.wait(interval)
            except BaseException as e:  # handed to finish()
                self.error = e

        self.thread = threading.Thread(target=run, name=f"churn-{self.tally.scenario}", daemon=True)
        self.thread.start()
        return self

    def burst(self, count: int, parallel: int = 8) -> None:
        """``count`` pods at once (``parallel`` creating threads)."""
        with ThreadPoolExecutor(parallel, thread_name_prefix=f"burst-{self.tally.scenario}") as ex:
            for f in [ex.submit(self.create) for _ in range(count)]:
                f.result()

    def wait_created(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.tally.created < n:
            if self.error:
                raise self.error
            assert time.monotonic() < deadline, f"only {self.tally.created} of {n} pods created after {timeout}s"
            time.sleep(0.1)

    def checked_on(self, node: str) -> int:
        with self.lock:
            return self.tally.per_node.get(node, 0)

    # -- checking -----------------------------------------------------------------------------------
    def _fail(self, name: str, why: str) -> None:
        with self.lock:
            self.tally.failed += 1
            if len(self.tally.failures) < 8:
                self.tally.failures.append(f"{name}: {why}")

    def _check(self, name: str, created_at: float) -> None:
        try:
            self._check_pod(name, created_at)
        except Exception as e:  # noqa: BLE001 - a check that cannot be made is a failed pod
            self._fail(name, f"check error {type(e).__name__}: {str(e)[:300]}")

    def _check_pod(self, name: str, created_at: float) -> None:
        deadline = created_at + self.window
        pod = None
        while True:
            try:
                pod = self.api_pods.get(self.ns, name)
            except (OSError, ApiError):
                pod = None
            st = (pod or {}).get("status", {})
            if st.get("phase") == "Running" and st.get("containerStatuses") and all(
                    c.get("ready") for c in st["containerStatuses"]):
                break
            if time.monotonic() > deadline:
                return self._fail(name, f"not Running and ready {self.window:.0f}s after creation: "
                                        f"{_brief(pod)}")
            time.sleep(0.5)
        node = pod["spec"]["nodeName"]
        pods = self.by_node[node]
        restarts = pods.init_status(pod, "istio-validation").get("restartCount", 0)
        host_ip = st["hostIP"]
        got = pods.connect_from(self.ns, name, "app", host_ip, APP_PORT)
        if got.get("listener") != 15001 or got.get("original") != f"{host_ip}:{APP_PORT}":
            return self._fail(name, f"on {node}: not redirected, the app's connection got {got}")
        with self.lock:
            self.tally.per_node[node] = self.tally.per_node.get(node, 0) + 1
            if restarts == 0:
                self.tally.redirected_first_time += 1
            else:
                self.tally.repaired += 1
                self.tally.repaired_per_node[node] = self.tally.repaired_per_node.get(node, 0) + 1
        if self.delete_after_check:
            self._delete(name)

    def _delete(self, name: str) -> None:
        self.api_pods.delete(self.ns, name, wait=False)
        with self.lock:
            self.deleted[name] = time.monotonic()
            self.tally.deleted_during += 1

    def deleted_between(self, start: float, end: float) -> int:
        with self.lock:
            return sum(1 for t in self.deleted.values() if start <= t <= end)

    # -- the end ------------------------------------------------------------------------------------
    def finish(self, jsonl: Path, **extra) -> Tally:
        """Stop creating, wait for every check (bounded), delete every pod, wait until all are gone,
        count kubelet's sandbox retries; record (with ``extra`` facts of the scenario) and return
        the tally."""
        if self.thread:
            self.thread.join(self.window)
        self.stop_event.set()
        _, pending = wait(self.futures, timeout=self.window + 60)
        for f in pending:
            f.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if pending:
            self._fail("(checks)", f"{len(pending)} checks still running after {self.window + 60:.0f}s")
        for name in self.names:
            if name not in self.deleted:
                try:
                    self.api_pods.delete(self.ns, name, wait=False)
                except (OSError, ApiError) as e:
                    self._fail(name, f"delete: {e}")
        deadline = time.monotonic() + DELETE_TIMEOUT
        left = []
        while time.monotonic() < deadline:
            try:
                left = [p["metadata"]["name"] for p in self.api_pods.list(self.ns)]
            except (OSError, ApiError):
                continue
            if not left:
                break
            time.sleep(0.5)
        self.tally.stuck_terminating = sorted(left)
        self.tally.sandbox_retries = self._sandbox_retries()
        self.tally.seconds = time.monotonic() - self.t0
        if self.error:
            self._fail("(churn)", f"creating pods: {type(self.error).__name__}: {self.error}")
        self.tally.extra.update(extra)
        self.tally.record(jsonl)
        return self.tally

    def _sandbox_retries(self) -> int:
        events = self.api_pods.api.call(
            "GET", f"/api/v1/namespaces/{self.ns}/events?fieldSelector=reason%3DFailedCreatePodSandBox")["items"]
        return sum(e.get("count") or 1 for e in events)


def _brief(pod: dict | None) -> str:
    if not pod:
        return "pod not found"
    st = pod.get("status", {})
    states = {c["name"]: (list(c.get("state", {}))[:1], c.get("restartCount", 0))
              for c in st.get("initContainerStatuses", []) + st.get("containerStatuses", [])}
    return f"phase {st.get('phase')} on {pod['spec'].get('nodeName')}, containers {states}"
