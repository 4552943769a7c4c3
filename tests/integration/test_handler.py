"""The agent's request handler in-process: lookup fallbacks, commit serialisation, restore failure."""

from __future__ import annotations

import json
import threading
import time

import pytest
from support.injected_pods import injected_pod

from istio_cni import errors
from istio_cni_installer.agent import handler as handler_mod
from istio_cni_installer.agent.handler import Handler

pytestmark = pytest.mark.root  # check_netns needs a real netns to open

NETCONF = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "istio-cni",
           "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "169.254.8.2/24"}]}}


class FakeCache:
    """get/fetch/wait_for with scripted behaviour."""

    def __init__(self, pods=None, fetch=None, later=None):
        self.pods = dict(pods or {})
        self._fetch = fetch  # callable(ns, name) -> pod | None, may raise
        self.later = later  # pod delivered by "the watch" while waiting
        self.fetched = 0

    def get(self, ns, name):
        return self.pods.get((ns, name))

    def fetch(self, ns, name, timeout):
        self.fetched += 1
        return self._fetch(ns, name) if self._fetch else None

    def wait_for(self, ns, name, timeout):
        return self.later


def request(netns_path: str, pod: str = "p", **kw) -> dict:
    req = {"command": "ADD", "container_id": "c1", "netns": netns_path, "ifname": "eth0",
           "args": f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};IgnoreUnknown=1", "path": "/opt/cni/bin",
           "stdin": json.dumps(NETCONF), "deadline": 2.0, "expires": time.time() + 2.0}
    req.update(kw)
    return req


class Recorder:
    def __init__(self, hold: float = 0.0):
        self.calls = []
        self.active = 0
        self.max_active = 0
        self.hold = hold
        self.lock = threading.Lock()

    def __call__(self, netns, ruleset, preferred):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(self.hold)  # widen any overlap window between concurrent commits
        with self.lock:
            self.active -= 1
            self.calls.append((netns, ruleset))
        return "recorded"


@pytest.fixture
def ns_path(netns):
    return f"/run/netns/{netns('h', addresses=('192.0.2.8/24',))}"


def test_cached_pod_is_committed_with_the_plugins_ruleset(ns_path):
    from istio_cni.redirect import redirect_from_pod
    from istio_cni.rules.builder import build

    pod = injected_pod("p")
    rec = Recorder()
    h = Handler(FakeCache({("default", "p"): pod}), apply=rec)
    answer = h.handle(request(ns_path))
    assert answer == {"result": NETCONF["prevResult"]}
    assert rec.calls == [(ns_path, build(redirect_from_pod(pod)))]
    assert h.counts == {"ok": 1}


def test_cache_miss_uses_get_then_waits_for_the_watch(ns_path):
    pod = injected_pod("p")
    rec = Recorder()
    cache = FakeCache(fetch=lambda ns, name: None, later=pod)
    assert "result" in Handler(cache, apply=rec).handle(request(ns_path))
    assert cache.fetched == 1 and len(rec.calls) == 1


def test_cached_pod_with_another_uid_is_refetched(ns_path):
    # StatefulSet pod recreated under the same name; the watch has not caught up yet.
    stale = injected_pod("p", uid="old-uid")
    fresh = injected_pod("p", uid="new-uid", annotations={"traffic.sidecar.istio.io/excludeOutboundPorts": "5432"})
    rec = Recorder()
    cache = FakeCache({("default", "p"): stale}, fetch=lambda ns, name: fresh)
    args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p;K8S_POD_UID=new-uid;IgnoreUnknown=1"
    assert "result" in Handler(cache, apply=rec).handle(request(ns_path, args=args))
    assert cache.fetched == 1
    assert "5432" in rec.calls[0][1].restore_text(4)


@pytest.mark.parametrize("fetch, later, why", [
    (lambda ns, n: (_ for _ in ()).throw(ConnectionRefusedError(111, "refused")), None, "GET failed"),
    (lambda ns, n: None, None, "not visible to the agent yet"),
])
def test_pod_invisible_to_the_agent_asks_for_fallback(ns_path, fetch, later, why):
    rec = Recorder()
    h = Handler(FakeCache(fetch=fetch, later=later), apply=rec)
    answer = h.handle(request(ns_path))
    assert why in answer["fallback"]
    assert rec.calls == [] and h.counts == {"fallback": 1}


def test_expired_request_is_not_committed(ns_path):
    rec = Recorder()
    h = Handler(FakeCache({("default", "p"): injected_pod("p")}), apply=rec)
    answer = h.handle(request(ns_path, expires=time.time() - 1))
    assert "expired while queued" in answer["fallback"]
    assert rec.calls == []


def test_commit_error_is_a_cni_error_answer(ns_path):
    def failing(netns, rs, preferred):
        raise errors.NetfilterError("commit nat failed", "iptc: Operation not permitted", errno=1)

    h = Handler(FakeCache({("default", "p"): injected_pod("p")}), apply=failing)
    answer = h.handle(request(ns_path))
    assert answer == {"error": {"code": 100, "msg": "commit nat failed", "details": "iptc: Operation not permitted"}}


@pytest.mark.parametrize("req, msg", [
    ({"command": "DEL"}, "serves ADD only"),
    ({"stdin": 5}, "'stdin'"),
    ({"deadline": -1}, "'deadline'"),
    ({"stdin": "{not json"}, "failed to decode network configuration"),
    ({"args": "K8S_POD_NAME=p;BOGUS=1"}, "unknown keys in CNI_ARGS"),
])
def test_bad_requests_are_cni_errors_naming_the_problem(ns_path, req, msg):
    h = Handler(FakeCache({("default", "p"): injected_pod("p")}), apply=Recorder())
    answer = h.handle(request(ns_path, **req))
    assert msg in answer["error"]["msg"] + answer["error"].get("details", "")


def test_netns_the_agent_cannot_see_means_fallback_not_failure():
    rec = Recorder()
    h = Handler(FakeCache({("default", "p"): injected_pod("p")}), apply=rec)
    answer = h.handle(request("/run/netns/not-mounted-into-the-agent"))
    assert "not visible to the agent" in answer["fallback"]
    assert rec.calls == []


def test_own_netns_is_refused(netns):
    h = Handler(FakeCache({("default", "p"): injected_pod("p")}), apply=Recorder())
    answer = h.handle(request("/proc/self/ns/net"))
    assert answer["error"]["code"] == 8


def test_commits_are_serialised(ns_path):
    rec = Recorder(hold=0.05)
    pods = {("default", f"p{i}"): injected_pod(f"p{i}") for i in range(6)}
    h = Handler(FakeCache(pods), apply=rec)
    answers = []
    threads = [threading.Thread(target=lambda i=i: answers.append(h.handle(request(ns_path, pod=f"p{i}"))))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(rec.calls) == 6 and all("result" in a for a in answers)
    assert rec.max_active == 1


def test_failed_netns_restore_ends_the_process(ns_path, monkeypatch):
    from istio_cni.errors import NetnsRestoreFailed

    exits = []

    class Exited(BaseException):
        pass

    def fake_exit(code):
        exits.append(code)
        raise Exited()

    def broken(netns, rs, preferred):
        raise NetnsRestoreFailed("setns back to the host netns failed")

    monkeypatch.setattr(handler_mod.os, "_exit", fake_exit)
    h = Handler(FakeCache({("default", "p"): injected_pod("p")}), apply=broken)
    with pytest.raises(Exited):
        h.handle(request(ns_path))
    assert exits == [handler_mod.RESTORE_FAILED_EXIT]

