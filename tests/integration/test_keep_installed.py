"""Adversarial tests against the real ``install-cni`` process and real files.

No timed assertions: every wait is a bounded wait for an observable state (a log record, a file
content, a readiness answer); latencies are measured in benchmarks/bench_installer.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from support.installer_fixtures import InstallerProcess, project_token

FAKE_PRIMARY = Path(__file__).resolve().parents[1] / "support" / "fake_primary.py"
CALICO = {"name": "k8s-pod-network", "cniVersion": "0.3.1",
          "plugins": [{"type": "calico", "mtu": 1500}, {"type": "portmap", "snat": True}]}


def _readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _plugins(path: Path) -> list[str]:
    return [p["type"] for p in json.loads(path.read_text())["plugins"]]


def _wait_file(pred, timeout=30.0):
    """Bounded wait for a file-system condition (inotify-driven repairs are usually < 10 ms)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def _write(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".t")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


@contextmanager
def _ready_installer(plugin_bundle, host_layout):
    """A calico primary in place, then a running, ready installer that must exit 0 on SIGTERM."""
    conf = host_layout.net_dir / "10-calico.conflist"
    _write(conf, CALICO)
    p = InstallerProcess(host_layout.env(plugin_bundle))
    try:
        p.wait_ready()
        yield p, conf
    finally:
        assert p.terminate() == 0


def test_waits_for_primary_then_installs_and_serves_health(plugin_bundle, host_layout):
    p = InstallerProcess(host_layout.env(plugin_bundle))
    try:
        port = p.port("readiness")
        mport = p.port("monitoring")
        p.wait_for(lambda r: r.get("msg") == "readiness changed" and r.get("ready") is False
                   and "no primary CNI config" in str(r.get("reason")), timeout=60)
        assert _readyz(port) == 503
        assert not any(host_layout.net_dir.iterdir()), "nothing written before the primary exists"
        # a partial (non-JSON) file and a file kubelet ignores arrive first: still waiting
        (host_layout.net_dir / "05-partial.conflist").write_text('{"name": "x", "plugins": [')
        (host_layout.net_dir / "01-notes.txt").write_text("hello")
        assert _readyz(port) == 503
        _write(host_layout.net_dir / "10-calico.conflist", CALICO)
        p.wait_ready()
        assert _plugins(host_layout.net_dir / "10-calico.conflist") == ["calico", "portmap", "istio-cni"]
        assert (host_layout.net_dir / "05-partial.conflist").read_text() == '{"name": "x", "plugins": ['
        assert _readyz(port) == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert "istio_cni_install_ready 1" in metrics
        assert 'istio_cni_installs_total{result="success"}' in metrics
    finally:
        assert p.terminate() == 0


def test_drift_in_every_part_is_repaired(plugin_bundle, host_layout):
    with _ready_installer(plugin_bundle, host_layout) as (p, conf):
        launcher = host_layout.bin_dir / "istio-cni"
        kubeconfig = host_layout.run_dir / "istio-cni-kubeconfig"
        _write(conf, CALICO)  # primary drops our entry
        assert _wait_file(lambda: "istio-cni" in _plugins(conf))
        launcher.unlink()
        assert _wait_file(launcher.exists)
        kubeconfig.unlink()
        assert _wait_file(kubeconfig.exists)
        # projected token rotation: kubelet swaps ..data; the kubeconfig follows
        ca = (host_layout.sa_dir / "ca.crt").read_bytes()
        project_token(host_layout.sa_dir, {"token": b"token-two", "ca.crt": ca})
        assert _wait_file(lambda: '"token": "token-two"' in kubeconfig.read_text())
        assert kubeconfig.stat().st_mode & 0o777 == 0o600
        assert not any("token-two" in line for line in p.raw)
        p.wait_for(lambda r: r.get("msg") == "drift repaired" and r.get("part") == "kubeconfig")


def test_fight_with_a_primary_rewriting_every_50ms(plugin_bundle, host_layout):
    with _ready_installer(plugin_bundle, host_layout) as (p, conf):
        start = len(p.records)
        fighter = subprocess.run([sys.executable, str(FAKE_PRIMARY), str(conf), "0.05", "5"],
                                 capture_output=True, text=True, timeout=120)
        summary = json.loads(fighter.stdout)
        assert summary["rewrites"] > 10
        assert summary["repaired"] == summary["rewrites"], "our entry must come back after every rewrite"
        warn = p.wait_for(lambda r: r.get("msg") == "another component keeps reverting our config",
                          start=start)
        assert warn["file"] == "conflist:10-calico.conflist"
        assert _plugins(conf) == ["calico", "portmap", "istio-cni"]


def test_sigterm_during_a_write_fight_leaves_only_parseable_files(plugin_bundle, host_layout):
    conf = host_layout.net_dir / "10-calico.conflist"
    _write(conf, CALICO)
    p = InstallerProcess(host_layout.env(plugin_bundle))
    fighter = None
    try:
        p.wait_ready()
        fighter = subprocess.Popen([sys.executable, str(FAKE_PRIMARY), str(conf), "0.005", "3"],
                                   stdout=subprocess.PIPE, text=True)
        p.wait_for(lambda r: r.get("msg") == "drift repaired")
        assert p.terminate() == 0
    finally:
        p.kill()
        if fighter is not None:
            fighter.wait(60)
    for f in host_layout.net_dir.iterdir():
        if f.name.endswith((".conf", ".conflist")):
            json.loads(f.read_text())  # every config file parses
    assert not [f for f in host_layout.net_dir.iterdir() if ".tmp." in f.name]


def test_sigkill_mid_fight_never_leaves_a_half_written_config(plugin_bundle, host_layout):
    conf = host_layout.net_dir / "10-calico.conflist"
    _write(conf, CALICO)
    p = InstallerProcess(host_layout.env(plugin_bundle))
    try:
        p.wait_ready()
        for _ in range(20):  # kill at an arbitrary point of a rewrite storm
            _write(conf, CALICO)
        os.kill(p.proc.pid, signal.SIGKILL)
        p.proc.wait(30)
    finally:
        p.kill()
    json.loads(conf.read_text())
    # a restarted installer clears any temp file of ours and repairs
    q = InstallerProcess(host_layout.env(plugin_bundle))
    try:
        q.wait_ready()
        assert _plugins(conf)[-1] == "istio-cni"
        assert not [f for f in host_layout.net_dir.iterdir() if ".tmp." in f.name]
    finally:
        assert q.terminate() == 0
