"""pytest fixtures for the real peers (registered in tests/conftest.py via pytest_plugins).

- ``control_plane`` (session): etcd + kube-apiserver on 127.0.0.1 (peers.controlplane).
- ``fake_api`` / ``fake_api_tls``: the in-process fault-injecting fake API (peers.fakeapi).
- ``cnitool_bin``, ``portmap_bin``, ``helm_bin``, ``istio_iptables_bin``, ``upstream_istio_cni_bin``: paths of the
  Go tools built by tools/go-tools.sh; a tool that failed to build fails the test naming the step.
"""

from __future__ import annotations

import os

import pytest

from peers.controlplane import ControlPlane, StartFailed
from peers.fakeapi import FakeAPI
from peers.tools import tool_path


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the control plane fixture runs as root (make test)")
    cp = ControlPlane(tmp_path_factory.mktemp("control-plane"), tool_path("kube-apiserver"))
    try:
        cp.start()
    except StartFailed as e:
        pytest.fail(f"control plane did not start: {e}", pytrace=False)
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def fake_api():
    with FakeAPI() as api:
        yield api


@pytest.fixture
def fake_api_tls(tmp_path):
    with FakeAPI(tls_dir=tmp_path / "fake-api-pki") as api:
        yield api


@pytest.fixture(scope="session")
def cnitool_bin():
    return tool_path("cnitool")


@pytest.fixture(scope="session")
def portmap_bin():
    return tool_path("portmap")


@pytest.fixture(scope="session")
def helm_bin():
    return tool_path("helm")


@pytest.fixture(scope="session")
def istio_iptables_bin():
    return tool_path("istio-iptables")


@pytest.fixture(scope="session")
def upstream_istio_cni_bin():
    return tool_path("istio-cni")
