"""The startup taint: the patch computation (unit), and removal from a Node of the real
kube-apiserver by the node program (only once every part is in place, only our key, no write when
absent, 403 logged and retried, concurrent changes retried)."""

from __future__ import annotations

import io
import json
import time
import uuid

import pytest
from support.installer_fixtures import project_token

from istio_cni.log import log
from istio_cni_installer.app import App
from istio_cni_installer.kube.client import api_client_from_settings
from istio_cni_installer.settings import SettingError, parse
from istio_cni_installer.taint import DEFAULT_KEY, StartupTaint, has_taint, removal_patch

KEY = DEFAULT_KEY
OURS = {"key": KEY, "effect": "NoSchedule"}
DEDICATED = {"key": "dedicated", "value": "mesh", "effect": "NoSchedule"}
LATER = {"key": "example.com/later", "effect": "PreferNoSchedule"}
WAIT_SECONDS = 60.0  # upper bound of a wait for something that happens on its own, never a timing claim


# ---- the patch (unit) ---------------------------------------------------------------------------

def test_patch_removes_only_our_key_and_pins_the_list_it_read():
    node = {"spec": {"taints": [DEDICATED, OURS, LATER]}}
    assert removal_patch(node, KEY) == [
        {"op": "test", "path": "/spec/taints", "value": [DEDICATED, OURS, LATER]},
        {"op": "replace", "path": "/spec/taints", "value": [DEDICATED, LATER]}]


def test_patch_removes_every_effect_of_our_key():
    node = {"spec": {"taints": [OURS, {"key": KEY, "effect": "NoExecute"}, DEDICATED]}}
    assert removal_patch(node, KEY)[1]["value"] == [DEDICATED]


@pytest.mark.parametrize("node", [{}, {"spec": {}}, {"spec": {"taints": None}}, {"spec": {"taints": []}},
                                  {"spec": {"taints": [DEDICATED, {"key": KEY + "-other", "effect": "NoSchedule"}]}}])
def test_no_patch_when_our_key_is_absent(node):
    assert removal_patch(node, KEY) is None
    assert not has_taint(node, KEY)


def test_setting_default_empty_and_invalid(host_layout):
    env = host_layout.env()
    del env["STARTUP_TAINT_KEY"]
    assert parse([], env).startup_taint_key == KEY  # upstream's key by default
    assert parse([], {**env, "STARTUP_TAINT_KEY": ""}).startup_taint_key == ""
    with pytest.raises(SettingError, match="STARTUP_TAINT_KEY"):
        parse([], {**env, "STARTUP_TAINT_KEY": "not a key"})


# ---- the real kube-apiserver ----------------------------------------------------------------

