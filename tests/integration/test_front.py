"""The compiled front (``src/front/``) as the installer configures it: it execs the
bundled interpreter exactly as the ``#!/bin/sh`` launcher it replaces did, and fails closed with
one CNI error document when it cannot."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest

from istio_cni_installer.binaries import front_config
from istio_cni_installer.bundle import read_manifest
from istio_cni_installer.front import CONFIG_SIZE, MARKER, FrontError, configure, read_config

# What the interpreter sees of its start: argv, flags, executable, path head, environment.
PROBE = (
    "import os,sys,json;print(json.dumps({'argv':sys.argv,'isolated':sys.flags.isolated,"
    "'no_site':sys.flags.no_site,'executable':sys.executable,'prefix':sys.prefix,"
    "'env':{k:v for k,v in os.environ.items()}}))"
)


def _front_bytes(plugin_bundle) -> bytes:
    m = read_manifest(plugin_bundle.bundle_dir)
    return (plugin_bundle.bundle_dir / m["front"]).read_bytes()


def _write(path, data: bytes):
    path.write_bytes(data)
    path.chmod(0o755)
    return path


def _shell_launcher(path, python: str, lib: str, code: str):
    """The launcher the front replaced, byte for byte in its semantics."""
    text = (
        "#!/bin/sh\n"
        f"LD_LIBRARY_PATH={shlex.quote(lib)}\nexport LD_LIBRARY_PATH\n"
        f'exec {shlex.quote(python)} -I -S -c {shlex.quote(code)} "$@"\n'
    )
    return _write(path, text.encode())


def _run(exe, env, args=(), stdin=b""):
    return subprocess.run([str(exe), *args], env=env, input=stdin, capture_output=True, timeout=60)


def test_front_execs_the_interpreter_exactly_as_the_shell_launcher(plugin_bundle, tmp_path):
    m = read_manifest(plugin_bundle.bundle_dir)
    config = front_config(str(plugin_bundle.bundle_dir), m)
    config["code"] = PROBE
    front = _write(tmp_path / "front", configure(_front_bytes(plugin_bundle), config))
    shell = _shell_launcher(tmp_path / "shell", config["python"], config["lib"], PROBE)
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_ARGS": "K8S_POD_NAME=a;K8S_POD_NAMESPACE=b",
        "LD_LIBRARY_PATH": "/somewhere/else",  # replaced, not appended to
        "PYTHONPATH": "/must/not/matter",  # -I ignores it; still passed on like any variable
        "WITH SPACE": "and\ttab",
        "EMPTY": "",
    }
    args = ("one", "two words", "")
    seen, by_shell = (json.loads(_run(exe, env, args).stdout) for exe in (front, shell))
    # Two quirks of dash the front does not copy (the plugin reads neither): it dropped
    # variables whose names are not shell identifiers, and it added PWD.
    assert by_shell["env"].pop("PWD") and "PWD" not in seen["env"]
    assert seen["env"].pop("WITH SPACE") == "and\ttab" and "WITH SPACE" not in by_shell["env"]
    assert seen == by_shell
    assert seen["argv"] == ["-c", *args]
    assert seen["isolated"] == 1 and seen["no_site"] == 1
    assert seen["prefix"] == str(plugin_bundle.bundle_dir)
    assert seen["env"]["LD_LIBRARY_PATH"] == config["lib"]
    assert seen["env"]["EMPTY"] == "" and seen["env"]["PYTHONPATH"] == "/must/not/matter"


def test_installed_front_runs_the_plugin(plugin_bundle):
    r = _run(plugin_bundle.launcher, {"CNI_COMMAND": "VERSION"}, stdin=b'{"cniVersion":"0.4.0"}')
    assert r.returncode == 0, r.stderr
    assert "0.4.0" in json.loads(r.stdout)["supportedVersions"]


def _one_error(r) -> dict:
    assert r.returncode == 1
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 1, r.stdout
    doc = json.loads(lines[0])
    assert doc["code"] == 999 and doc["cniVersion"] == "1.1.0"
    return doc


def test_unconfigured_front_fails_closed_with_one_cni_error(plugin_bundle, tmp_path):
    exe = _write(tmp_path / "front", _front_bytes(plugin_bundle))
    doc = _one_error(_run(exe, {"CNI_COMMAND": "ADD"}))
    assert "not configured" in doc["msg"]


def test_front_without_its_interpreter_fails_closed_with_one_cni_error(plugin_bundle, tmp_path):
    config = {"python": str(tmp_path / 'gone "quoted"\\dir' / "python3"), "lib": "/nowhere", "code": "pass"}
    exe = _write(tmp_path / "front", configure(_front_bytes(plugin_bundle), config))
    doc = _one_error(_run(exe, {"CNI_COMMAND": "ADD"}))
    assert "cannot be executed" in doc["msg"]
    assert config["python"] in doc["details"] and "No such file" in doc["details"]


def test_configure_round_trips_and_keeps_the_size(plugin_bundle):
    front = _front_bytes(plugin_bundle)
    assert front.count(MARKER) == 1 and read_config(front) == {}
    config = {"python": "/p/bin/python3.11", "lib": "/p/lib", "code": "print('ü')"}
    done = configure(front, config)
    assert len(done) == len(front) and read_config(done) == config
    assert configure(done, config) == done  # reconfiguring replaces the whole block


@pytest.mark.parametrize(
    "config, why",
    [
        ({"python": "/p", "lib": "/l"}, "needs exactly"),
        ({"python": "/p", "lib": "/l", "code": "x", "extra": "y"}, "needs exactly"),
        ({"python": "/p\0x", "lib": "/l", "code": "x"}, "NUL"),
        ({"python": "", "lib": "/l", "code": "x"}, "empty"),
        ({"python": "/p", "lib": "/l", "code": "x" * CONFIG_SIZE}, "block holds"),
    ],
)
def test_configure_refuses_what_the_front_cannot_hold(plugin_bundle, config, why):
    with pytest.raises(FrontError, match=why):
        configure(_front_bytes(plugin_bundle), config)


def test_configure_refuses_a_file_that_is_not_the_front():
    with pytest.raises(FrontError, match="no unique"):
        configure(b"\x7fELF not the front", {"python": "/p", "lib": "/l", "code": "x"})
    with pytest.raises(FrontError, match="no unique"):
        twice = MARKER + b"\0" * CONFIG_SIZE + MARKER + b"\0" * CONFIG_SIZE
        configure(twice, {"python": "/p", "lib": "/l", "code": "x"})
    with pytest.raises(FrontError, match="truncated"):
        configure(MARKER + b"\0" * 10, {"python": "/p", "lib": "/l", "code": "x"})
