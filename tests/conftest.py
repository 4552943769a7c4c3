"""Shared fixtures: the plugin executable, network namespaces, conformance data."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

# Fixtures every tier may use: API servers and Go peers (peers.fixtures), the plugin bundle
# and host layouts, the mini pod API, the repair sandbox, helm renders of the chart.
pytest_plugins = [
    "peers.fixtures",
    "support.installer_fixtures",
    "support.api_fixtures",
    "support.repairsupport",
    "support.chart_fixtures",
]

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CONFORMANCE = SHARED / "conformance"
PLUGIN = REPO / ".venv" / "bin" / "istio-cni"
REF_CNI = Path("/usr/lib/cni")


# What tests/unit may not use: it runs as any user, with no network, and against the installed
# wheel (make wheel, cibuildwheel). Root, netns, Go peers and the plugin bundle live in the
# integration, e2e and chart tiers (docs/testing.md).
NOT_IN_UNIT = {"netns", "sandbox", "plugin_bundle", "plugin_bin", "cni_bin_dir", "cni_path", "host_layout",
               "validate_bin", "control_plane", "helm", "cnitool_bin", "portmap_bin", "helm_bin",
               "istio_iptables_bin", "upstream_istio_cni_bin"}


def pytest_collection_modifyitems(config, items):
    # The tier is the folder: integration and e2e need root; unit needs nothing.
    for item in items:
        p = str(item.fspath)
        if "/integration/" in p or "/e2e/" in p:
            item.add_marker(pytest.mark.root)
        elif "/unit/" in p:
            needs = sorted(NOT_IN_UNIT.intersection(getattr(item, "fixturenames", ())))
            needs += [m for m in ("root", "peers", "node") if item.get_closest_marker(m)]
            if needs:
                raise pytest.UsageError(
                    f"{item.nodeid} needs {', '.join(needs)}: tests/unit runs without root, network or "
                    "Go peers; put it in the tier of what it needs (docs/testing.md)"
                )


def pytest_runtest_setup(item):
    if item.get_closest_marker("root") and os.geteuid() != 0:
        pytest.fail("this test needs root (it creates network namespaces); run `make test` as root")


@pytest.fixture(scope="session")
def plugin_bin(plugin_bundle) -> Path:
    """The plugin as kubelet runs it: the installer's launcher exec'ing the bundled
    interpreter (``-I -S``), deployed by the real installer code from this venv."""
    if not PLUGIN.exists():
        pytest.fail(f"{PLUGIN} missing: run `make setup`")
    return plugin_bundle.launcher


@pytest.fixture(scope="session")
def validate_bin() -> Path:
    """``istio-cni`` as the node image installs it (the venv's entry point): the
    ``istio-validation`` init container runs ``istio-cni validate`` from there; the host bundle
    carries the plugin only."""
    if not PLUGIN.exists():
        pytest.fail(f"{PLUGIN} missing: run `make setup`")
    return PLUGIN


@pytest.fixture(scope="session")
def cni_bin_dir(plugin_bundle) -> Path:
    """The CNI bin dir holding the ``istio-cni`` launcher (next to /usr/lib/cni in CNI_PATH)."""
    return plugin_bundle.bin_dir


@pytest.fixture(scope="session")
def cni_path(cni_bin_dir) -> str:
    if not (REF_CNI / "bridge").exists():
        pytest.fail("reference CNI plugins missing in /usr/lib/cni: run `make setup`")
    return f"{REF_CNI}:{cni_bin_dir}"


@pytest.fixture
def netns():
    """Factory of fresh named netns (deleted at teardown): ``name = netns('pod')``.

    ``netns('pod', addresses=("192.0.2.2/24",))`` also puts the addresses on ``eth0`` (one
    end of a veth pair kept inside the netns: this kernel has no dummy links), as a primary
    CNI would: the plugin (like upstream) reads the pod netns' own
    addresses to decide on IPv6 and fails an ADD that redirects in a netns without one."""
    from istio_cni.tools import netns as nsutil

    made: list[str] = []

    def make(tag: str = "t", addresses: tuple = ()) -> str:
        name = nsutil.unique_name(tag)
        nsutil.add(name)
        made.append(name)
        if addresses:
            nsutil.ip("-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
            for addr in addresses:
                nsutil.ip("-n", name, *(["-6"] if ":" in addr else []), "addr", "add", addr, "dev", "eth0",
                          *(["nodad"] if ":" in addr else []))
            nsutil.ip("-n", name, "link", "set", "eth0", "up")
        return name

    yield make
    for name in made:
        nsutil.delete(name)


@pytest.fixture
def log_lines(monkeypatch):
    """The plugin log's JSON lines written from now on, as a callable returning them parsed."""
    import io
    import json

    from istio_cni.log import log

    stream = io.StringIO()
    monkeypatch.setattr(log, "stream", stream)
    monkeypatch.setattr(log, "sinks", [])
    return lambda: [json.loads(ln) for ln in stream.getvalue().splitlines()]


@pytest.fixture(scope="session")
def conformance() -> Path:
    if not CONFORMANCE.is_dir():
        pytest.skip(f"conformance data not found at {CONFORMANCE}")
    return CONFORMANCE


def run_plugin(env: dict, stdin: bytes | str = b"", plugin: Path = PLUGIN, timeout: float = 60):
    """Exec the plugin like a runtime would; returns CompletedProcess (bytes)."""
    if isinstance(stdin, str):
        stdin = stdin.encode()
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    full.update(env)
    return subprocess.run([str(plugin)], input=stdin, env=full, capture_output=True, timeout=timeout)
