"""The DEL-only stand-in uninstall leaves at ``<bin>/istio-cni`` (istio_cni_installer.standin):
its CNI answers, its lifecycle (uninstall writes it, install replaces it) and that no moment of
install, upgrade or uninstall leaves the bin dir without an ``istio-cni``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from istio_cni.versions import LATEST
from istio_cni_installer.binaries import BUNDLE_DIR, Binaries
from istio_cni_installer.installer import Installer
from istio_cni_installer.settings import parse
from istio_cni_installer.standin import MARK, is_standin, standin_text

CONF = {"cniVersion": "0.3.1", "name": "k8s-pod-network", "type": "istio-cni",
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "192.0.2.5/24"}]}}


@pytest.fixture
def standin(tmp_path) -> Path:
    path = tmp_path / "istio-cni"
    path.write_text(standin_text())
    path.chmod(0o755)
    return path


def _run(exe: Path, command: str | None, stdin: bytes, **env) -> subprocess.CompletedProcess:
    e = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/none",
         "CNI_IFNAME": "eth0", "CNI_PATH": str(exe.parent), **env}
    if command is not None:
        e["CNI_COMMAND"] = command
    return subprocess.run([str(exe)], input=stdin, env=e, capture_output=True, timeout=30)


def _one_error(r: subprocess.CompletedProcess) -> dict:
    """stdout holds exactly one JSON document, a CNI error."""
    doc = json.loads(r.stdout)  # raises on a second document or trailing garbage
    assert set(doc) == {"cniVersion", "code", "msg", "details"}, doc
    assert r.returncode == 1
    return doc


@pytest.mark.parametrize("command", ["DEL", "GC", "CHECK"])
def test_del_gc_check_succeed_silently(standin, command):
    r = _run(standin, command, json.dumps(CONF).encode())
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")


def test_del_succeeds_without_stdin_and_with_oversized_stdin(standin):
    assert _run(standin, "DEL", b"").returncode == 0
    big = b'{"cniVersion":"1.0.0","pad":"' + b"x" * (3 << 20) + b'"}'  # 3 MiB, over the 1 MiB drain
    r = _run(standin, "DEL", big)
    assert (r.returncode, r.stdout) == (0, b"")


def test_version_matches_the_real_plugin(standin, plugin_bundle):
    mine = _run(standin, "VERSION", b'{"cniVersion":"1.0.0"}')
    real = _run(plugin_bundle.launcher, "VERSION", b'{"cniVersion":"1.0.0"}')
    assert mine.returncode == real.returncode == 0, real.stderr
    assert json.loads(mine.stdout) == json.loads(real.stdout)


def test_add_fails_closed_with_one_error_in_the_config_version(standin):
    doc = _one_error(_run(standin, "ADD", json.dumps(CONF).encode()))
    assert doc["code"] == 11 and doc["cniVersion"] == "0.3.1"
    assert "not installed" in doc["msg"]


@pytest.mark.parametrize("stdin", [
    b"",                                                   # nothing at all
    b"not json",                                           # garbage
    b'{"cniVersion":"9.9.9","name":"n"}',                  # a version the plugin does not speak
    b'{"cniVersion":"1.0.0\\",\\"code\\":0,\\"x\\":\\"","name":"n"}',  # an injection attempt
    b'{"cniVersion": "1.0.0\n", "name": "n"}',
])
def test_add_error_stays_one_valid_document_whatever_the_input(standin, stdin):
    doc = _one_error(_run(standin, "ADD", stdin))
    assert doc["code"] == 11 and doc["cniVersion"] == LATEST


def test_status_reports_not_available_and_unknown_command_is_an_error(standin):
    doc = _one_error(_run(standin, "STATUS", b'{"cniVersion":"1.1.0","name":"n"}'))
    assert doc["code"] == 50 and doc["cniVersion"] == "1.1.0"
    doc = _one_error(_run(standin, "FROB", b'{"cniVersion":"1.0.0"}'))
    assert doc["code"] == 4
    r = _run(standin, None, b"")  # no CNI_COMMAND: says what it is on stderr, like the plugin
    assert r.returncode == 0 and r.stdout == b"" and b"stand-in" in r.stderr


def test_the_mark_is_recognised_and_nothing_else_is():
    assert is_standin(standin_text())
    assert standin_text().splitlines()[1] == MARK
    assert not is_standin("#!/bin/sh\n# istio-cni plugin launcher written by install-cni\n")
    assert not is_standin(MARK + "\n")


def test_uninstall_leaves_the_standin_and_reinstall_replaces_it(plugin_bundle, tmp_path):
    (tmp_path / "bridge").write_bytes(b"\x7fELF other plugin")
    b = Binaries(plugin_bundle.bundle_dir, str(tmp_path), str(tmp_path))
    assert b.ensure() is True
    assert b.remove(leave_standin=True) is True
    exe = tmp_path / "istio-cni"
    assert is_standin(exe.read_text()) and os.access(exe, os.X_OK)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bridge", "istio-cni"]  # bundle gone
    assert b.remove(leave_standin=True) is False  # a second uninstall changes nothing
    # an install (a new DaemonSet pod) sees the stand-in as a problem and replaces it
    assert b.check() == [f"{exe} is the DEL-only stand-in left by an uninstall"]
    assert b.ensure() is True and b.check() == []
    assert not is_standin(exe.read_bytes())
    assert _run(exe, "VERSION", b"{}").returncode == 0


def test_update_false_still_replaces_the_standin(plugin_bundle, tmp_path):
    (tmp_path / "istio-cni").write_text(standin_text())
    b = Binaries(plugin_bundle.bundle_dir, str(tmp_path), str(tmp_path), update=False)
    assert b.check() and b.ensure() is True and b.check() == []
    assert (tmp_path / BUNDLE_DIR / b.bundle_id).is_dir()


def test_nothing_installed_means_no_standin_and_opt_out_removes_everything(plugin_bundle, tmp_path):
    b = Binaries(plugin_bundle.bundle_dir, str(tmp_path), str(tmp_path))
    assert b.remove(leave_standin=True) is False
    assert not (tmp_path / "istio-cni").exists()
    b.ensure()
    assert b.remove(leave_standin=False) is True
    assert list(tmp_path.iterdir()) == []


def test_installer_uninstall_follows_the_setting(plugin_bundle, host_layout):
    (host_layout.net_dir / "10-calico.conflist").write_text(json.dumps(
        {"name": "k8s-pod-network", "cniVersion": "0.3.1", "plugins": [{"type": "calico"}]}))
    for leave, expect_standin in (("true", True), ("false", False)):
        inst = Installer(parse([], host_layout.env(plugin_bundle, DEL_STANDIN_ON_UNINSTALL=leave)))
        inst.prepare()
        assert inst.reconcile() is True
        session = host_layout.run_dir / "tls-session"  # what the plugin keeps beside its kubeconfig
        session.write_bytes(b"a TLS session")
        described = host_layout.run_dir / "istio-cni-prefetch"  # its pod GET, token included
        described.write_bytes(b'{"request": ["GET ", "Authorization: Bearer t0ken"]}')
        assert (host_layout.run_dir / "istio-cni-kubeconfig").exists()
        inst.uninstall()
        assert not session.exists() and not (host_layout.run_dir / "istio-cni-kubeconfig").exists()
        assert not described.exists()
        exe = host_layout.bin_dir / "istio-cni"
        assert (exe.exists() and is_standin(exe.read_bytes())) is expect_standin
        assert not (host_layout.bin_dir / BUNDLE_DIR).exists()
    assert parse([], host_layout.env()).del_standin_on_uninstall is True  # the default leaves it


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem
        shutil.copy2(src, dst)


def _other_bundle(bundle_dir: Path, root: Path) -> Path:
    """A copy of the bundle under another id: what the next release's image brings."""
    other = root / "bundle-next"
    shutil.copytree(bundle_dir, other, symlinks=True, copy_function=_link_or_copy)
    manifest = json.loads((other / "MANIFEST.json").read_text())
    manifest["id"] = manifest["id"][::-1]
    (other / "MANIFEST.json").unlink()  # maybe a hard link to the original: never write through it
    (other / "MANIFEST.json").write_text(json.dumps(manifest))
    return other


