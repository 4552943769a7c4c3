"""The agent's pod cache: list + watch against the mini API (list, events, 410, reconnects)."""

from __future__ import annotations

import threading

import pytest
from support.injected_pods import NODE, injected_pod

from istio_cni_installer.agent import PodCache

WAIT = 10  # upper bound for "eventually"; tests return as soon as the condition holds


@pytest.fixture
def cache(api_client):
    made = []

    def start(**kw):
        c = PodCache(api_client, NODE, relist_backoff=0.05, **kw)
        made.append(c)
        return c.start()

    yield start
    for c in made:
        c.stop()


class Recorder:
    def __init__(self):
        self.events = []
        self.cond = threading.Condition()

    def __call__(self, kind, pod):
        with self.cond:
            self.events.append((kind, pod["metadata"]["name"]))
            self.cond.notify_all()

    def wait(self, item):
        with self.cond:
            assert self.cond.wait_for(lambda: item in self.events, WAIT), self.events


def test_lists_only_this_nodes_pods_without_managed_fields(mini_api, cache):
    mini_api.put_pod(injected_pod("here-1"))
    mini_api.put_pod(injected_pod("there-1", node="node-b"))
    c = cache()
    assert c.wait_synced(WAIT)
    assert [p["metadata"]["name"] for p in c.pods()] == ["here-1"]
    pod = c.get("default", "here-1")
    assert "managedFields" not in pod["metadata"]
    assert pod["spec"]["containers"][1]["name"] == "istio-proxy"  # the rest is kept verbatim
    assert c.get("default", "there-1") is None


def test_watch_delivers_add_modify_delete_to_cache_and_listeners(mini_api, cache):
    c = cache()
    rec = Recorder()
    c.listeners.append(rec)
    assert c.wait_synced(WAIT)
    mini_api.put_pod(injected_pod("w-1"))
    assert c.wait_for("default", "w-1", WAIT) is not None
    changed = injected_pod("w-1", ip="169.254.3.4")
    mini_api.put_pod(changed)
    rec.wait(("MODIFIED", "w-1"))
    assert c.get("default", "w-1")["status"]["podIP"] == "169.254.3.4"
    mini_api.remove_pod("default", "w-1")
    rec.wait(("DELETED", "w-1"))
    assert c.get("default", "w-1") is None
    assert c.relists == 1


def test_relists_after_410_gone_and_sees_pods_from_the_gap(mini_api, cache):
    mini_api.put_pod(injected_pod("before"))
    c = cache()
    assert c.wait_synced(WAIT)
    # etcd compaction while the watch is down: the next watch from our version gets 410.
    mini_api.compact()
    mini_api.put_pod(injected_pod("during"))
    mini_api.remove_pod("default", "before")
    mini_api.compact()
    mini_api.drop_watches()
    assert c.wait_for("default", "during", WAIT) is not None
    assert c.relists >= 2
    assert c.get("default", "before") is None


def test_dropped_watch_resumes_from_last_version_without_relist(mini_api, cache):
    c = cache()
    assert c.wait_synced(WAIT)
    mini_api.put_pod(injected_pod("r-1"))
    assert c.wait_for("default", "r-1", WAIT) is not None
    watches = mini_api.watch_count()
    mini_api.drop_watches()
    mini_api.put_pod(injected_pod("r-2"))
    assert c.wait_for("default", "r-2", WAIT) is not None
    assert mini_api.watch_count() > watches
    assert c.relists == 1


def test_fetch_gets_unseen_pods_and_reports_404_as_none(mini_api, cache):
    c = cache()
    assert c.wait_synced(WAIT)
    mini_api.put_pod(injected_pod("other-node", node="node-b"))  # never in this node's watch
    assert c.fetch("default", "other-node", timeout=5)["metadata"]["name"] == "other-node"
    assert c.fetch("default", "missing", timeout=5) is None
    mini_api.fail_gets = 1
    from istio_cni_installer.agent import ApiError

    with pytest.raises(ApiError, match="HTTP 503"):
        c.fetch("default", "other-node", timeout=5)


def test_needs_a_node_name(api_client):
    with pytest.raises(ValueError, match="node name"):
        PodCache(api_client, "")


def test_watch_that_ends_at_once_is_backed_off_not_spun(mini_api, api_client):
    # timeoutSeconds=0: every watch ends immediately with no events (like a proxy cutting it).
    c = PodCache(api_client, NODE, watch_seconds=0, relist_backoff=0.2).start()
    try:
        assert c.wait_synced(WAIT)
        threading.Event().wait(1.0)  # observation window
        watches = mini_api.watch_count()
    finally:
        c.stop()
    # At most one watch per back-off (~5 in the window); without it, hundreds.
    assert 1 <= watches <= 15
