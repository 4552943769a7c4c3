"""The self-contained bundle and launcher, and deploying them into a bin dir."""

from __future__ import annotations

import json
import os
import subprocess

from istio_cni_installer.binaries import BUNDLE_DIR, Binaries
from istio_cni_installer.bundle import read_manifest
from istio_cni_installer.front import read_config


def _run(launcher, env, stdin=b"", extra_args=()):
    return subprocess.run([str(launcher), *extra_args], input=stdin, env=env, capture_output=True,
                          timeout=60)


def test_launcher_runs_plugin_with_an_empty_environment(plugin_bundle):
    # No PATH, no PYTHON*: the launcher must find everything by absolute path.
    r = _run(plugin_bundle.launcher, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.0.0"}')
    assert r.returncode == 0, r.stderr
    assert "1.0.0" in json.loads(r.stdout)["supportedVersions"]


def test_bundle_interpreter_is_isolated_and_has_what_the_plugin_needs(plugin_bundle):
    m = read_manifest(plugin_bundle.bundle_dir)
    target = plugin_bundle.bin_dir / BUNDLE_DIR / m["id"]
    probe = ("import sys,ssl,istio_cni._fastpath,istio_cni._nf,_cffi_backend;"
             "print(sys.prefix);print(istio_cni._nf.__file__);print(ssl.OPENSSL_VERSION)")
    code = f"import sys;sys.path.insert(0,{str(target / m['site'])!r});{probe}"
    r = subprocess.run([str(target / m["python"]), "-I", "-S", "-c", code],
                       env={"LD_LIBRARY_PATH": str(target / m["lib"])}, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    prefix, nf, _ssl = r.stdout.splitlines()
    assert prefix == str(target)  # the stdlib comes from the bundle, not from the build host
    assert nf.startswith(str(target))


def test_bundle_is_pruned(plugin_bundle):
    root = plugin_bundle.bundle_dir
    stdlib = next((root / "lib").glob("python3.*"))
    for gone in ("test", "idlelib", "tkinter", "ensurepip", "lib2to3", "site-packages"):
        assert not (stdlib / gone).exists(), gone
    assert not list(stdlib.glob("config-*"))
    assert not (root / "site-packages" / "istio_cni" / "tools").exists()
    assert not list((root / "site-packages").rglob("*.pyx"))
    # Test-only and type-checker-only files stay out of the runtime bundle.
    assert not list((root / "site-packages").rglob("*fastpath_py*"))
    assert not list((root / "site-packages" / "istio_cni").rglob("*.pyi"))
    assert read_manifest(root)["size_bytes"] == plugin_bundle.size_bytes


def test_deploy_is_atomic_idempotent_and_leaves_other_files(plugin_bundle, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bridge").write_bytes(b"\x7fELF other plugin")
    b = Binaries(plugin_bundle.bundle_dir, str(bin_dir), "/opt/cni/bin")
    assert b.check() and b.ensure() is True
    assert b.check() == [] and b.ensure() is False
    launcher = (bin_dir / "istio-cni").read_bytes()
    assert launcher.startswith(b"\x7fELF")  # the compiled front, configured for the host path
    config = read_config(launcher)
    assert config["python"].startswith(f"/opt/cni/bin/{BUNDLE_DIR}/{b.bundle_id}/bin/python3")
    assert config["lib"] == f"/opt/cni/bin/{BUNDLE_DIR}/{b.bundle_id}/lib"
    assert f"'/opt/cni/bin/{BUNDLE_DIR}/{b.bundle_id}/site-packages'" in config["code"]
    assert os.access(bin_dir / "istio-cni", os.X_OK)
    assert sorted(p.name for p in bin_dir.iterdir()) == ["bridge", "istio-cni", BUNDLE_DIR]
    # drift: someone truncates the launcher -> check reports it, ensure repairs it
    (bin_dir / "istio-cni").write_text("")
    assert b.check() and b.ensure() is True and b.check() == []
    assert b.remove() is True
    assert sorted(p.name for p in bin_dir.iterdir()) == ["bridge"]
    assert (bin_dir / "bridge").read_bytes() == b"\x7fELF other plugin"


def test_update_false_keeps_an_existing_plugin(plugin_bundle, tmp_path):
    (tmp_path / "istio-cni").write_text("#!/bin/sh\necho older\n")
    b = Binaries(plugin_bundle.bundle_dir, str(tmp_path), str(tmp_path), update=False)
    assert b.check() == [] and b.ensure() is False
    assert (tmp_path / "istio-cni").read_text() == "#!/bin/sh\necho older\n"


def test_stale_temp_from_a_crash_is_cleared(plugin_bundle, tmp_path):
    (tmp_path / BUNDLE_DIR).mkdir()
    crashed = tmp_path / BUNDLE_DIR / ".deadbeef.tmp.99999"
    crashed.mkdir()
    (crashed / "half").write_bytes(b"x")
    (tmp_path / ".istio-cni.tmp.99999").write_text("half a launcher")
    Binaries(plugin_bundle.bundle_dir, str(tmp_path), str(tmp_path)).ensure()
    assert not crashed.exists() and not (tmp_path / ".istio-cni.tmp.99999").exists()


def test_install_into_helper_injects_into_a_bridge_conflist(plugin_bundle, tmp_path, conformance):
    """What ``make demo`` calls: a plain layout, a bridge .conf -> list with our entry."""
    from istio_cni_installer.app import install_into

    net, bin_dir, run = tmp_path / "net", tmp_path / "bin", tmp_path / "run"
    net.mkdir()
    bin_dir.mkdir()
    (net / "10-bridge.conf").write_bytes((conformance / "install/modern/bridge.conf").read_bytes())
    problems = install_into(str(net), str(bin_dir), str(run), str(plugin_bundle.bundle_dir))
    assert not any(problems.values()), problems
    conf = json.loads((net / "10-bridge.conflist").read_text())
    assert [p["type"] for p in conf["plugins"]] == ["bridge", "istio-cni"]
    assert conf["plugins"][1]["kubernetes"]["cni_bin_dir"] == str(bin_dir)
    r = _run(bin_dir / "istio-cni", {"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.0.0"}')
    assert r.returncode == 0, r.stderr


def test_bundle_id_is_reproducible_so_a_restart_keeps_the_deployed_bundle(plugin_bundle, tmp_path):
    # A second build from the same venv into another (longer) temp path, as every start of
    # the node program does: same id, and deploying it over the first one writes nothing.
    from istio_cni_installer.bundle import build

    again = build(tmp_path / "elsewhere" / "deeper" / "bundle")
    assert again.bundle_id == plugin_bundle.bundle_id
    site = tmp_path / "elsewhere" / "deeper" / "bundle" / "site-packages"
    pycs = list(site.rglob("*.pyc"))
    assert pycs and not [p for p in pycs if str(tmp_path).encode() in p.read_bytes()
                         or b".bundle.tmp." in p.read_bytes()]  # no build path compiled in
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    assert Binaries(plugin_bundle.bundle_dir, str(bin_dir), "/opt/cni/bin").ensure() is True
    restarted = Binaries(again.path, str(bin_dir), "/opt/cni/bin")
    assert restarted.check() == [] and restarted.ensure() is False
    assert [p.name for p in (bin_dir / BUNDLE_DIR).iterdir()] == [plugin_bundle.bundle_id]
