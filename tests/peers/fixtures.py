"""pytest fixtures for the real peers (registered in tests/conftest.py via pytest_plugins).

- ``control_plane`` (session): etcd + kube-apiserver on 127.0.0.1 (peers.controlplane).
- ``fake_api`` / ``fake_api_tls``: the in-process fault-injecting fake API (peers.fakeapi).
- ``cnitool_bin``, ``portmap_bin``, ``helm_bin``, ``istio_iptables_bin``, ``upstream_istio_cni_bin``: paths of the
  Go tools built by tools/go-tools.sh; a tool that failed to build fails the test naming the step.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from peers.controlplane import ControlPlane, StartFailed
from peers.fakeapi import FakeAPI
from peers.tools import tool_path


@contextlib.contextmanager
def running_control_plane(base_dir: Path):
    """A started ControlPlane in ``base_dir``, stopped on exit; a failed start fails the test.

    Shared by the ``control_plane`` fixture and the benchmarks' ``bench_api``.
    """
    cp = ControlPlane(base_dir, tool_path("kube-apiserver"))
    try:
        cp.start()
    except StartFailed as e:
        pytest.fail(f"control plane did not start: {e}", pytrace=False)
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the control plane fixture runs as root (make test)")
    with running_control_plane(tmp_path_factory.mktemp("control-plane")) as cp:
        yield cp


@pytest.fixture
def fake_api():
    with FakeAPI() as api:
        yield api


@pytest.fixture
def fake_api_tls(tmp_path):
    with FakeAPI(tls_dir=tmp_path / "fake-api-pki") as api:
        yield api


def _tool_fixture(fixture_name: str, tool: str):
    """A session fixture returning ``tool_path(tool)`` (fails naming the build step)."""
    @pytest.fixture(scope="session", name=fixture_name)
    def path():
        return tool_path(tool)
    return path


cnitool_bin = _tool_fixture("cnitool_bin", "cnitool")
portmap_bin = _tool_fixture("portmap_bin", "portmap")
helm_bin = _tool_fixture("helm_bin", "helm")
istio_iptables_bin = _tool_fixture("istio_iptables_bin", "istio-iptables")
upstream_istio_cni_bin = _tool_fixture("upstream_istio_cni_bin", "istio-cni")