@pytest.fixture
def captured_log(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(log, "stream", buf)
    return buf


def records(buf: io.StringIO, msg: str) -> list[dict]:
    return [r for r in map(json.loads, buf.getvalue().splitlines()) if r.get("msg", "").startswith(msg)]


class Cluster:
    """A Node of the session's control plane and the settings of a node program for it."""

    def __init__(self, control_plane, host_layout, taints: list[dict]) -> None:
        self.cp, self.lay = control_plane, host_layout
        self.kapi = control_plane.api
        self.name = f"taint-node-{uuid.uuid4().hex[:8]}"
        self.path = f"/api/v1/nodes/{self.name}"
        self.kapi.call("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                                 "metadata": {"name": self.name}, "spec": {"taints": taints}})
        self.use_token(control_plane.token)
        # The API server's admission adds node.kubernetes.io/not-ready:NoSchedule to a new Node
        # (TaintNodesByCondition): one more taint that is not ours and must survive.
        self.initial = self.taints()
        assert self.initial[:len(taints)] == taints and len(self.initial) > len(taints)
        self.others = [t for t in self.initial if t["key"] != KEY]

    def use_token(self, token: str) -> None:
        project_token(self.lay.sa_dir, {"token": token.encode(), "ca.crt": self.cp.ca_file.read_bytes()})

    def identity(self, name: str, rules: list[dict]) -> None:
        """Switch the program's service account to one allowed only ``rules``."""
        ns = "taint-test"
        self.kapi.create_namespace(ns)
        token, _ = self.kapi.limited_identity(ns, f"{name}-{uuid.uuid4().hex[:6]}", rules,
                                              self.lay.root / f"{name}.kubeconfig")
        self.use_token(token)

    def settings(self, bundle=None, **extra: str):
        host, port = self.cp.server.rsplit("//", 1)[1].rsplit(":", 1)
        env = self.lay.env(bundle, KUBERNETES_SERVICE_HOST=host.strip("[]"), KUBERNETES_SERVICE_PORT=port,
                           KUBERNETES_NODE_NAME=self.name, STARTUP_TAINT_KEY=KEY, **extra)
        return parse([], env)

    def node(self) -> dict:
        return self.kapi.call("GET", self.path)

    def taints(self) -> list[dict]:
        return self.node()["spec"].get("taints") or []

    def delete(self) -> None:
        self.kapi.call("DELETE", self.path, ok=(200, 202, 404))


@pytest.fixture
def cluster(control_plane, host_layout):
    made = []

    def make(taints):
        c = Cluster(control_plane, host_layout, taints)
        made.append(c)
        return c
    yield make
    for c in made:
        c.delete()


def wait_for(cond, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_SECONDS}s: {what}")
        time.sleep(0.05)


def primary_conflist(layout) -> None:
    (layout.net_dir / "10-calico.conflist").write_text(json.dumps(
        {"name": "k8s-pod-network", "cniVersion": "0.3.1", "plugins": [{"type": "calico"}]}))


@pytest.mark.peers
def test_removed_only_once_plugin_kubeconfig_and_conflist_entry_are_in_place(
        cluster, host_layout, plugin_bundle, captured_log):
    c = cluster([DEDICATED, OURS, LATER])
    app = App(c.settings(plugin_bundle))
    app.start()
    try:
        taint = next(s for s in app.services if isinstance(s, StartupTaint))
        # No primary conflist yet: plugin and kubeconfig are written, the entry cannot be.
        wait_for(lambda: (host_layout.run_dir / "istio-cni-kubeconfig").exists()
                 and (host_layout.bin_dir / "istio-cni").exists()
                 and "no primary CNI config" in app.metrics.not_ready_reason,
                 "plugin and kubeconfig installed, conflist entry waiting")
        rv = c.node()["metadata"]["resourceVersion"]
        assert taint.attempt() == "not-installed"  # even when asked directly: nothing is written
        assert c.taints() == c.initial
        assert c.node()["metadata"]["resourceVersion"] == rv
        assert taint.outcome is None and not records(captured_log, "startup taint removed")

        primary_conflist(host_layout)
        wait_for(lambda: taint.outcome is not None, "the startup taint settled")
        assert taint.outcome == "removed"
        assert app.installer.installed_now()
        assert c.taints() == c.others  # the others untouched, order kept
        assert len(records(captured_log, "startup taint removed")) == 1
        assert app.metrics.get("istio_cni_startup_taint_removed_total") == 1

        # The install breaks later: the taint is not re-added (as upstream), the drift loop repairs.
        (host_layout.net_dir / "10-calico.conflist").unlink()
        wait_for(lambda: not app.metrics.ready, "not ready without the primary conflist")
        assert c.taints() == c.others
        assert not taint._thread.is_alive()
    finally:
        app.shutdown()


@pytest.mark.peers
def test_absent_taint_means_one_read_and_no_write(cluster, host_layout, captured_log):
    c = cluster([DEDICATED])
    # get only: a PATCH would be refused (403), so "absent" also proves none was sent
    c.identity("taint-get-only", [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}])
    s = c.settings()
    rv = c.node()["metadata"]["resourceVersion"]
    taint = StartupTaint(s, installed=lambda: True)
    assert taint.attempt() == "absent"
    assert c.node()["metadata"]["resourceVersion"] == rv and c.taints() == c.initial
    assert not records(captured_log, "cannot remove")


@pytest.mark.peers
def test_forbidden_is_logged_clearly_and_retried_until_allowed(cluster, host_layout, captured_log, monkeypatch):
    monkeypatch.setattr("istio_cni_installer.taint.BACKOFF_FIRST", 0.1)
    c = cluster([OURS, DEDICATED])
    c.identity("taint-no-nodes", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}])
    taint = StartupTaint(c.settings(), installed=lambda: True)
    assert taint.attempt() == "error"  # GET refused
    c.identity("taint-no-patch", [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}])
    assert taint.attempt() == "error"  # PATCH refused
    errors = records(captured_log, "cannot remove the startup taint")
    assert [("HTTP 403" in e["error"], e["error"].split(":")[0]) for e in errors] == [
        (True, "GET /api/v1/nodes/" + c.name), (True, "PATCH /api/v1/nodes/" + c.name)]
    assert all("get and patch on nodes" in e["hint"] for e in errors)
    assert c.taints() == c.initial

    taint.start()  # the service keeps retrying with backoff ...
    try:
        taint.kick()
        c.identity("taint-allowed", [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}])
        wait_for(lambda: taint.outcome is not None, "removal once RBAC allows it")  # ... until allowed
    finally:
        taint.stop()
    assert taint.outcome == "removed" and c.taints() == c.others
    # one line per distinct error, not one per retry
    assert len(records(captured_log, "cannot remove the startup taint")) <= 3


class InterferingClient:
    """Delegates to the real client; just before the first PATCH, someone else adds a taint."""

    def __init__(self, inner, interfere) -> None:
        self.inner, self.interfere, self.patches = inner, interfere, 0

    def request(self, method, path, body=None, **kw):
        if method == "PATCH":
            self.patches += 1
            if self.patches == 1:
                self.interfere()
        return self.inner.request(method, path, body, **kw)


@pytest.mark.peers
def test_concurrent_change_to_the_taints_is_retried_and_kept(cluster, host_layout, captured_log):
    c = cluster([OURS, DEDICATED])
    s = c.settings()

    def add_taint_elsewhere():
        c.kapi.call("PATCH", c.path, {"spec": {"taints": c.taints() + [LATER]}},
                    content_type="application/merge-patch+json")

    client = InterferingClient(api_client_from_settings(s), add_taint_elsewhere)
    taint = StartupTaint(s, installed=lambda: True, client_factory=lambda: client)
    assert taint.attempt() == "removed"
    assert client.patches == 2  # the first was refused by its test op, the second applied
    assert c.taints() == c.others + [LATER]  # the concurrent addition survived
    assert len(records(captured_log, "node taints changed")) == 1


@pytest.mark.peers
def test_install_broken_between_read_and_patch_writes_nothing(cluster, host_layout):
    c = cluster([OURS])
    answers = iter([False])
    taint = StartupTaint(c.settings(), installed=lambda: next(answers))
    rv = c.node()["metadata"]["resourceVersion"]
    assert taint.attempt() == "not-installed"
    assert c.taints() == c.initial and c.node()["metadata"]["resourceVersion"] == rv