def test_no_moment_without_an_istio_cni(plugin_bundle, tmp_path):
    """A sampler thread lstat()s <bin>/istio-cni without pause while the real installer code
    installs, upgrades to another bundle, uninstalls (stand-in), reinstalls over the stand-in and
    upgrades back: it must never find the name missing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    current = Binaries(plugin_bundle.bundle_dir, str(bin_dir), str(bin_dir))
    current.ensure()
    nxt = Binaries(_other_bundle(plugin_bundle.bundle_dir, tmp_path), str(bin_dir), str(bin_dir))
    exe = bin_dir / "istio-cni"
    stop, missing, samples = threading.Event(), [], [0]

    def sample():
        while not stop.is_set():
            if not os.path.lexists(exe):
                missing.append(samples[0])
            samples[0] += 1

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        for _ in range(3):
            assert nxt.ensure() is True            # upgrade: new bundle, launcher renamed over
            assert nxt.remove(leave_standin=True)  # uninstall: stand-in renamed over
            assert is_standin(exe.read_text())
            assert current.ensure() is True        # reinstall over the stand-in
            assert current.check() == []
    finally:
        stop.set()
        t.join(10)
    assert samples[0] > 0
    assert missing == [], f"istio-cni was missing in {len(missing)} of {samples[0]} samples"
